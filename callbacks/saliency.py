"""Vanilla gradient saliency of the probe images, as heatmaps beside and over them."""

from __future__ import annotations

import lightning as L

from callbacks.base import TensorBoardImageCallback, lightning_net, probe_batch
from cnn_explorer.interpret import saliency, saliency_grid


class SaliencyCallback(TensorBoardImageCallback):
    """Logs ``|d score[true class] / d input|`` (max over channels) for the probe images.

    Runs in ``on_train_epoch_end``, after that epoch's validation: gradients are available there, unlike
    in the validation hooks, which Lightning runs under ``torch.inference_mode``. Tag: ``saliency/gradient``.

    Args:
        every_n_epochs: cadence in epochs.
        per_class: probe images per class.

    Example::

        Trainer(callbacks=[SaliencyCallback(every_n_epochs=5)], ...)
    """

    def __init__(self, every_n_epochs: int = 1, per_class: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.per_class = per_class

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer) or (probe := probe_batch(trainer, self.per_class)) is None:
            return
        images, normalized, labels = probe
        maps = saliency(lightning_net(pl_module), normalized, labels)
        self.log_image(trainer, "saliency/gradient", saliency_grid(images, maps))
