"""What each channel and layer learns, measured on a whole data split: dataset examples per channel, per-layer
sparsity, dead channels and class selectivity, linear probes, representation similarity (CKA), receptive
fields, feature visualization and first-layer filter statistics. Torch only; one module per instrument.

:func:`analyze_layers` runs the instruments that need a pass over data, together: one forward pass over the
validation split feeds the statistics, the dataset examples and CKA's sample; one over a training subset feeds
the probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from cnn_explorer.interpret.features.cka import ActivationSample, cka_matrix
from cnn_explorer.interpret.features.dataset_examples import ChannelExamples, TopActivations
from cnn_explorer.interpret.features.layer_stats import LayerStats, LayerStatsObserver, observe_layers
from cnn_explorer.interpret.features.linear_probe import ProbeResult, linear_probes
from cnn_explorer.interpret.features.receptive_field import ReceptiveField, receptive_fields

Batch = tuple[Tensor, Tensor, Tensor]  # normalized images [B, C, H, W], labels [B], dataset indices [B]


@dataclass(frozen=True)
class LayerFeatures:
    """One layer, measured.

    Attributes:
        name: dotted module name.
        field: its receptive field in input pixels.
        stats: sparsity, dead channels, class selectivity on the validation split.
        probe: linear probe accuracy of its pooled features (trained on training features).
        examples: the top-activating validation images per channel.
        sample: its (pooled) outputs for the first validation images, for CKA across runs.
    """

    name: str
    field: ReceptiveField
    stats: LayerStats
    probe: ProbeResult
    examples: ChannelExamples
    sample: Tensor


@dataclass(frozen=True)
class LayerAnalysis:
    """Every layer measured, and linear CKA (Kornblith et al. 2019) between each pair of them: ``cka [L, L]``."""

    layers: dict[str, LayerFeatures]
    cka: Tensor


def analyze_layers(
    model: nn.Module,
    val_batches: Iterable[Batch],
    train_batches: Iterable[Batch],
    layer_names: Sequence[str],
    num_classes: int,
    k: int = 9,
    cka_images: int = 1000,
    image_shape: tuple[int, int, int] | None = None,
) -> LayerAnalysis:
    """Measure ``layer_names`` of ``model``: one pass over the validation batches, one over the training batches.

    Args:
        model: the network; left as it was found.
        val_batches: the validation split (statistics, examples, CKA sample, probe scores).
        train_batches: training images (probe fitting), without augmentation.
        layer_names: dotted names of layers with ``[B, C, h, w]`` outputs, in forward order.
        num_classes: classes the labels index.
        k: dataset examples kept per channel.
        cka_images: validation images in CKA's sample.
        image_shape: ``(C, H, W)`` of the images, where receptive fields are traced (default: a 224 px RGB image).
    """
    stats, top, sample = LayerStatsObserver(num_classes), TopActivations(k), ActivationSample(cka_images)
    observe_layers(model, val_batches, layer_names, [stats, top, sample])
    train_stats = LayerStatsObserver(num_classes)
    observe_layers(model, train_batches, layer_names, [train_stats])
    val, train, examples, samples = stats.result(), train_stats.result(), top.result(), sample.result()
    first = next(iter(train.values()))
    probes = linear_probes(
        {name: s.pooled for name, s in train.items()},
        first.labels,
        {name: s.pooled for name, s in val.items()},
        next(iter(val.values())).labels,
        num_classes,
    )
    if image_shape is None:
        fields = receptive_fields(model)
    else:
        fields = receptive_fields(model, image_shape[1:], image_shape[0])
    layers = {
        name: LayerFeatures(name, fields[name], val[name], probes[name], examples[name], samples[name])
        for name in layer_names
    }
    return LayerAnalysis(layers, cka_matrix([layer.sample for layer in layers.values()]))
