"""Wall-clock seconds per training epoch (training plus its validation), logged as ``time/epoch_s``, and the
view callbacks' share of them, ``time/views_s``."""

from __future__ import annotations

import time

import lightning as L

from callbacks.base import views_ledger


class EpochTimer(L.Callback):
    """Logs ``time/epoch_s``: from the start of a training epoch to its end, validation included; and, where the
    trainer has view callbacks, ``time/views_s``: the seconds they spent drawing in that epoch (their shared
    :class:`~callbacks.base.TimeLedger`, global rank zero's, where they draw), so a user sees what the views cost.

    Lightning runs the end-of-epoch validation before ``on_train_epoch_end``, and train.py puts this callback
    after the view callbacks, whose work happens in that hook too: the figure is what a user waits per epoch
    (only the checkpoint writes, which Lightning runs last, fall outside it). analyze.py reads it from the
    metrics CSV for the comparison table.

    Example::

        Trainer(callbacks=[FilterGridCallback(), EpochTimer()])
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._views_spent = 0.0  # the ledger's seconds when the epoch started

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        ledger = views_ledger(trainer)
        self._views_spent = ledger.spent if ledger is not None else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        # sync_dist: under DDP, the mean over ranks (they wait for each other at every step anyway).
        pl_module.log("time/epoch_s", time.perf_counter() - self._start, on_epoch=True, sync_dist=True)
        ledger = views_ledger(trainer)
        if ledger is not None:
            # Rank zero's: the views draw there, while the other ranks wait at their next collective.
            pl_module.log("time/views_s", ledger.spent - self._views_spent, on_epoch=True, rank_zero_only=True)
