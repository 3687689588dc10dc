"""Train a CNN on CIFAR-10 and test its best checkpoint.

    python train.py model=small                                  # 20 epochs, torchvision CIFAR-10
    python train.py data=cifar10_folder data.source.root=DIR     # offline, an ImageFolder copy
    python train.py -m model=small,medium,deep                   # a sweep, one run dir per job
    python train.py ckpt_path=RUN_DIR/checkpoints/last.ckpt      # resume an interrupted run
    tensorboard --logdir outputs --samples_per_plugin images=200

Reads top to bottom: compose config -> validate -> build data, net, module, callbacks, loggers ->
fit -> test the best checkpoint. ``main`` records how the run ended in ``<run dir>/run_status.json``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torch import nn

from callbacks.epoch_timer import EpochTimer
from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.checkpoints import save_initial_weights
from cnn_explorer.config import (
    check_resume,
    created_run_dir,
    hyperparameters,
    register_resolvers,
    remove_new_run_dir,
    validate_train_config,
)
from cnn_explorer.errors import TrainingDiverged, UserError
from cnn_explorer.models import count_parameters
from cnn_explorer.module import Classifier
from cnn_explorer.run_status import write_status

log = logging.getLogger("train")
register_resolvers()  # before @hydra.main composes conf/hydra/default.yaml, which uses them
EXIT_SIGTERM = 128 + 15  # the shell's status for a process ended by SIGTERM: schedulers read it as "killed"


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model, then test the best checkpoint; returns the final metrics by name."""
    validate_train_config(cfg)  # again here: sweep jobs and in-process callers skip the Hydra callback
    keep_freed_memory()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.ckpt_path:
        check_resume(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data, "data")
    net = build(cfg.model.net, "model.net")
    if not cfg.ckpt_path and rank_zero_only.rank == 0:
        save_initial_weights(net, Path(cfg.run_dir))  # what training starts from: the report measures the change
    log.info("model %s: %s parameters", type(net).__name__, f"{count_parameters(net):,}")
    module = Classifier(
        net,
        optimizer=build(cfg.model.optimizer, "model.optimizer"),
        scheduler=build(cfg.model.scheduler, "model.scheduler") if cfg.model.get("scheduler") else None,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.model.get("channels_last", False),
        compile=cfg.model.get("compile", False),
    )
    # Callbacks and loggers are named dicts so one can be tuned or dropped: ~callbacks.attributions
    callbacks = [build(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items() if c is not None]
    # The epoch timer last (Lightning keeps this order, checkpoints aside): the time includes every view's work.
    callbacks.sort(key=lambda callback: isinstance(callback, EpochTimer))
    loggers = [build(c, f"logger.{name}") for name, c in (cfg.get("logger") or {}).items() if c is not None]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=cfg.run_dir
    )

    # weights_only: checkpoints are data; the safe loader refuses pickled objects that could run code.
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if cfg.test:
        best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor), "")
        if not best:
            log.warning("no best checkpoint was kept (no ModelCheckpoint with a monitor?): testing the final weights")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update(results[0])
        log.info("test/acc %.4f of %s", metrics["test/acc"], best or "the final weights")
    log_hyperparameters(trainer, cfg, net, metrics)
    log.info("run dir: %s", cfg.run_dir)
    return metrics


def log_hyperparameters(trainer: L.Trainer, cfg: DictConfig, net: nn.Module, metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HParams tab: the run's settings with its final metrics (``hparams/...`` scalars, apart
    from the curves: Lightning writes them as points at step 0)."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    params = hyperparameters(cfg, choices, count_parameters(net))
    final = {
        f"hparams/{name.replace('/', '_')}": value
        for name, value in metrics.items()
        if name in ("val/acc_best", "test/acc", "test/loss") or name.startswith("explain/")
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, final)


def build(node: DictConfig, key: str) -> Any:
    """``instantiate(node)``, with a constructor's message about a bad value shown as the message, naming ``key``.

    Raises:
        UserError: if the constructor raised one, or a ``TypeError``/``ValueError`` about its arguments.
    """
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError | ValueError):
            raise UserError(f"{key}: {cause}") from None
        raise


def last_checkpoint(cfg: DictConfig) -> Path | None:
    """``<run dir>/checkpoints/last.ckpt`` if it is there: advice about it is given only when it can be followed."""
    path = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(cfg.run_dir)
    hydra_cfg = HydraConfig.get()
    sweep_job = hydra_cfg.mode == RunMode.MULTIRUN
    if cfg.get("threads") is None and "joblib" in str(hydra_cfg.launcher.get("_target_", "")):
        # Jobs running side by side share the cores: n jobs with every core each would oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(hydra_cfg.launcher.n_jobs))))
    if rank_zero_only.rank != 0:  # under DDP the other ranks run this script too: rank zero speaks for the run
        log.setLevel(logging.WARNING)
        return optimized(cfg, train(cfg))
    write_status(run_dir, "running")
    try:
        metrics = train(cfg)
    except TrainingDiverged as err:
        last = last_checkpoint(cfg)
        kept = f"The last finite weights are in {last}." if last else "No checkpoint was written."
        message = (
            f"{err}. The likely cause is a learning rate too high for this model (model.optimizer.lr="
            f"{cfg.model.optimizer.get('lr')}): start a new run with a smaller one. {kept}"
        )
        return fail(run_dir, "diverged", message, sweep_job)
    except SIGTERMException:
        last = last_checkpoint(cfg)
        resume = (
            f"{last} holds the state at the last finished step; resume exactly from there with the same "
            f"overrides plus ckpt_path={last}"
            if last
            else "it stopped before its first checkpoint: run it again"
        )
        return fail(
            run_dir, "interrupted", f"stopped by SIGTERM (a scheduler or kill): {resume}", sweep_job, EXIT_SIGTERM
        )
    except UserError as err:
        if not sweep_job and created_run_dir(run_dir) and not any(run_dir.glob("checkpoints/*.ckpt")):
            log.error("%s", err)
            remove_new_run_dir(run_dir)  # a run that never started leaves nothing behind
            sys.exit(1)
        return fail(run_dir, "failed", str(err), sweep_job)
    except Exception as err:
        write_status(run_dir, "failed", f"{type(err).__name__}: {err}")
        raise
    write_status(run_dir, "completed", **{k: v for k, v in metrics.items() if k in ("val/acc_best", "test/acc")})
    return optimized(cfg, metrics)


def optimized(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """The value of ``cfg.optimized_metric`` (for a sweeper; NaN if the run did not log it)."""
    return float(metrics.get(cfg.get("optimized_metric") or "val/acc_best", math.nan))


def fail(run_dir: Path, status: str, message: str, sweep_job: bool, exit_status: int = 1) -> float:
    """Log and record how the run ended; exit with ``exit_status``, except in a sweep, whose other jobs go on:
    the job returns NaN (a sweeper such as Optuna records a failed trial) and the sweep's summary lists it."""
    log.error("%s", message)
    write_status(run_dir, status, message)
    if not sweep_job:
        sys.exit(exit_status)
    return math.nan


if __name__ == "__main__":
    main()
