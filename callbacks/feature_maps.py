"""Feature maps after each conv block for a fixed probe set of validation images."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from callbacks.base import TensorBoardImageCallback, lightning_net, probe_batch
from cnn_explorer.interpret import feature_map_grid, layer_activations
from cnn_explorer.models import conv_block_names, short_layer_name


class FeatureMapCallback(TensorBoardImageCallback):
    """Logs, per layer, one grid: a row per probe image, the image first, then its first channels.

    The probe is the DataModule's first ``per_class`` validation images of every class, the same for every
    run with the same split. Tags: ``feature_maps/<layer>`` (``feature_maps/conv1``, ...).

    Args:
        every_n_epochs: cadence in epochs.
        per_class: probe images per class.
        max_channels: channels shown per layer.
        layers: dotted layer names; ``None`` means every conv block of the net.

    Example::

        Trainer(callbacks=[FeatureMapCallback(layers=["features.conv2"])], ...)
    """

    def __init__(
        self, every_n_epochs: int = 1, per_class: int = 1, max_channels: int = 16, layers: Sequence[str] | None = None
    ) -> None:
        super().__init__(every_n_epochs)
        self.per_class, self.max_channels = per_class, max_channels
        self.layers = list(layers) if layers is not None else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer) or (probe := probe_batch(trainer, self.per_class)) is None:
            return
        images, normalized, _ = probe
        net = lightning_net(pl_module)
        layers = self.layers if self.layers is not None else conv_block_names(net)
        for name, activation in layer_activations(net, normalized, layers).items():
            grid = feature_map_grid(images, activation, self.max_channels)
            self.log_image(trainer, f"feature_maps/{short_layer_name(name)}", grid)
