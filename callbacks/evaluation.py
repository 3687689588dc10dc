"""Callbacks that read the validation/test predictions: confusion matrices and confident mistakes.

They use the logits that ``Classifier.validation_step``/``test_step`` return, so they cost no extra forward.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from callbacks.base import TensorBoardImageCallback
from cnn_explorer.interpret import confident_mistakes, confusion_matrix
from cnn_explorer.plots import confusion_matrix_figure, mistakes_figure


class _PredictionCollector(TensorBoardImageCallback):
    """Collects ``(logits, labels)`` of every validation batch of a due epoch, and of every test batch."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def _collect(self, outputs: Any, batch: Any) -> None:
        self._logits.append(outputs["logits"].detach().float().cpu())
        self._labels.append(batch[1].detach().cpu())

    def _take(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits, labels = torch.cat(self._logits), torch.cat(self._labels)
        self._logits, self._labels = [], []
        return logits, labels

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels = [], []

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if self.due(trainer):
            self._collect(outputs, batch)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels = [], []

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if self.active(trainer):
            self._collect(outputs, batch)


def _class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    names = getattr(trainer.datamodule, "classes", None)
    return list(names) if names else [str(i) for i in range(num_classes)]


class ConfusionMatrixCallback(_PredictionCollector):
    """Logs the row-normalized confusion matrix with counts: ``confusion_matrix/val`` every
    ``every_n_epochs`` epochs, and ``confusion_matrix/test`` after testing.

    Args:
        every_n_epochs: cadence in epochs (validation); the test matrix is logged whenever ``test`` runs.

    Example::

        Trainer(callbacks=[ConfusionMatrixCallback()], ...)
    """

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer) and self._logits:
            self._log(trainer, "val", *self._take())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active(trainer) and self._logits:
            self._log(trainer, "test", *self._take())

    def _log(self, trainer: L.Trainer, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        num_classes = logits.shape[1]
        cm = confusion_matrix(logits.argmax(1), labels, num_classes)
        when = f"after epoch {trainer.current_epoch}" if stage == "val" else "of the tested checkpoint"
        title = f"{stage} confusion {when}: accuracy {cm.diag().sum() / cm.sum():.1%}"
        figure = confusion_matrix_figure(cm, _class_names(trainer, num_classes), title)
        self.log_figure(trainer, f"confusion_matrix/{stage}", figure)


class MisclassifiedCallback(_PredictionCollector):
    """Logs the ``k`` most confidently wrong validation images, titled with true label, prediction and
    confidence. Tag: ``misclassified/val``.

    The images are looked up in the DataModule's ``val_images`` by position, since the validation loader
    visits them in order; they are shown as stored (uint8), not as the normalized network input.

    Args:
        every_n_epochs: cadence in epochs.
        k: how many mistakes to show.

    Example::

        Trainer(callbacks=[MisclassifiedCallback(k=32)], ...)
    """

    def __init__(self, every_n_epochs: int = 1, k: int = 16) -> None:
        super().__init__(every_n_epochs)
        if k < 1:
            raise ValueError(f"k must be a positive number of images, got {k}")
        self.k = k

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.due(trainer) and self._logits):
            return
        logits, labels = self._take()
        val_images = getattr(trainer.datamodule, "val_images", None)
        if val_images is None or len(val_images) != len(labels):
            return  # a partial validation pass (limit_val_batches) or another DataModule: positions unknown
        mistakes = confident_mistakes(logits, labels, self.k)
        figure = mistakes_figure(
            val_images[mistakes.indices.to(val_images.device)].cpu(),
            labels[mistakes.indices],
            mistakes.predictions,
            mistakes.confidences,
            _class_names(trainer, logits.shape[1]),
        )
        self.log_figure(trainer, "misclassified/val", figure)
