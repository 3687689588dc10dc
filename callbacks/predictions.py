"""The base of the views that read the validation and test predictions (confusion matrix, mistakes).

They use the logits that ``Classifier.validation_step``/``test_step`` return, so they cost no extra forward
pass, and keep only a small running state on the device (counts, the top mistakes), never every logit.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch

from callbacks.base import ImageView

Stage = Literal["val", "test"]


class PredictionView(ImageView):
    """Calls :meth:`reset`, then :meth:`update` for every validation batch of a due epoch and every test batch
    (of the :attr:`stages` it reads), then :meth:`gather` at the end of the loop on every rank (collective
    operations line up under DDP), then :meth:`draw_stage` on rank zero: after validation where :meth:`may_draw`
    says so, inside the schedule's booking; after testing always.
    """

    when = "validation"
    stages: ClassVar[tuple[Stage, ...]] = ("val", "test")
    """The loops this view reads and draws."""

    def reset(self) -> None:
        """Forget the previous loop's state."""
        raise NotImplementedError

    def update(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        """One batch: ``logits [B, C]``, ``labels [B]``, normalized ``images [B, C, H, W]``."""
        raise NotImplementedError

    def gather(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> Any:
        """End of a loop, on every rank: reduce the state across ranks; None: nothing to draw."""
        raise NotImplementedError

    def draw_stage(self, trainer: L.Trainer, stage: Stage, gathered: Any) -> None:
        """Draw and log what :meth:`gather` returned (rank zero)."""
        raise NotImplementedError

    def _batch(self, outputs: Any, batch: Any) -> None:
        images, labels = batch
        self.update(outputs["logits"].detach(), labels.detach(), images.detach())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if "val" in self.stages and self.due(trainer):
            self._batch(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" not in self.stages or not self.due(trainer):
            return
        gathered = self.gather(trainer, pl_module, "val")
        if gathered is not None and self.may_draw(trainer):
            with self.drawing(trainer):
                self.draw_stage(trainer, "val", gathered)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if "test" in self.stages and self._writer is not None:
            self._batch(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" not in self.stages or self._writer is None:
            return
        gathered = self.gather(trainer, pl_module, "test")
        if gathered is not None and trainer.is_global_zero:
            self.draw_stage(trainer, "test", gathered)
