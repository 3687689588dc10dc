"""The report's metrics.json: every number its Markdown states, as strict JSON.

NaN (an epoch a metric was not logged in, a diverged run) is written as ``null`` and read back as NaN, so
the file is valid JSON for any reader and the comparison of a sweep computes with the same floats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def nan_to_none(value: Any) -> Any:
    """NaN and infinities -> ``None`` throughout dicts, lists and tuples; everything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value


def none_to_nan(values: list[float | None]) -> list[float]:
    """The inverse of :func:`nan_to_none` for a list of numbers: ``None`` -> NaN."""
    return [math.nan if v is None else v for v in values]


def write_metrics(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` (already passed through :func:`nan_to_none`) as indented JSON."""
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


def read_metrics_json(path: Path) -> dict[str, Any]:
    """The summary a report wrote to ``path``."""
    return json.loads(path.read_text())
