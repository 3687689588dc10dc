"""The confusion matrix of the validation split every few epochs, and of the test set after testing."""

from __future__ import annotations

import lightning as L
import torch

from callbacks.base import class_names, figure_class_names
from callbacks.predictions import PredictionView, Stage
from cnn_explorer.interpret import confusion_matrix
from cnn_explorer.render.cards import confusion_card, confusion_table


class ConfusionCounts:
    """A confusion matrix summed on the device batch by batch, and across ranks at the end of a loop."""

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None  # [C, C], rows true classes, columns predictions

    def reset(self) -> None:
        """Forget the previous loop's counts."""
        self._counts = None

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``logits [B, C]``, ``labels [B]``."""
        counts = confusion_matrix(logits.argmax(1), labels, logits.shape[1])
        self._counts = counts if self._counts is None else self._counts + counts

    def gather(self, pl_module: L.LightningModule) -> torch.Tensor | None:
        """The counts of every rank summed (a collective: call it on every rank), on the CPU; None: no batch."""
        if self._counts is None:
            return None
        counts = pl_module.all_gather(self._counts)  # [world, C, C] under DDP, [C, C] on one process
        return (counts.sum(0) if counts.ndim == 3 else counts).cpu()


class ConfusionMatrixCallback(PredictionView):
    """Logs the row-normalized confusion matrix as a heat map card, ``confusion_matrix/val`` every
    ``every_n_epochs`` epochs and ``confusion_matrix/test`` after testing, and its exact counts under the same
    tags in the Text tab (a Markdown table: cells a card can show are too small for numbers).

    Counts are summed on the device batch by batch and, under DDP, across ranks before drawing, so the
    matrix covers the whole split whatever the number of processes; the last one of each stage stays in
    ``matrices``.

    Args:
        every_n_epochs: cadence in epochs (validation); the test matrix is logged whenever ``test`` runs.

    Example::

        Trainer(callbacks=[ConfusionMatrixCallback()], ...)
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self._confusion = ConfusionCounts()
        self.matrices: dict[str, torch.Tensor] = {}  # the last matrix drawn per stage ("val", "test"), CPU counts

    def reset(self) -> None:
        self._confusion.reset()

    def update(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        self._confusion.update(logits, labels)

    def gather(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> torch.Tensor | None:
        cm = self._confusion.gather(pl_module)
        if cm is not None:
            self.matrices[stage] = cm
        return cm

    def draw_stage(self, trainer: L.Trainer, stage: Stage, cm: torch.Tensor) -> None:
        when = f"epoch {trainer.current_epoch}" if stage == "val" else "tested checkpoint"
        title = f"{stage} confusion ({when}): acc {cm.diag().sum() / cm.sum():.1%}"
        names = figure_class_names(trainer, cm.shape[0])
        self.log_figure(trainer, f"confusion_matrix/{stage}", confusion_card(cm, names, title))
        self.log_text(trainer, f"confusion_matrix/{stage}", confusion_table(cm, class_names(trainer, cm.shape[0])))
