"""The LightningModule: a plain ``nn.Module`` net trained with cross-entropy, accuracy per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cnn_explorer.errors import TrainingDiverged

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class TrainedNet(L.LightningModule):
    """What every task's LightningModule shares: ``self.net`` (the module the views look at), the optimizer and
    its per-epoch schedule built from Hydra ``_partial_`` factories over the trainable parameters, and the global
    RNG's state in every checkpoint (dropout, and a detector's anchor and proposal sampling, draw from it), so a
    resumed run continues the same stream.

    Args:
        net: the network.
        optimizer: ``params -> Optimizer``; given the parameters that require gradients.
        scheduler: ``optimizer -> LRScheduler`` stepped once per epoch, or ``None``.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])


class Classifier(TrainedNet):
    """Wraps ``net`` (kept as ``self.net``, the module the interpretability callbacks look at).

    Logs per epoch: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``,
    ``test/loss``, ``test/acc``. Validation and test steps return ``{"loss", "logits"}`` so callbacks can
    build a confusion matrix or find mistakes without a second forward pass. The training loss and accuracy are
    summed on the device at each step and logged once, at the epoch's end: no ``self.log`` and no read from the
    device per step.

    A loss that is not finite stops training with :class:`~cnn_explorer.errors.TrainingDiverged` (naming the
    epoch and step) before the epoch ends, so no checkpoint of the diverged weights is written. The check reads
    the device every ``check_finite_every`` steps and at the epoch's last batch, not at every step.

    Args:
        net: maps normalized images ``[N, 3, H, W]`` to logits ``[N, num_classes]``.
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``optimizer -> LRScheduler`` stepped once per epoch, or ``None``.
        num_classes: number of classes, for the accuracy metrics.
        channels_last: keep weights and inputs in channels-last memory format (faster convs on recent GPUs).
        compile: run the forward pass through ``torch.compile(net)`` (parameter names, hence checkpoints, and the
            eager ``self.net`` the views use are unchanged).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 10,
        channels_last: bool = False,
        compile: bool = False,
        check_finite_every: int = 50,
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        self.check_finite_every = check_finite_every
        self._first_nonfinite_step: torch.Tensor | None = None  # on the device: -1 while every loss is finite
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # Training runs through a compiled copy of the forward; self.net stays the eager module the views hook
        # into (forward hooks inside a compiled graph do not give autograd paths to a layer's output). The
        # compiled wrapper shares the parameters and is kept out of the module tree, so the state_dict and
        # checkpoints are unchanged.
        object.__setattr__(self, "_train_net", torch.compile(self.net) if compile else self.net)
        # The training epoch's running loss and accuracy are module state (persistent), so a checkpoint taken
        # mid-epoch (on SIGTERM) carries them and the resumed epoch's figures cover every batch of it.
        # No argument checks and NaN scans per step: each reads a value back from the GPU and makes it wait
        # (non-finite losses are caught by _watch_finite instead).
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_loss.persistent(True)
        self.train_acc.persistent(True)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # The evaluation losses are summed in metrics too, not logged as tensors with sync_dist: Lightning's mean over
        # DDP ranks divides the summed image count by the world size in integers (gloo), so 200 images on 3 ranks
        # count as 198. torchmetrics sums both states over the ranks exactly. Under DDP each rank evaluates its own
        # share of the images (cnn_explorer.data.ShardedBatches), shares that may differ by an image.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run must remember its best epoch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._train_net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self._watch_finite(loss)
        # Summed on the device and logged once, at the epoch's end (on_train_epoch_end): a self.log per step, even
        # with on_step=False, costs Lightning ~1 ms of Python (it moves its whole result collection to the device
        # at every call), more than a small net's forward and backward (issue 23; tools/profile_step.py).
        # update(), not forward(): forward would also compute a per-batch accuracy nobody reads.
        # The batch's mean once per image, so a short last batch weighs its images; not weight=: torchmetrics 1.9's
        # MeanMetric with nan_strategy="disable" replaces the weights by ones (an unweighted mean of batch means).
        self.train_loss.update(loss.detach().expand(len(labels)))
        self.train_acc.update(logits, labels)
        return loss

    def on_train_epoch_end(self) -> None:
        # compute() syncs the sums over DDP ranks, so every rank logs the same value (sync_dist says so to Lightning).
        self.log("train/loss", self.train_loss.compute(), sync_dist=True)
        self.log("train/acc", self.train_acc.compute(), sync_dist=True)

    def on_train_epoch_start(self) -> None:
        # A new epoch starts from zero; an epoch resumed from a mid-epoch checkpoint keeps what it had summed.
        # (At this hook the batch counter still holds the previous epoch's count, or the restored one.)
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if not 0 < done < self.trainer.num_training_batches:
            self.train_loss.reset()
            self.train_acc.reset()

    def _watch_finite(self, loss: torch.Tensor) -> None:
        # Recorded on the device and read only now and then: a .item() per step, or a step number copied to the
        # GPU per step, would make every step wait for the GPU.
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.tensor(-1, device=loss.device)
            self._step_counter = torch.tensor(self.global_step, device=loss.device)
        first_bad = (self._first_nonfinite_step < 0) & ~torch.isfinite(loss.detach())
        self._first_nonfinite_step = torch.where(first_bad, self._step_counter, self._first_nonfinite_step)
        self._step_counter += 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if not (last or (self.global_step % self.check_finite_every == 0)) or self._first_nonfinite_step is None:
            return
        # The largest over ranks: every rank checks at the same steps, so this collective lines up under DDP.
        bad_step = int(self.all_gather(self._first_nonfinite_step).max())
        if bad_step >= 0:
            raise TrainingDiverged(epoch=self.current_epoch, step=bad_step)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val", self.val_loss, self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test", self.test_loss, self.test_acc)

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, mean_loss: MeanMetric, accuracy: MulticlassAccuracy
    ) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # One entry per image (see training_step): the epoch's loss is the mean over images, as on one process.
        mean_loss.update(loss.expand(len(labels)))
        accuracy.update(logits, labels)
        # Metric objects: Lightning computes them at the epoch's end, when torchmetrics sums them over DDP ranks.
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, batch_size=len(labels))
        return {"loss": loss, "logits": logits}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the sanity check's two batches are not an epoch
            return
        self.val_acc_best(self.val_acc.compute())
        # The same on every rank (val_acc syncs its counts); sync_dist says so to Lightning.
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)
