"""Feature maps after each stage of the net (:func:`cnn_explorer.interpret.layers.stages`) for the probe set."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.base import (
    ImageView,
    check_layer_names,
    class_names,
    figure_class_names,
    lightning_net,
    probe_set,
)
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret import layer_activations
from cnn_explorer.interpret.layers import short_layer_name, stages
from cnn_explorer.render.cards import feature_maps_card
from cnn_explorer.render.grids import FEATURE_CHANNELS


class FeatureMapCallback(ImageView):
    """Logs, per probe image, one card: a row per layer with the image and its first channels after the layer,
    so early and deep layers compare at a glance.

    The probe set is the DataModule's first ``per_class`` validation images of every class, the same for every
    run with the same split. Tags: ``feature_maps/<class>`` (``feature_maps/cat``; ``cat_2``, ... for more
    images per class).

    Args:
        every_n_epochs: cadence in epochs.
        per_class: probe images per class.
        max_channels: channels shown per layer (here and in analyze.py's report).
        layers: dotted layer names; ``None`` means the net's stages (:func:`cnn_explorer.interpret.layers.stages`).
            Checked against the net when training starts.

    Raises:
        BadArgument: (a ``ValueError``) if a count is not a positive integer, or (at setup) a layer name is
            not in the net.

    Example::

        Trainer(callbacks=[FeatureMapCallback(layers=["features.conv2"])], ...)
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        per_class: int = 1,
        max_channels: int = FEATURE_CHANNELS,
        layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        check_positive(per_class=per_class, max_channels=max_channels)
        self.per_class, self.max_channels = per_class, max_channels
        self.layers = list(layers) if layers is not None else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        check_layer_names(lightning_net(pl_module), self.layers, "callbacks.feature_maps.layers")

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (probe := probe_set(trainer, self.per_class)) is None:
            return
        net = lightning_net(pl_module)
        layers = self.layers if self.layers is not None else stages(net, probe.inputs.shape[1:])
        activations = layer_activations(net, probe.inputs, layers)  # {layer: [K, C, h, w]}
        rows = [f"{short_layer_name(n)}\n{a.shape[2]}x{a.shape[3]}" for n, a in activations.items()]
        names = class_names(trainer, int(probe.labels.max()) + 1)  # in tags: TensorBoard shows any character
        shown = figure_class_names(trainer, len(names))
        seen: dict[str, int] = {}
        for k, label in enumerate(probe.labels.tolist()):
            seen[names[label]] = seen.get(names[label], 0) + 1
            name = names[label] + (f"_{seen[names[label]]}" if seen[names[label]] > 1 else "")
            channels = [a[k, : self.max_channels] for a in activations.values()]
            title = f"{shown[label]}: feature maps, epoch {trainer.current_epoch}"
            self.log_figure(trainer, f"feature_maps/{name}", feature_maps_card(probe.images[k], channels, rows, title))
