"""The first conv layer's filters: their pictures and the spread of their norms."""

from __future__ import annotations

from typing import Any

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.features.layer_stats import median
from cnn_explorer.models import first_conv
from cnn_explorer.render.figures import grid_figure
from cnn_explorer.render.grids import filter_grid
from cnn_explorer.report.markdown import figure, num
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
"""
