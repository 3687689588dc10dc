"""What each channel and layer learns, measured on the whole validation split, and the original notebook's
claims about features checked against the numbers.

Per stage of the net (a ConvNet's conv blocks, a ResNet's stem and layer1..4): receptive field, sparsity, dead
channels, class selectivity (Morcos et al. 2018), linear probe accuracy (Alain & Bengio 2016), linear CKA between
stages (Kornblith et al. 2019); for its most class-selective channels, the top-activating validation patches
(Zeiler & Fergus 2014) beside the input optimized to excite the channel's central unit, cut to its receptive field
(Olah et al. 2017), labelled with the class of the highest mean activation and the classes of the patches;
optimized inputs per class logit (Simonyan et al. 2014); first-layer filters against their initialization.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from cnn_explorer.checkpoints import read_initial_weights
from cnn_explorer.data import first_per_class
from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.features import LayerAnalysis, analyze_layers
from cnn_explorer.interpret.features.cka import CKA_IMAGES, CKA_POOL
from cnn_explorer.interpret.features.dataset_examples import crop_examples, example_class_counts
from cnn_explorer.interpret.features.embeddings import penultimate_embeddings
from cnn_explorer.interpret.features.feature_visualization import (
    CLASS_L2,
    VisualizationSettings,
    visualize_classes,
    visualize_fields,
)
from cnn_explorer.interpret.features.filter_stats import filter_drift, filter_statistics
from cnn_explorer.interpret.layers import short_layer_name, stages
from cnn_explorer.models import first_conv
from cnn_explorer.render.cards import channel_label, channel_rows, enlarge_small_tiles
from cnn_explorer.render.charts import depth_figure
from cnn_explorer.render.figures import grid_figure, heatmap_figure, labeled_grid_figure
from cnn_explorer.render.fonts import figure_names
from cnn_explorer.render.grids import filter_grid
from cnn_explorer.render.image import to_display_rgb
from cnn_explorer.report.markdown import figure, num, pct, table
from cnn_explorer.report.section import SectionResult
from cnn_explorer.report.sections.filters import edge_detector_numbers

KEY = "features"
CHANNELS_SHOWN = 8  # channels per layer with examples and an optimized input: the most class-selective ones
EXAMPLES = 9  # top-activating patches per channel
PROJECTOR_DIR, PROJECTOR_PER_CLASS = "projector", 100
ACTIVE_AT_LEAST = 0.01  # of the positions, for a channel to be shown
MAX_VISUALIZATION_STEPS = 4096  # a run dir's config is untrusted: more steps than this is no setting, a stall
PROBE_TRAIN_IMAGES = 10_000  # training images the linear probes are fitted on (a seeded subset)
DEPTH_FIGURE, CKA_FIGURE, CLASSES_FIGURE, INIT_FIGURE = (
    "features_by_depth.png",
    "features_cka.png",
    "features_classes.png",
    "conv1_filters_at_init.png",
)


def compute(ev: Evaluation) -> SectionResult:
    dm, net = ev.datamodule, ev.net
    image_shape = (dm.channels, dm.image_size, dm.image_size)
    layers = stages(net, image_shape)
    analysis = analyze_layers(
        net,
        dm.eval_batches("val"),
        dm.eval_batches("train", limit=PROBE_TRAIN_IMAGES),
        layers,
        len(ev.classes),
        EXAMPLES,
        cka_images=CKA_IMAGES,
        image_shape=image_shape,
    )
    chosen = {name: most_selective(analysis, name) for name in layers}
    steps = visualization_steps(ev)
    class_settings = VisualizationSettings(image_size=dm.image_size, steps=steps, l2=CLASS_L2)
    class_images = visualize_classes(net, list(range(len(ev.classes))), dm.mean, dm.std, class_settings).cpu()

    numbers: dict[str, Any] = {
        "validation_images": len(dm.val_labels),
        "probe_train_images": min(PROBE_TRAIN_IMAGES, len(dm.train_labels)),
        "visualization_steps": steps,
        "layers": [_layer_numbers(analysis, name, index) for index, name in enumerate(layers)],
        "cka": analysis.cka.tolist(),
        "cka_images": min(CKA_IMAGES, len(dm.val_labels)),
        "cka_pool": CKA_POOL,
        "filters": filter_numbers(ev),
    }
    numbers["claims"] = check_claims(numbers)

    figures = channel_figures(ev, analysis, chosen, steps)
    names = [short_layer_name(n) for n in layers]
    figures[DEPTH_FIGURE] = depth_figure(
        names,
        {
            "linear probe accuracy (val)": [row["probe_val_acc"] for row in numbers["layers"]],
            "activations that are zero": [row["sparsity"] for row in numbers["layers"]],
            "class selectivity (mean, live channels)": [row["selectivity_mean"] for row in numbers["layers"]],
            "dead channels (fraction)": [row["dead"] / row["channels"] for row in numbers["layers"]],
        },
    )
    figures[CKA_FIGURE] = heatmap_figure(analysis.cka, names, names, "Linear CKA between layers (validation)")
    figures[CLASSES_FIGURE] = labeled_grid_figure(
        _row_of(class_images), "Inputs optimized to raise each class's logit", [""], figure_names(ev.classes)
    )
    initial = read_initial_weights(ev.run.dir)
    if initial is not None and numbers["filters"]["initial"] is not None:
        name, _ = first_conv(net)
        figures[INIT_FIGURE] = grid_figure(
            filter_grid(initial[f"{name}.weight"]), f"{name} at initialization, each scaled to its own range"
        )
    return SectionResult(numbers, figures, write=lambda folder: write_projector(ev, folder / PROJECTOR_DIR))


def visualization_steps(ev: Evaluation) -> int:
    """The run's ``callbacks.features.visualization_steps``, so the report optimizes as its TensorBoard did; the
    default for a run without that view, or with a value that is no step count in ``[1, 4096]``."""
    steps = ev.view_settings("features").get("visualization_steps")
    valid = isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_VISUALIZATION_STEPS
    return steps if valid else VisualizationSettings.steps


def write_projector(ev: Evaluation, folder: Path) -> None:
    """The penultimate layer's embedding of :data:`PROJECTOR_PER_CLASS` validation images per class, with class
    labels and thumbnails, for TensorBoard's Projector tab: ``tensorboard --logdir <report>/projector``."""
    dm = ev.datamodule
    index = first_per_class(dm.val_labels.cpu(), PROJECTOR_PER_CLASS, len(ev.classes))
    inputs, labels = dm.prepare_batch((dm.val_images[index], dm.val_labels[index]), train=False)
    embeddings = penultimate_embeddings(ev.net, [(inputs,)])
    with SummaryWriter(str(folder)) as writer:
        writer.add_embedding(
            embeddings,
            metadata=[ev.classes[label] for label in labels.tolist()],
            label_img=to_display_rgb(dm.val_images[index]),
            tag="penultimate",
        )


