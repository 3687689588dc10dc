"""Which pixels each attribution method says the class score depends on, for the probe images."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.attribution import METHODS, attribute, check_methods
from cnn_explorer.render.figures import labeled_grid_figure
from cnn_explorer.render.grids import ATTRIBUTION_COLORMAP, attribution_grid
from cnn_explorer.report.markdown import figure, pct, table
from cnn_explorer.report.section import SectionResult
from cnn_explorer.report.sections.feature_maps import probe_row_labels

KEY = "attributions"
FIGURE = "attributions.png"
CENTER_FRACTION = 0.5  # attribution share is measured in the central half of each side (a quarter of the area)


def compute(ev: Evaluation) -> SectionResult:
    methods = check_methods(ev.options.methods or list(METHODS))
    probe = ev.probe
    maps = {name: attribute(name, ev.net, probe.inputs, probe.labels).cpu() for name in methods}
    numbers = {
        "images": len(probe.labels),
        "correct": int((ev.probe_predicted == probe.labels).sum()),
        "methods": {name: center_share(m) for name, m in maps.items()},
    }
    overlay = len(maps) == 1  # one method: its heatmap over the image too; several: one column each
    columns = ["image", *(METHODS[n].title for n in methods), *(["overlay (50%)"] if overlay else [])]
    fig = labeled_grid_figure(
        attribution_grid(probe.images, list(maps.values()), overlay=overlay),
        "Attribution of the true class, one validation image per class",
        probe_row_labels(ev),
        columns,
        (ATTRIBUTION_COLORMAP, "|attribution| / image max"),
    )
    return SectionResult(numbers, {FIGURE: fig})


def center_share(maps: Tensor) -> dict[str, Any]:
    """Share of each map's absolute attribution that falls in the central region (``[N, H, W]`` -> statistics)."""
    height, width = maps.shape[1:]
    top, left = round(height * (1 - CENTER_FRACTION) / 2), round(width * (1 - CENTER_FRACTION) / 2)
    magnitude = maps.abs()
    center = magnitude[:, top : height - top, left : width - left].sum(dim=(1, 2))
    share = center / magnitude.sum(dim=(1, 2)).clamp_min(torch.finfo(torch.float32).tiny)  # [N]
    return {
        "center_box": [height - 2 * top, width - 2 * left],
        "center_area_share": (height - 2 * top) * (width - 2 * left) / (height * width),
        "center_share_mean": float(share.mean()),
        "center_share_min": float(share.min()),
        "center_share_max": float(share.max()),
    }


def markdown(summary: dict[str, Any]) -> str:
    a = summary[KEY]
    methods = a["methods"]
    described = "; ".join(f"**{METHODS[n].title}**: {METHODS[n].description}" for n in methods)
    first = next(iter(methods.values()))
    box = "x".join(map(str, first["center_box"]))
    rows = [
        (
            METHODS[n].title,
            pct(s["center_share_mean"]),
            f"{pct(s['center_share_min'])} to {pct(s['center_share_max'])}",
        )
        for n, s in methods.items()
    ]
    return "\n".join(
        [
            "## Attributions",
            "",
            figure(FIGURE, "Attribution maps"),
            "",
            f"What it shows: for the same probe images, where each method puts the evidence for the true class, "
            f"as |attribution| scaled to each image's maximum (bright = most). {described}. "
            f"{a['correct']} of {a['images']} probe images are classified correctly.",
            "",
            f"Share of the attribution in the central {box} pixels, which cover {pct(first['center_area_share'])} "
            f"of the area; a share well above the area means the method points where CIFAR objects usually are, "
            f"not at the borders:",
            "",
            *table(["method", "central share, mean", "per image"], rows),
        ]
    )
