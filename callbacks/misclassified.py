"""The validation images the model gets wrong with the highest confidence."""

from __future__ import annotations

import lightning as L
import torch

from callbacks.base import figure_class_names
from callbacks.predictions import PredictionView, Stage
from cnn_explorer.augment import denormalize
from cnn_explorer.errors import check_positive
from cnn_explorer.interpret.mistakes import MISTAKES_SHOWN, RunningMistakes
from cnn_explorer.render.cards import mistakes_card


class MisclassifiedCallback(PredictionView):
    """Logs the ``k`` most confidently wrong validation images, titled with true label, prediction and
    confidence, in two rows (eight, the default, stay readable in TensorBoard's card). Tag: ``misclassified/val``.

    The images are the validation batches themselves (normalized on the device, shown denormalized): the
    callback keeps the top ``k`` as the batches pass, and under DDP merges the ranks' top ``k`` at the end.

    Args:
        every_n_epochs: cadence in epochs.
        k: how many mistakes to show.

    Raises:
        BadArgument: (a ``ValueError``) if an argument is not a positive integer.

    Example::

        Trainer(callbacks=[MisclassifiedCallback(k=32)], ...)
    """

    stages = ("val",)  # the report shows the test set's mistakes

    def __init__(self, every_n_epochs: int = 1, k: int = MISTAKES_SHOWN) -> None:
        super().__init__(every_n_epochs)
        check_positive(k=k)
        self.k = k
        self.reset()

    def reset(self) -> None:
        self._running = RunningMistakes(self.k)
        self._num_classes = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        self._running.update(logits, labels, images)
        self._num_classes = logits.shape[1]

    def gather(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._gather(pl_module)

    def draw_stage(
        self, trainer: L.Trainer, stage: Stage, gathered: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        images, labels, predictions, confidences = gathered
        datamodule = trainer.datamodule
        shown = denormalize(images, datamodule.mean, datamodule.std)
        names = figure_class_names(trainer, self._num_classes)
        title = (
            f"most confident val mistakes (top {len(labels)}), epoch {trainer.current_epoch}"
            if len(labels)
            else f"val mistakes, epoch {trainer.current_epoch}"
        )
        card = mistakes_card(shown, labels, predictions, confidences, names, title, slots=self.k)
        self.log_figure(trainer, "misclassified/val", card)

    def _gather(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's top ``k``, merged with every other rank's under DDP; CPU tensors, most confident first."""
        kept = self._running.result()
        if pl_module.trainer.world_size == 1:
            return tuple(t.cpu() for t in kept)
        datamodule = pl_module.trainer.datamodule
        shape = (datamodule.channels, datamodule.image_size, datamodule.image_size)
        # all_gather needs the same shape on every rank: pad to k rows with confidence -inf, dropped after.
        pad = self.k - len(kept[3])
        images, labels, predictions, confidences = kept
        padded = (
            torch.cat([images.reshape(-1, *shape), images.new_zeros(pad, *shape)]),
            torch.cat([labels, labels.new_zeros(pad)]),
            torch.cat([predictions, predictions.new_zeros(pad)]),
            torch.cat([confidences, confidences.new_full((pad,), -torch.inf)]),
        )
        gathered = [pl_module.all_gather(t).flatten(0, 1) for t in padded]  # [world * k, ...]
        real = gathered[3] > -torch.inf
        order = gathered[3][real].argsort(descending=True, stable=True)[: self.k]
        return tuple(t[real][order].cpu() for t in gathered)