def most_selective(analysis: LayerAnalysis, name: str) -> list[int]:
    """The :data:`CHANNELS_SHOWN` channels of a layer with the highest class selectivity, in that order, among
    those active at 1% of the positions or more: a channel that fires once, on one image, has a selectivity of 1
    and says nothing."""
    stats = analysis.layers[name].stats
    rare = stats.dead | (stats.channel_sparsity > 1 - ACTIVE_AT_LEAST) | stats.selectivity.isnan()
    selectivity = torch.where(rare, -math.inf, stats.selectivity)
    order = selectivity.argsort(descending=True, stable=True)
    return [int(c) for c in order[:CHANNELS_SHOWN] if selectivity[c] > -math.inf]


def _layer_numbers(analysis: LayerAnalysis, name: str, index: int) -> dict[str, Any]:
    layer = analysis.layers[name]
    stats, field = layer.stats, layer.field
    last = index + 1 >= len(analysis.layers)
    return {
        "layer": name,
        "channels": int(stats.dead.numel()),
        "receptive_field": field.size,
        "stride": field.stride,
        "sparsity": stats.sparsity,
        "dead": stats.dead_count,
        "live": stats.live_count,
        "selectivity_mean": stats.selectivity_mean,
        "selectivity_median": stats.selectivity_median,
        "probe_val_acc": layer.probe.val_accuracy,
        "probe_train_acc": layer.probe.train_accuracy,
        "cka_next": None if last else float(analysis.cka[index, index + 1]),
        "shown_channels": most_selective(analysis, name),
    }


