"""What a report section is: one view's numbers, figures and Markdown.

A section is a module in :mod:`cnn_explorer.report.sections` with three names:

- ``KEY``: its entry in metrics.json;
- ``compute(ev: Evaluation) -> SectionResult``: its numbers (JSON-able) and its figures (PNG file name -> Figure);
- ``markdown(summary: dict) -> str``: its Markdown, written from the summary as metrics.json holds it (all
  sections' numbers, NaN as ``None``), so the text and metrics.json cannot disagree.

Adding a section is one new module plus one line in :data:`cnn_explorer.report.sections.SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


@dataclass(frozen=True)
class SectionResult:
    """A section's numbers (JSON-able, NaN allowed), figures (``{"loss_curves.png": Figure}``) and other files:
    ``write(folder)`` is called with the report folder being built (e.g. to write TensorBoard projector data)."""

    numbers: Any
    figures: dict[str, Figure] = field(default_factory=dict)
    write: Callable[[Path], None] | None = None
