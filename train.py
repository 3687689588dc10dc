"""Train a CNN on CIFAR-10 (or a detector: task=detection) and test its best checkpoint.

    python train.py model=small                                  # 20 epochs, torchvision CIFAR-10
    python train.py data=cifar10_folder data.source.root=DIR     # offline, an ImageFolder copy
    python train.py -m model=small,medium,deep                   # a sweep, one run dir per job
    python train.py ckpt_path=RUN_DIR/checkpoints/last.ckpt      # resume an interrupted run (Ctrl-C, SIGTERM)
    python train.py task=detection                               # Penn-Fudan pedestrians, Faster R-CNN, mAP
    tensorboard --logdir outputs --samples_per_plugin images=200

Reads top to bottom: compose config -> validate -> build data, net, module, callbacks, loggers ->
fit -> test the best checkpoint. ``main`` records how the run ended in ``<run dir>/run_status.json``.
"""

from __future__ import annotations

import errno
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
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torch import nn

from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.checkpoints import save_initial_weights
from cnn_explorer.config import (
    check_resume,
    hyperparameters,
    register_resolvers,
    resume_command,
    validate_train_config,
)
from cnn_explorer.detection.module import Detector
from cnn_explorer.errors import TrainingDiverged, UserError
from cnn_explorer.hydra_callbacks import remove_refused_run
from cnn_explorer.models import count_parameters
from cnn_explorer.module import Classifier
from cnn_explorer.run_status import STATUS_FILE, write_status
from cnn_explorer.signals import SigintAsSigterm

log = logging.getLogger("train")
register_resolvers()  # before @hydra.main composes conf/hydra/default.yaml, which uses them
EXIT_SIGTERM = 128 + 15  # the shell's status for a process ended by SIGTERM: schedulers read it as "killed"
EXIT_SIGINT = 128 + 2  # ... and by Ctrl-C
# Each task's headline metrics (conf/task/<task>.yaml selects the task): logged when the run ends, recorded in
# run_status.json and TensorBoard's HParams tab.
HEADLINE = {
    "classification": ("val/acc_best", "test/acc", "test/loss"),
    "detection": ("val/map_best", "test/map", "test/map_50"),
}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model, then test the best checkpoint; returns the final metrics by name."""
    validate_train_config(cfg)  # again here: sweep jobs and in-process callers skip the Hydra callback
    keep_freed_memory()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.ckpt_path:
        log.info("%s", check_resume(cfg))  # says whether the run continues in its own run dir or a new one
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data, "data")
    net = build(cfg.model.net, "model.net")
    if not cfg.ckpt_path and rank_zero_only.rank == 0:
        save_initial_weights(net, Path(cfg.run_dir))  # what training starts from: the report measures the change
    log.info("model %s: %s parameters", type(net).__name__, f"{count_parameters(net):,}")
    module = build_module(cfg, net)
    # Callbacks and loggers are named dicts so one can be tuned or dropped: ~callbacks.attributions
    callbacks = [build(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items() if c is not None]
    if cfg.trainer.get("enable_progress_bar") is False:  # the bar off: its callback goes too (Lightning refuses both)
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
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
        test_metric = HEADLINE[task(cfg)][1]
        log.info("%s %.4f of %s", test_metric, metrics[test_metric], best or "the final weights")
    log_hyperparameters(trainer, cfg, net, metrics)
    log.info("run dir: %s", cfg.run_dir)
    return metrics


def task(cfg: DictConfig) -> str:
    """The run's task (``classification`` when the config predates tasks).

    Raises:
        UserError: on a task this script does not know.
    """
    name = cfg.get("task") or "classification"
    if name not in HEADLINE:
        raise UserError(f"task={name} is not a task of this project; choose one of {', '.join(HEADLINE)}")
    return name


def build_module(cfg: DictConfig, net: nn.Module) -> L.LightningModule:
    """The task's LightningModule around ``net``: a :class:`Classifier` or a :class:`Detector`."""
    optimizer = build(cfg.model.optimizer, "model.optimizer")
    scheduler = build(cfg.model.scheduler, "model.scheduler") if cfg.model.get("scheduler") else None
    if task(cfg) == "detection":
        return Detector(net, optimizer=optimizer, scheduler=scheduler)
    return Classifier(
        net,
        optimizer=optimizer,
        scheduler=scheduler,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.model.get("channels_last", False),
        compile=cfg.model.get("compile", False),
        label_smoothing=cfg.model.get("label_smoothing", 0.0),
        tta=cfg.model.get("tta", "none"),
    )