def filter_numbers(ev: Evaluation) -> dict[str, Any]:
    """First-layer filters now and at initialization: energy in colour-opponent patterns and in the DC
    component, norms, and how far training moved them."""
    name, conv = first_conv(ev.net)
    trained = filter_statistics(conv.weight.detach().cpu()).summary()
    initial_weights = read_initial_weights(ev.run.dir)
    key = f"{name}.weight"
    edges = edge_detector_numbers(conv.weight.detach().cpu(), initial_weights, key)
    if initial_weights is None or key not in initial_weights:
        return {"layer": name, "trained": trained, "initial": None, "drift": None, "edge_detectors": edges}
    initial = initial_weights[key]
    return {
        "layer": name,
        "trained": trained,
        "initial": filter_statistics(initial).summary(),
        "drift": filter_drift(conv.weight.detach().cpu(), initial).summary(),
        "edge_detectors": edges,
    }


def check_claims(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """The notebook's claims about features, each with the numbers it is judged by and a verdict."""
    rows = numbers["layers"]
    probe = [r["probe_val_acc"] for r in rows]
    sparsity = [r["sparsity"] for r in rows]
    selectivity = [r["selectivity_mean"] for r in rows]
    claims = [
        {
            "claim": "feature abstraction increases with depth",
            "measure": "linear probe accuracy per layer (Alain & Bengio 2016)",
            "values": probe,
            "holds": _rising(probe),
        },
        {
            "claim": "deeper layers have sparser activations",
            "measure": "fraction of zero activations on the validation split",
            "values": sparsity,
            "holds": _rising(sparsity),
        },
        {
            "claim": "deeper layers are more class-specific",
            "measure": "mean class selectivity index over live channels (Morcos et al. 2018; dead channels, "
            f"where it is 0/0, left out: {', '.join(str(r['dead']) for r in rows)})",
            "values": selectivity,
            "holds": _rising(selectivity),
        },
    ]
    filters = numbers["filters"]
    if filters["initial"] is not None:
        trained, initial = filters["trained"], filters["initial"]
        if _has_colour(filters):
            colour = 1 - trained["achromatic_share"], 1 - initial["achromatic_share"]
            claims.append(
                {
                    "claim": "first-layer filters learn colour contrasts",
                    "measure": "median share of filter energy in colour-opponent patterns, trained vs initialization",
                    "values": list(colour),
                    "holds": colour[0] > colour[1],
                }
            )
    edges = filters.get("edge_detectors")
    if edges is not None:
        claims.append(
            {
                "claim": "first-layer filters learn edge detectors",
                "measure": f"median share of non-DC spectral energy in the strongest of {edges['bands']} orientation "
                "bands, trained vs initialization (yes only where the paired bootstrap interval of the difference "
                "lies above 0)",
                "values": [edges["trained"], edges["initial"]],
                "holds": edges["holds"],
            }
        )
    return claims


def _has_colour(filters: dict[str, Any]) -> bool:
    """Whether the first layer sees colour: a grayscale model's colour share is NaN (None once in JSON)."""
    share = filters["trained"]["achromatic_share"]
    return share is not None and not math.isnan(share)


def _rising(values: list[float]) -> bool:
    """Whether every layer's value is above the previous layer's."""
    return all(later > earlier for earlier, later in zip(values, values[1:], strict=False))


MAX_TILE = 96  # px: the largest side of a dataset-example tile in the channel figures


def _row_of(images: torch.Tensor) -> torch.Tensor:
    """``[K, C, H, W]`` in ``[0, 1]`` -> one row grid ``[3, H', W']`` (upscaled 2x, 1 px white padding)."""
    tiles = F.interpolate(images.expand(-1, 3, -1, -1), scale_factor=2, mode="nearest")
    return make_grid(tiles, nrow=len(tiles), padding=1, pad_value=1.0)


def channel_figures(
    ev: Evaluation, analysis: LayerAnalysis, chosen: dict[str, list[int]], steps: int
) -> dict[str, Figure]:
    """``features_<layer>.png`` per layer with chosen channels (a stage with no live, selective channel has no
    figure: the text says so), their optima found in one optimization of ``steps`` Adam steps."""
    targets = [(name, channel) for name, channels in chosen.items() for channel in channels]
    if not targets:
        return {}
    dm = ev.datamodule
    settings = VisualizationSettings(image_size=dm.image_size, steps=steps)
    fields = {name: analysis.layers[name].field for name in chosen}
    optimized = visualize_fields(ev.net, targets, dm.mean, dm.std, settings, fields)  # [C, h, w] per target
    figures, start = {}, 0
    for name, channels in chosen.items():
        if channels:
            layer_optima = torch.stack(optimized[start : start + len(channels)])  # one field size per layer
            figures[f"features_{short_layer_name(name)}.png"] = _channel_figure(
                ev, analysis, name, channels, layer_optima
            )
        start += len(channels)
    return figures


def _channel_figure(
    ev: Evaluation, analysis: LayerAnalysis, name: str, channels: list[int], optimized: torch.Tensor
) -> Figure:
    """Per chosen channel, a row: its optimum ``[C, h, w]`` (central unit, cut to the receptive field), then its top
    validation patches at the receptive field, all at one tile size."""
    layer, dm = analysis.layers[name], ev.datamodule
    crops = crop_examples(dm.val_images.cpu(), layer.examples, layer.field)  # [C, k, C_img, s, s]
    rows = channel_rows(optimized, crops[channels])  # [K, 1 + k, 3, s, s]
    height, width = rows.shape[-2:]
    # Small fields are enlarged to at least 32 px; fields of 128-435 px shrunk to at most 96 px per tile, so that a
    # row of ten stays a page wide.
    tiles = enlarge_small_tiles(rows.flatten(0, 1))
    if max(height, width) > MAX_TILE:
        scale = MAX_TILE / max(height, width)
        size = (round(height * scale), round(width * scale))
        tiles = F.interpolate(tiles, size=size, mode="bilinear", antialias=True, align_corners=False)
    grid = make_grid(tiles, nrow=rows.shape[1], padding=1, pad_value=1.0)
    stats, classes = layer.stats, figure_names(ev.classes)
    counts = example_class_counts(layer.examples, dm.val_labels.cpu(), len(classes), crops.shape[1])
    labels = [
        channel_label(c, float(stats.selectivity[c]), stats.class_means[:, c], counts[c], classes) for c in channels
    ]
    title = (
        f"{name}: its {len(channels)} most class-selective channels; receptive field {layer.field.size}x"
        f"{layer.field.size} px"
    )
    if layer.field.exceeds(tuple(dm.val_images.shape[-2:])):
        title += "\n(larger than the image: optimum and patches are whole images along that axis)"
    columns = ["optimized input", *(f"#{i + 1}" for i in range(crops.shape[1]))]
    return labeled_grid_figure(grid, title, labels, columns)


def markdown(summary: dict[str, Any]) -> str:
    f = summary[KEY]
    rows = [
        (
            r["layer"],
            r["channels"],
            f"{r['receptive_field']} px / {r['stride']}",
            pct(r["sparsity"]),
            r["dead"],
            num(r["selectivity_mean"], 2),
            pct(r["probe_val_acc"]),
            num(r["cka_next"], 2),
        )
        for r in f["layers"]
    ]
    header = [
        "layer",
        "channels",
        "receptive field / stride",
        "zero activations",
        "dead channels",
        "class selectivity (mean over live channels)",
        "linear probe (val)",
        "CKA with next layer",
    ]
    lines = [
        "## Features: what each layer learns",
        "",
        f"Measured on all {f['validation_images']:,} validation images; the linear probes (multinomial logistic "
        f"regression on each layer's globally pooled features, Alain & Bengio 2016) are fitted on "
        f"{f['probe_train_images']:,} training images and scored on validation. Class selectivity (Morcos et al. "
        f"2018): (mean activation for the channel's top class - mean over the others) / their sum, 0 = no preference, "
        f"1 = one class only; a dead channel (never active) has no index (0/0) and is left out of the mean. CKA: "
        f"linear centred kernel alignment (Kornblith et al. 2019) between layers' outputs on the first "
        f"{f.get('cka_images', CKA_IMAGES):,} validation images (the images the comparison of runs uses too), each "
        f"map average-pooled to {f.get('cka_pool', CKA_POOL)}x{f.get('cka_pool', CKA_POOL)} first (full resolution "
        f"would cost too much; pooling moves CKA by up to about 0.1).",
        "",
        *table(header, rows),
        "",
        figure(DEPTH_FIGURE, "Per-layer numbers by depth"),
        "",
        figure(CKA_FIGURE, "CKA between layers"),
        "",
        "### The notebook's claims about features",
        "",
        *table(
            ["claim", "measured by", "values (layer by layer, or trained / init)", "holds here?"],
            [
                (c["claim"], c["measure"], ", ".join(num(v, 3) for v in c["values"]), "yes" if c["holds"] else "no")
                for c in f["claims"]
            ],
            "llll",
        ),
        "",
        _filters_text(f["filters"]),
        "",
        "### Channels: top-activating patches and optimized inputs",
        "",
        "For each stage, its most class-selective live channels, a row each. First the input optimized to excite "
        "the channel's unit nearest the image centre (Olah et al. 2017's neuron objective: Fourier parameterization, "
        f"{'decorrelated colour, ' if _has_colour(f['filters']) else ''}jitter, scale and rotation robustness, "
        f"{f.get('visualization_steps', VisualizationSettings.steps)} Adam steps), cut to that unit's receptive "
        "field: what one unit responds to, at the size it sees (the whole image where the field covers it). Then the "
        "validation images that excite the channel most, cropped to its receptive field around the peak (grey where "
        "the field leaves the image), at the same scale. Each row's label gives the channel's class selectivity "
        "(SI), the class with its highest mean activation (mean), and the two most frequent classes among its "
        "active top patches with their counts (top n): the mean and the peaks can disagree (a channel highest on "
        "trucks on average may peak on red cars).",
        "",
        *(
            line
            for r in f["layers"]
            if r["shown_channels"]
            for line in (figure(f"features_{short_layer_name(r['layer'])}.png", r["layer"]), "")
        ),
        *(
            f"No channel of {r['layer']} is live at 1% of the positions with a defined selectivity: no figure.\n"
            for r in f["layers"]
            if not r["shown_channels"]
        ),
        figure(CLASSES_FIGURE, "Optimized inputs per class"),
        "",
        "Inputs optimized to raise each class's logit (Simonyan et al. 2014, section 2, with the same regularizers).",
        "",
        f"The penultimate layer's embedding of {PROJECTOR_PER_CLASS} validation images per class, with their labels "
        f"and thumbnails, is in `{PROJECTOR_DIR}/`: `tensorboard --logdir <this folder>/{PROJECTOR_DIR}`, Projector "
        f"tab, colour by label.",
    ]
    return "\n".join(lines)


def _filters_text(filters: dict[str, Any]) -> str:
    trained, colour = filters["trained"], _has_colour(filters)
    opponent = f"colour-opponent patterns {pct(1 - trained['achromatic_share'])}, in " if colour else ""
    head = (
        f"First-layer filters (`{filters['layer']}`), medians over the filters: norm {num(trained['norm'])}, "
        f"share of energy in {opponent}the DC component (flat colour) {pct(trained['dc_share'])}, orientation "
        f"coherence {num(trained['coherence'], 2)}."
    )
    if not colour:
        head += " The input has one channel: there is no colour to measure."
    if filters["initial"] is None:
        return head + " This run has no saved initial weights, so what training changed cannot be measured."
    initial, drift = filters["initial"], filters["drift"]
    opponent = f"colour-opponent {pct(1 - initial['achromatic_share'])}, " if colour else ""
    return (
        f"{head} At initialization: norm {num(initial['norm'])}, {opponent}"
        f"DC {pct(initial['dc_share'])}, coherence {num(initial['coherence'], 2)}. Training moved each filter by a "
        f"median {pct(drift['relative_change'])} of its initial norm (norm ratio {num(drift['norm_ratio'], 2)}).\n\n"
        f"{figure(INIT_FIGURE, 'conv1 filters at initialization')}"
    )
