"""The LightningModule: a plain ``nn.Module`` net trained with cross-entropy, accuracy per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cnn_explorer.augment import TTA_MODES, tta_logits
from cnn_explorer.errors import TrainingDiverged

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
# Where the training sums were kept before EpochSums: torchmetrics states, in older runs' checkpoints.
_OLD_TRAIN_STATES = (
    *("train_loss.mean_value", "train_loss.weight"),
    *("train_acc.tp", "train_acc.fp", "train_acc.tn", "train_acc.fn"),
)


@dataclass
class EpochSums:
    """A training epoch's running sums, kept on the device: what ``train/loss`` and ``train/acc`` are computed from.

    Adding a batch queues five small device operations and reads nothing back (torchmetrics' updates cost several
    times that in Python per step, issue 23); the figures are read once, at the epoch's end.

    Attributes:
        loss: ``[]`` float32, the loss summed over images (each batch's mean loss times its size).
        correct: ``[]`` int64, images whose largest logit is at their label.
        images: images added (a Python int: counting them needs no device operation).
    """

    loss: torch.Tensor
    correct: torch.Tensor
    images: int = 0

    @classmethod
    def zeros(cls, device: torch.device | str) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``loss`` ``[]`` its mean loss, ``logits`` ``[N, C]``, ``labels`` ``[N]``."""
        n = len(labels)
        self.loss.add_(loss.detach(), alpha=n)  # the batch's mean once per image: a short last batch weighs its images
        self.correct.add_((logits.detach().argmax(1) == labels).sum())
        self.images += n

    def means(
        self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss over images and the accuracy, each ``[]`` on the device.

        Args:
            reduce: sums a tensor over the DDP ranks (``strategy.reduce(t, reduce_op="sum")``; it may work in place,
                so it gets new tensors): the figures are then the exact means over every rank's images.
        """
        counts = reduce(torch.stack((self.correct, torch.tensor(self.images, device=self.correct.device))))
        return reduce(self.loss.clone()) / counts[1], counts[0] / counts[1]

    def to(self, device: torch.device | str) -> EpochSums:
        return EpochSums(self.loss.to(device), self.correct.to(device), self.images)

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "correct": self.correct, "images": self.images}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EpochSums:
        return cls(state["loss"], state["correct"], int(state["images"]))


def first_nonfinite_step(losses: torch.Tensor, first_step: int) -> torch.Tensor:
    """The step of the first loss in ``losses`` that is NaN or infinite, else -1.

    Args:
        losses: ``[K]`` the losses of steps ``first_step, first_step + 1, ...``.

    Returns:
        ``[]`` int64 on ``losses``' device (not read back here: reading makes the caller wait for the device).
    """
    bad = ~torch.isfinite(losses)
    first = bad.to(torch.int32).argmax()  # argmax gives the first of equal maxima
    return torch.where(bad.any(), first + first_step, -1)


# The module's hooks that Lightning calls at every training step (trainer/call.py, _call_lightning_module_hook).
TRAINING_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


def skip_idle_hooks(instance: object, base: type, hooks: Iterable[str]) -> list[str]:
    """Set to ``None`` on ``instance`` each of ``hooks`` that its class leaves as ``base``'s (hooks that do nothing);
    returns their names.

    Lightning calls each per-batch hook of the module and of every callback at every batch, overridden or not,
    through a dispatcher that formats a profiler name and enters a context around it: a few µs per call, ~40 calls
    per training step with the minimal callbacks, more than a small net's own step costs (issue 23). It skips a hook
    that is not callable. The class, and the hooks it overrides, are left as they are.
    """
    idle = [name for name in hooks if getattr(type(instance), name, None) is getattr(base, name)]
    for name in idle:
        object.__setattr__(instance, name, None)  # nn.Module's __setattr__ would do the same, with more checks
    return idle


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
        skip_idle_hooks(self, L.LightningModule, TRAINING_STEP_HOOKS)  # no-ops Lightning would call at every step

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name before and after every hook it calls, ~30 times a training step, and
        # nn.Module's __setattr__ first checks each value against Parameter, Module and Buffer (Python-level
        # isinstance checks, issue 23). A hook's name is none of those.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

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
    summed on the device at each step (:class:`EpochSums`) and logged once, at the epoch's end: no ``self.log``,
    no torchmetrics update and no read from the device per step.

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
        check_finite_every: training steps between two reads of their losses by the non-finite watch.
        label_smoothing: of the training loss only (Szegedy et al. 2016): ``train/loss`` is the smoothed loss,
            ``val/loss`` and ``test/loss`` stay plain cross-entropy, comparable between models.
        tta: test-time augmentation of ``test/loss`` and ``test/acc`` (:func:`.augment.tta_logits`): ``none``,
            ``flip`` or ``flip_translate``. Not of validation: ``val/acc`` (which picks the best checkpoint) stays
            one plain forward per image, comparable between models and 2-6 times cheaper.

    Raises:
        ValueError: on a ``label_smoothing`` outside [0, 1) or an unknown ``tta``.
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
        label_smoothing: float = 0.0,
        tta: str = "none",
    ) -> None:
        super().__init__(net, optimizer, scheduler)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.label_smoothing, self.tta = label_smoothing, tta
        self.check_finite_every = check_finite_every
        # The losses since the last finiteness check (detached, on the device) and the global step of the first.
        self._unchecked_losses: list[torch.Tensor] = []
        self._unchecked_from = 0
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # Training runs through a compiled copy of the forward; self.net stays the eager module the views hook
        # into (forward hooks inside a compiled graph do not give autograd paths to a layer's output). The
        # compiled wrapper shares the parameters and is kept out of the module tree, so the state_dict and
        # checkpoints are unchanged.
        object.__setattr__(self, "_train_net", torch.compile(self.net) if compile else self.net)
        # The training epoch's running sums go into every checkpoint (on_save_checkpoint), so a checkpoint taken
        # mid-epoch (on SIGTERM) carries them and the resumed epoch's figures cover every batch of it. Not buffers:
        # DDP would overwrite every rank's with rank zero's at each forward (broadcast_buffers).
        self.train_sums: EpochSums | None = None
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
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        # Summed on the device and logged once, at the epoch's end (on_train_epoch_end): a self.log per step, even
        # with on_step=False, costs Lightning ~1 ms of Python (it moves its whole result collection to the device
        # at every call), more than a small net's forward and backward (issue 23; tools/profile_step.py).
        if self.train_sums is None:
            self.train_sums = EpochSums.zeros(loss.device)
        self.train_sums.add(loss, logits, labels)
        # Kept, not checked: checking reads the device, which would make every step wait for the GPU.
        if not self._unchecked_losses:
            self._unchecked_from = self.global_step
        self._unchecked_losses.append(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        if self.train_sums is None:  # no training step in this process
            return
        # The sums over the DDP ranks: every rank logs the same exact value (sync_dist says so to Lightning).
        loss, accuracy = self.train_sums.means(lambda sums: self.trainer.strategy.reduce(sums, reduce_op="sum"))
        self.log("train/loss", loss, sync_dist=True)
        self.log("train/acc", accuracy, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        # A new epoch starts from zero; an epoch resumed from a mid-epoch checkpoint keeps what it had summed.
        # (At this hook the batch counter still holds the previous epoch's count, or the restored one.)
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if 0 < done < self.trainer.num_training_batches and self.train_sums is not None:
            self.train_sums = self.train_sums.to(self.device)  # a checkpoint's, loaded on the CPU
        else:
            self.train_sums = EpochSums.zeros(self.device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if not self._unchecked_losses or not (last or len(self._unchecked_losses) >= self.check_finite_every):
            return
        losses, self._unchecked_losses = self._unchecked_losses, []
        # The largest over ranks: every rank checks after the same batches, so this collective lines up under DDP.
        bad_step = int(self.all_gather(first_nonfinite_step(torch.stack(losses), self._unchecked_from)).max())
        if bad_step >= 0:
            raise TrainingDiverged(epoch=self.current_epoch, step=bad_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.train_sums is not None:
            checkpoint["train_epoch_sums"] = self.train_sums.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        if all(key in state for key in _OLD_TRAIN_STATES):  # a checkpoint of the code before EpochSums
            old = {key: state.pop(key) for key in _OLD_TRAIN_STATES}
            correct, wrong = old["train_acc.tp"].sum().long(), old["train_acc.fn"].sum().long()
            self.train_sums = EpochSums(old["train_loss.mean_value"].float(), correct, int(correct + wrong))
        elif "train_epoch_sums" in checkpoint:
            self.train_sums = EpochSums.from_state_dict(checkpoint["train_epoch_sums"])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "val", self.val_loss, self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test", self.test_loss, self.test_acc)

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, mean_loss: MeanMetric, accuracy: MulticlassAccuracy
    ) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = tta_logits(self, images, self.tta) if stage == "test" else self(images)
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
