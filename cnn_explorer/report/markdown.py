"""How the report writes numbers and tables: one format for every section.

Accuracies are fractions in metrics.json and percentages with two decimals in the text; ``None`` (a value
that was not logged, or not finite) reads "n/a".
"""

from __future__ import annotations

from collections.abc import Sequence


def pct(value: float | None) -> str:
    """``0.9731 -> "97.31%"``; ``None`` -> ``"n/a"``."""
    return "n/a" if value is None else f"{value:.2%}"


def num(value: float | None, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals; ``None`` -> ``"n/a"``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    """A number with its sign: ``+0.123``; ``None`` -> ``"n/a"``."""
    return "n/a" if value is None else f"{value:+.{digits}f}"


def signed_pp(value: float | None) -> str:
    """A difference in percentage points: ``"+1.23 percentage points"``; ``None`` -> ``"n/a"``."""
    # round first, so that -0.001 reads +0.00 rather than -0.00
    return "n/a" if value is None else f"{round(value, 2) + 0.0:+.2f} percentage points"


NBSP = "\u00a0"  # a space a browser does not break a line at


def interval(mean: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """A value and its interval as one unbreakable string: ``0.459 [0.419, 0.497]`` with no-break spaces, so a table
    cell never wraps it onto several lines (a browser breaks at spaces and after a dash between numbers). Brackets
    with a comma, not a dash: a dash between signed numbers would read as a minus."""
    return f"{num(mean, digits)}{NBSP}[{num(low, digits)},{NBSP}{num(high, digits)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table as lines; ``align`` has one character per column, ``l`` or ``r`` (default: first column
    left, the others right). Cells are written with ``str``; a ``|`` inside a cell is escaped."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows),
    ]


def figure(path: str, alt: str) -> str:
    """A Markdown image line."""
    return f"![{alt}]({path})"