def log_hyperparameters(trainer: L.Trainer, cfg: DictConfig, net: nn.Module, metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HParams tab: the run's settings with its final metrics (``hparams/...`` scalars, apart
    from the curves: Lightning writes them as points at step 0)."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    params = hyperparameters(cfg, choices, count_parameters(net))
    final = {
        f"hparams/{name.replace('/', '_')}": value
        for name, value in metrics.items()
        if name in HEADLINE[task(cfg)] or name.startswith("explain/")
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
    if cfg.get("threads") is None and "joblib" in str(hydra_cfg.launcher.get("_target_", "")).lower():
        # Jobs running side by side share the cores: n jobs with every core each would oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(hydra_cfg.launcher.n_jobs))))
    if rank_zero_only.rank != 0:  # under DDP the other ranks run this script too: rank zero speaks for the run
        log.setLevel(logging.WARNING)
        with SigintAsSigterm():
            return optimized(cfg, train(cfg))
    write_status(run_dir, "running")
    interrupts = SigintAsSigterm()  # Ctrl-C: a checkpoint at the step boundary, like SIGTERM
    try:
        with interrupts:
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
            f"{last} holds the last saved state of training; resume exactly from there with: "
            f"{resume_command(last, run_dir)}"
            if last
            else "it stopped before its first checkpoint: run it again"
        )
        if interrupts.received:  # Ctrl-C ends a sweep too: the user stopped it, not one job
            return fail(run_dir, "interrupted", f"stopped by Ctrl-C (SIGINT): {resume}", False, EXIT_SIGINT)
        return fail(
            run_dir, "interrupted", f"stopped by SIGTERM (a scheduler or kill): {resume}", sweep_job, EXIT_SIGTERM
        )
    except UserError as err:
        if not sweep_job and not any(run_dir.glob("checkpoints/*.ckpt")) and remove_refused_run(run_dir):
            log.error("%s", err)
            sys.exit(1)  # a run that never started leaves nothing behind
        return fail(run_dir, "failed", str(err), sweep_job)
    except Exception as err:
        if no_space_left(err):
            return fail(run_dir, "failed", disk_full_message(cfg, err), sweep_job)
        if not sweep_job:
            write_status(run_dir, "failed", f"{type(err).__name__}: {err}")
            raise  # a bug, not a user's mistake: the traceback is what to report
        # In a sweep the other jobs go on: the traceback goes to this job's train.log, the summary lists the job.
        log.exception("the job failed")
        return fail(run_dir, "failed", f"{type(err).__name__}: {err} (traceback in {run_dir / 'train.log'})", True)
    write_status(run_dir, "completed", **{k: v for k, v in metrics.items() if k in HEADLINE[task(cfg)][:2]})
    return optimized(cfg, metrics)


def optimized(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """The value of ``cfg.optimized_metric`` (for a sweeper; NaN if the run did not log it)."""
    return float(metrics.get(cfg.get("optimized_metric") or "val/acc_best", math.nan))


def fail(run_dir: Path, status: str, message: str, sweep_job: bool, exit_status: int = 1) -> float:
    """Log and record how the run ended; exit with ``exit_status``, except in a sweep, whose other jobs go on:
    the job returns NaN (a sweeper such as Optuna records a failed trial) and the sweep's summary lists it."""
    log.error("%s", message)
    try:
        write_status(run_dir, status, message)
    except OSError as err:  # a full disk or a read-only run dir: write_status left the previous status as it was
        log.error("(%s/%s still says what it said before: %s)", run_dir, STATUS_FILE, err.strerror or err)
    if not sweep_job:
        sys.exit(exit_status)
    return math.nan


def no_space_left(err: BaseException) -> list[OSError]:
    """The "no space left on device" errors behind ``err``, outermost first (Lightning's checkpoint writer raises a
    second one while it cleans up after the first); empty for any other error."""
    found, seen = [], set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            found.append(cause)
        cause = cause.__cause__ or cause.__context__
    return found


def disk_full_message(cfg: DictConfig, err: BaseException) -> str:
    """Remove the file a full disk cut short (a checkpoint being copied into the run dir), and say where and what
    to do; makes room for the status and the log, too."""
    run_dir = Path(cfg.run_dir).resolve()
    for partial in {Path(e.filename2).resolve() for e in no_space_left(err) if e.filename2}:
        if partial.is_relative_to(run_dir) and partial.is_file():
            partial.unlink()  # this run was writing it: a truncated copy, no checkpoint
    last = last_checkpoint(cfg)
    kept = (
        f" {last} holds the last saved state of training; resume from it, once there is room, with: "
        f"{resume_command(last, Path(cfg.run_dir))}"
        if last
        else ""
    )
    return (
        f"no space left on the device that holds the run dir {cfg.run_dir}: free some space there, or start the "
        f"run on another disk with hydra.run.dir=<folder there>.{kept}"
    )


if __name__ == "__main__":
    main()
