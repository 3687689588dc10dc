"""The detection LightningModule: a torchvision detector trained on the sum of its losses, COCO mAP per epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.detection import MeanAveragePrecision

from cnn_explorer.detection.data import Target
from cnn_explorer.errors import TrainingDiverged
from cnn_explorer.module import OptimizerFactory, SchedulerFactory, TrainedNet

# MeanAveragePrecision's keys logged per epoch as <stage>/<key>: COCO's mAP@[.5:.95], mAP@.5, mAP@.75, AP by object
# size (small < 32^2 px, medium < 96^2 px, large, in the evaluated images' pixels) and recall with 100 detections.
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def mean_average_precision() -> MeanAveragePrecision:
    """torchmetrics' COCO mAP on boxes, computed by pycocotools (the reference implementation)."""
    return MeanAveragePrecision(iou_type="bbox", backend="pycocotools")


class Detector(TrainedNet):
    """Wraps a torchvision detector ``net`` (kept as ``self.net``, the module views look at).

    Logs per epoch: ``train/loss`` (the sum the optimizer minimizes) and each of the detector's losses as
    ``train/<name>`` (``train/loss_classifier``, ``train/loss_box_reg``, ``train/loss_objectness``,
    ``train/loss_rpn_box_reg`` for Faster R-CNN); ``val/<key>`` and ``test/<key>`` for :data:`MAP_KEYS`
    (``val/map``, ``val/map_50``, ...), and ``val/map_best``. A sanity check's two batches are not an epoch and
    log no mAP. A loss that is not finite stops training with :class:`~cnn_explorer.errors.TrainingDiverged`
    at that step, before a checkpoint of the diverged weights.

    Args:
        net: ``net(images, targets) -> {loss name: loss}`` in train mode and ``net(images) -> [{"boxes",
            "labels", "scores"}]`` in eval mode, images a list of float ``[3, H_i, W_i]`` in [0, 1].
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``); given the trainable parameters only.
        scheduler: ``optimizer -> LRScheduler`` stepped once per epoch, or ``None``.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None) -> None:
        super().__init__(net, optimizer, scheduler)
        # One MeanMetric per loss name, made at the first step (the names are the net's). Persistent, as the
        # Classifier's running loss: a checkpoint taken mid-epoch (on SIGTERM) carries the sums so far, and the
        # resumed epoch's figures cover every batch of it.
        self.train_losses = nn.ModuleDict()
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()
        self.val_map_best = MaxMetric()
        self.val_map_best.persistent(True)  # a resumed run must remember its best epoch

    def forward(self, images: list[torch.Tensor]) -> list[Target]:
        return self.net(images)

    def training_step(self, batch: tuple[list[torch.Tensor], list[Target]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.net(images, targets)
        loss = sum(losses.values())
        # Checked at every step (a detector's step is long: one read-back is nothing beside it).
        if not torch.isfinite(loss):
            raise TrainingDiverged(epoch=self.current_epoch, step=self.global_step)
        for name, value in {"loss": loss, **losses}.items():
            if name not in self.train_losses:
                self._add_train_loss(name)
            # The batch's mean once per image, so a short last batch weighs its images (not weight=: torchmetrics
            # 1.9's MeanMetric with nan_strategy="disable" replaces the weights by ones).
            self.train_losses[name].update(value.detach().expand(len(images)))
        return loss

    def _add_train_loss(self, name: str) -> None:
        metric = MeanMetric(nan_strategy="disable").to(self.device)
        metric.persistent(True)
        self.train_losses[name] = metric

    def on_train_epoch_start(self) -> None:
        # A new epoch starts from zero; an epoch resumed from a mid-epoch checkpoint keeps what it had summed.
        # (At this hook the batch counter still holds the previous epoch's count, or the restored one.)
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if not 0 < done < self.trainer.num_training_batches:
            for metric in self.train_losses.values():
                metric.reset()

    def on_train_epoch_end(self) -> None:
        # compute() syncs the sums over DDP ranks, so every rank logs the same value (sync_dist says so to Lightning).
        for name, metric in self.train_losses.items():
            self.log(f"train/{name}", metric.compute(), sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # The running losses of a checkpoint taken after the first step: made now, so the state dict loads into them.
        prefix = "train_losses."
        for key in checkpoint.get("state_dict", {}):
            name = key[len(prefix) :].split(".")[0] if key.startswith(prefix) else None
            if name and name not in self.train_losses:
                self._add_train_loss(name)

    def validation_step(self, batch: tuple[list[torch.Tensor], list[Target]], batch_idx: int) -> list[Target]:
        return self._evaluate(batch, self.val_map)

    def test_step(self, batch: tuple[list[torch.Tensor], list[Target]], batch_idx: int) -> list[Target]:
        return self._evaluate(batch, self.test_map)

    def _evaluate(self, batch: tuple[list[torch.Tensor], list[Target]], metric: MeanAveragePrecision) -> list[Target]:
        images, targets = batch
        predictions = self.net(images)
        metric.update(predictions, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        return predictions

    def on_validation_epoch_end(self) -> None:
        results = self.val_map.compute()
        self.val_map.reset()
        if self.trainer.sanity_checking:  # the sanity check's two batches are not an epoch
            return
        self._log_map(results, "val")
        self.val_map_best(results["map"])
        self.log("val/map_best", self.val_map_best.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map.compute(), "test")
        self.test_map.reset()

    def _log_map(self, results: dict[str, torch.Tensor], stage: str) -> None:
        # The same on every rank (the metric gathers every rank's boxes); sync_dist says so to Lightning.
        for key in MAP_KEYS:
            self.log(f"{stage}/{key}", results[key].float(), sync_dist=True)
