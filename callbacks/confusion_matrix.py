"""The confusion matrix of the validation split every few epochs, and of the test set after testing."""

from __future__ import annotations

import lightning as L
import torch

from callbacks.base import figure_class_names
from callbacks.predictions import PredictionCallback
from cnn_explorer.interpret import confusion_matrix
from cnn_explorer.render.cards import confusion_card


class ConfusionMatrixCallback(PredictionCallback):
    """Logs the row-normalized confusion matrix with counts: ``confusion_matrix/val`` every
    ``every_n_epochs`` epochs, and ``confusion_matrix/test`` after testing.

    Counts are summed on the device batch by batch and, under DDP, across ranks before drawing, so the
    matrix covers the whole split whatever the number of processes; the last one of each stage stays in
    ``matrices``.

    Args:
        every_n_epochs: cadence in epochs (validation); the test matrix is logged whenever ``test`` runs.
        time_budget: at most this fraction of the training time spent drawing (see the base class).

    Example::

        Trainer(callbacks=[ConfusionMatrixCallback()], ...)
    """

    def __init__(self, every_n_epochs: int = 1, time_budget: float | None = None) -> None:
        super().__init__(every_n_epochs, time_budget)
        self._counts: torch.Tensor | None = None
        self.matrices: dict[str, torch.Tensor] = {}  # the last matrix drawn per stage ("val", "test"), CPU counts

    def reset(self) -> None:
        self._counts = None

    def update(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        counts = confusion_matrix(logits.argmax(1), labels, logits.shape[1])
        self._counts = counts if self._counts is None else self._counts + counts

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._counts is None:
            return
        counts = pl_module.all_gather(self._counts)  # [world, C, C] under DDP, [C, C] on one process
        cm = (counts.sum(0) if counts.ndim == 3 else counts).cpu()
        self.matrices[stage] = cm
        if not trainer.is_global_zero or (stage == "val" and not self.within_budget(trainer)):
            return
        with self.spending(trainer):
            self._draw(trainer, stage, cm)

    def _draw(self, trainer: L.Trainer, stage: str, cm: torch.Tensor) -> None:
        when = f"epoch {trainer.current_epoch}" if stage == "val" else "tested checkpoint"
        title = f"{stage} confusion ({when}): acc {cm.diag().sum() / cm.sum():.1%}"
        self.log_figure(
            trainer, f"confusion_matrix/{stage}", confusion_card(cm, figure_class_names(trainer, cm.shape[0]), title)
        )
