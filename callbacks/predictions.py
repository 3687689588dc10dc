"""The base of callbacks that read the validation and test predictions (confusion matrix, mistakes).

They use the logits that ``Classifier.validation_step``/``test_step`` return, so they cost no extra forward
pass, and keep only a small running state on the device (counts, the top mistakes), never every logit.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from callbacks.base import TensorBoardImageCallback


class PredictionCallback(TensorBoardImageCallback):
    """Calls :meth:`reset`, then :meth:`update` for every validation batch of a due epoch and every test batch,
    then :meth:`finish` at the end of the loop, on every rank (the subclass reduces across ranks there).
    """

    def reset(self) -> None:
        """Forget the previous loop's state."""
        raise NotImplementedError

    def update(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        """One batch: ``logits [B, C]``, ``labels [B]``, normalized ``images [B, C, H, W]``."""
        raise NotImplementedError

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """End of a validation (``stage="val"``) or test loop: reduce across ranks, draw on rank zero."""
        raise NotImplementedError

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: these views draw at the end of the validation loop (:meth:`finish`), under the time budget."""

    def _batch(self, outputs: Any, batch: Any) -> None:
        images, labels = batch
        self.update(outputs["logits"].detach(), labels.detach(), images.detach())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if self.due(trainer):
            self._batch(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer):
            self.finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if self._writer is not None:
            self._batch(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._writer is not None:
            self.finish(trainer, pl_module, "test")
