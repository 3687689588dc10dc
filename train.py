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
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.checkpoints import save_initial_weights
from cnn_explorer.config import (
    check_resume,
    created_run_dir,
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
    log.info("run dir: %s", cfg.run_dir)
    return metrics


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
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(cfg.run_dir)
    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    if rank_zero_only.rank != 0:  # under DDP the other ranks run this script too: rank zero speaks for the run
        log.setLevel(logging.WARNING)
        return train(cfg).get(cfg.get("optimized_metric") or "val/acc_best")
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
    return metrics.get(cfg.get("optimized_metric") or "val/acc_best")


def fail(run_dir: Path, status: str, message: str, sweep_job: bool, exit_status: int = 1) -> None:
    """Log and record how the run ended; exit with ``exit_status``, except in a sweep, whose other jobs go on
    (the sweep's summary lists this one and exits non-zero)."""
    log.error("%s", message)
    write_status(run_dir, status, message)
    if not sweep_job:
        sys.exit(exit_status)


if __name__ == "__main__":
    main()
