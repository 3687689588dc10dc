"""The first conv layer's filters: their pictures and the spread of their norms."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cnn_explorer.checkpoints import read_initial_weights
from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.features.filter_stats import oriented_structure_change
from cnn_explorer.interpret.features.layer_stats import median
from cnn_explorer.models import first_conv
from cnn_explorer.render.figures import grid_figure
from cnn_explorer.render.grids import filter_grid
from cnn_explorer.report.markdown import figure, interval, num
from cnn_explorer.report.section import SectionResult

KEY = "filters"
FIGURE = "conv1_filters.png"
WEAK_FILTER = 0.1  # a filter with an L2 norm below this fraction of the largest is "nearly unused"


def compute(ev: Evaluation) -> SectionResult:
    name, conv = first_conv(ev.net)
    weight = conv.weight.detach().float().cpu()
    norms = weight.flatten(1).norm(dim=1)  # [C_out]
    numbers = {
        "layer": name,
        "filters": conv.out_channels,
        "kernel": list(conv.kernel_size),
        "in_channels": conv.in_channels,
        "norm_min": float(norms.min()),
        "norm_median": median(norms),
        "norm_max": float(norms.max()),
        "weak": int((norms < WEAK_FILTER * norms.max()).sum()),
        "weak_fraction": WEAK_FILTER,
        "edge_detectors": edge_detector_numbers(weight, read_initial_weights(ev.run.dir), f"{name}.weight"),
    }
    kernel = "x".join(map(str, [*conv.kernel_size, conv.in_channels]))
    title = f"{name}: {conv.out_channels} filters of {kernel}, each scaled to its own min..max"
    settings = ev.view_settings("filters")
    grid = filter_grid(weight, nrow=settings.get("nrow", 8), upscale=settings.get("upscale", 8))
    return SectionResult(numbers, {FIGURE: grid_figure(grid, title)})


def markdown(summary: dict[str, Any]) -> str:
    c = summary[KEY]
    inputs = "one grayscale channel" if c["in_channels"] == 1 else f"{c['in_channels']} colour channels"
    return f"""## First-layer filters

{figure(FIGURE, "conv1 filters")}

What it shows: the {c["filters"]} filters of `{c["layer"]}` ({c["kernel"][0]}x{c["kernel"][1]} pixels over
{inputs}), each scaled to its own min..max so its colour and edge pattern is visible;
the scaling hides how strong a filter is. Filter L2 norms: min {num(c["norm_min"])}, median
{num(c["norm_median"])}, max {num(c["norm_max"])}; {c["weak"]} of {c["filters"]} filters have a norm below
{c["weak_fraction"]:.0%} of the largest (nearly unused).

{edge_detector_text(c.get("edge_detectors"))}
"""


def edge_detector_numbers(weight: Tensor, initial: dict[str, Tensor] | None, key: str) -> dict[str, Any] | None:
    """The claim "filters learn edge detectors", judged by oriented structure (:func:`oriented_structure_change`):
    the trained filters' median orientation share against their initialization's; None without initial weights to
    compare with or a kernel under 3x3."""
    if initial is None or key not in initial or initial[key].shape != weight.shape or min(weight.shape[2:]) < 3:
        return None
    change = oriented_structure_change(weight, initial[key])
    return {
        "bands": change.bands,
        "trained": change.trained,
        "initial": change.initial,
        "difference": change.difference,
        "ci95": [change.low, change.high],
        "holds": change.holds,
    }


def edge_detector_text(e: dict[str, Any] | None) -> str:
    """The verdict and what would have made it the other way."""
    if e is None:
        return '"Filters learn edge detectors": not judged (no initial weights to compare with, or kernels under 3x3).'
    low, high = e["ci95"]
    step = 180 // e["bands"]
    return (
        f'"Filters learn edge detectors": **{"yes" if e["holds"] else "no"}**. Measured by oriented structure: per '
        f"filter, the share of its non-DC spectral energy (2-D DFT of the zero-mean filter, summed over channels) in "
        f"the strongest of {e['bands']} orientation bands ({step} degrees wide, centred on "
        f"{', '.join(str(step * b) for b in range(e['bands']))} degrees); 1 for a pure edge or grating, "
        f"{num(1 / e['bands'], 2)} for energy spread evenly. Median over the filters: {num(e['trained'])} trained, "
        f"{num(e['initial'])} at initialization (random filters already score well above the even spread: the "
        f"initial ones are the baseline); "
        f"difference {interval(e['difference'], low, high)} (95% paired bootstrap interval over filters). The "
        f"verdict is yes only when that interval lies above 0; it is no when the trained median is not above the "
        f"initial one by more than its bootstrap interval."
    )
