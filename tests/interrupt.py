"""Callbacks that interrupt a run the way the world does: a stop after an epoch, a signal at a given step,
weights that turn into NaN. Used through Hydra overrides (``+callbacks.stop._target_=tests.interrupt...``)."""

import os
import signal

import lightning as L
import torch


class StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class SignalAtStep(L.Callback):
    """Sends ``signal_name`` (SIGTERM, SIGKILL) to this process once ``global_step`` reaches ``step``."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step, self.signal = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class CrashAtStep(L.Callback):
    """Raises a ``RuntimeError`` (a bug, not a user's mistake) once ``global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"a bug at step {self.step}")


class PoisonWeightsAtEpoch(L.Callback):
    """Sets the first conv's weights to NaN when ``epoch`` starts: the loss diverges in that epoch's first step."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d)).weight.fill_(float("nan"))
