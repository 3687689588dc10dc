"""Optuna pruning for a sweep job: report val/acc to the job's trial every epoch, stop the run when pruned."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import optuna

from cnn_explorer.errors import UserError
from cnn_explorer.optuna_sweeper import PRUNED_AT, open_trial, stored

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Reports ``monitor`` at the end of every training epoch's validation to the job's Optuna trial (the study's
    storage, so the job may run in another process or on another machine than the sweeper), and stops training
    when the study's pruner prunes the trial (Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter
    Optimization Framework", KDD).

    A pruned run stops at the end of that epoch like an early-stopped one: its checkpoints are written, its best
    checkpoint is tested, and it completes. The callback marks the trial (user attribute ``pruned_at_epoch``), and
    the sweeper (:class:`cnn_explorer.optuna_sweeper.OptunaSweeper`) records it as pruned.
    Rank zero reports and asks the pruner; under DDP every rank then stops together.

    Args:
        trial: where the job's trial is, ``{storage: URL, study: NAME, number: N}``, as the sweeper sets
            ``optuna_trial``; null (a run outside the sweeper): the callback does nothing.
        pruner: the study's pruner (conf/hparams_search/optuna.yaml passes ``${hydra:sweeper.pruner}``); null
            reports without pruning.
        monitor: the per-epoch metric to report; the step is the epoch (0 first).

    Raises:
        UserError: when ``monitor`` was not logged in an epoch's validation.

    Example::

        Trainer(callbacks=[OptunaPruning({"storage": "sqlite:///sweep/optuna.db", "study": "s", "number": 3},
                                         optuna.pruners.MedianPruner())])
    """

    def __init__(
        self,
        trial: Mapping[str, Any] | None,
        pruner: optuna.pruners.BasePruner | None = None,
        monitor: str = "val/acc",
    ) -> None:
        self.ref = trial
        self.pruner = pruner
        self.monitor = monitor
        self.trial: optuna.Trial | None = None
        self.pruned_at: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ref is None or stage != "fit" or not trainer.is_global_zero or self.trial is not None:
            return
        trial = open_trial(self.ref, self.pruner)
        state = stored(trial.study, trial.number).state
        if state.is_finished():  # a sweep job resumed by hand after its trial was recorded: nothing to report to
            log.warning("Optuna trial %d is %s already: this run does not report to it", trial.number, state.name)
            return  # the other ranks still broadcast with rank zero, which then never prunes
        self.trial = trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ref is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)  # the same on every rank: each raises, none waits
        if value is None:
            raise UserError(
                f"callbacks.optuna_pruning: monitor={self.monitor} was not logged in validation; choose one of "
                f"{', '.join(sorted(trainer.callback_metrics)) or 'the metrics the module logs'}"
            )
        prune = False
        if self.trial is not None:
            self.trial.report(float(value), step=trainer.current_epoch)
            prune = self.trial.should_prune()
        prune = trainer.strategy.broadcast(prune)  # rank zero decides; every rank stops at the same epoch
        if prune and self.pruned_at is None:
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
            if self.trial is not None:
                self.trial.set_user_attr(PRUNED_AT, trainer.current_epoch)
                log.info(
                    "Optuna pruned trial %d at epoch %d (%s %.4f): training stops after this epoch",
                    self.trial.number,
                    trainer.current_epoch,
                    self.monitor,
                    float(value),
                )
