"""Wall-clock seconds per training epoch (training plus its validation), logged as ``time/epoch_s``."""

from __future__ import annotations

import time

import lightning as L


class EpochTimer(L.Callback):
    """Logs ``time/epoch_s``: from the start of a training epoch to its end, validation included.

    Lightning runs the end-of-epoch validation before ``on_train_epoch_end``, and train.py puts this callback
    after the view callbacks, whose work happens in that hook too: the figure is what a user waits per epoch
    (only the checkpoint writes, which Lightning runs last, fall outside it). analyze.py reads it from the
    metrics CSV for the comparison table.

    Example::

        Trainer(callbacks=[EpochTimer()])
    """

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            # sync_dist: under DDP, the mean over ranks (they wait for each other at every step anyway).
            pl_module.log("time/epoch_s", time.perf_counter() - self._start, on_epoch=True, sync_dist=True)
