"""Train a CNN on CIFAR-10 and test its best checkpoint.

    python train.py model=small                                  # 20 epochs, torchvision CIFAR-10
    python train.py data=cifar10_folder data.source.root=DIR     # offline, an ImageFolder copy
    python train.py -m model=small,medium,deep                   # a sweep, one run dir per job
    python train.py ckpt_path=RUN_DIR/checkpoints/last.ckpt      # resume an interrupted run
    tensorboard --logdir outputs --samples_per_plugin images=200

Reads top to bottom: compose config -> validate -> build data, net, module, callbacks, loggers ->
fit -> test the best checkpoint.
"""

from __future__ import annotations

import logging
import sys

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.config import check_resume, register_resolvers, validate_train_config
from cnn_explorer.errors import UserError
from cnn_explorer.models import count_parameters
from cnn_explorer.module import Classifier

log = logging.getLogger("train")
register_resolvers()  # before @hydra.main composes conf/hydra/default.yaml, which uses them


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model, then test the best checkpoint; returns the final metrics by name."""
    validate_train_config(cfg)
    keep_freed_memory()
    if cfg.ckpt_path:
        check_resume(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model.net)
    log.info("model %s: %s parameters", type(net).__name__, f"{count_parameters(net):,}")
    module = Classifier(
        net,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        num_classes=cfg.data.num_classes,
        channels_last=cfg.model.get("channels_last", False),
        compile=cfg.model.get("compile", False),
    )
    # Callbacks and loggers are named dicts so one can be tuned or dropped: ~callbacks.saliency
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=cfg.run_dir
    )

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint was kept (no ModelCheckpoint?): testing the final weights")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update(results[0])
        log.info("test/acc %.4f of %s", metrics["test/acc"], best or "the final weights")
    log.info("run dir: %s", cfg.run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
