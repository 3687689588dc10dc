"""What each stage of the net outputs for the probe images: the maps, and how many activations are zero."""

from __future__ import annotations

from typing import Any

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret import layer_activations
from cnn_explorer.interpret.layers import short_layer_name, stages
from cnn_explorer.render.figures import labeled_grid_figure
from cnn_explorer.render.fonts import figure_names
from cnn_explorer.render.grids import FEATURE_CHANNELS, FEATURE_COLORMAP, feature_map_grid
from cnn_explorer.report.markdown import figure, pct, table
from cnn_explorer.report.section import SectionResult

KEY = "feature_maps"


def probe_row_labels(ev: Evaluation) -> list[str]:
    """One label per probe image: its class and, on a line of its own (one long line would be clipped at the
    left of a narrow figure), the prediction when it is wrong."""
    classes = figure_names(ev.classes)
    return [
        classes[t] + ("" if t == p else f"\n-> {classes[p]}")
        for t, p in zip(ev.probe.labels.tolist(), ev.probe_predicted.tolist(), strict=True)
    ]


def compute(ev: Evaluation) -> SectionResult:
    settings = ev.view_settings("feature_maps")
    max_channels = int(settings.get("max_channels") or FEATURE_CHANNELS)  # the run's setting, as in TensorBoard
    layers = settings.get("layers") or stages(ev.net, ev.probe.inputs.shape[1:])
    images = ev.probe.images
    rows = probe_row_labels(ev)
    numbers, figures = [], {}
    for name, act in layer_activations(ev.net, ev.probe.inputs, layers).items():  # act: [K, C, h, w]
        short = short_layer_name(name)
        numbers.append(
            {
                "layer": name,
                "figure": f"feature_maps_{short}.png",
                "channels": act.shape[1],
                "size": list(act.shape[2:]),
                "zero_fraction": float((act <= 0).float().mean()),
                "dead_channels": int((act.amax(dim=(0, 2, 3)) <= 0).sum()),
            }
        )
        shown = min(max_channels, act.shape[1])
        resolution = f"{act.shape[2]}x{act.shape[3]}" + (
            " upsampled to the image size" if act.shape[2:] != images.shape[2:] else ""
        )
        figures[numbers[-1]["figure"]] = labeled_grid_figure(
            feature_map_grid(images, act, max_channels=max_channels),
            f"{name}: first {shown} of {act.shape[1]} channels ({resolution})",
            rows,
            ["input", *(f"ch {c}" for c in range(shown))],
            (FEATURE_COLORMAP, "activation / largest activation in the row"),
        )
    return SectionResult(numbers, figures)


def markdown(summary: dict[str, Any]) -> str:
    layers = summary[KEY]
    rows = [
        (
            row["layer"],
            row["channels"],
            "x".join(map(str, row["size"])),
            pct(row["zero_fraction"]),
            row["dead_channels"],
        )
        for row in layers
    ]
    return "\n".join(
        [
            "## Feature maps",
            "",
            "What they show: for one validation image per class (rows, labelled with the true class and, if "
            "wrong, the prediction), the input and the first channels of each stage's output, "
            "upsampled to the image size; each row is scaled to its own largest activation.",
            "",
            *table(["layer", "channels", "size", "zero activations", "channels zero on every probe image"], rows),
            "",
            *(line for row in layers for line in (figure(row["figure"], f"Feature maps of {row['layer']}"), "")),
        ]
    ).rstrip("\n")
