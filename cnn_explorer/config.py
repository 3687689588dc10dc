"""Config checks and OmegaConf resolvers shared by train.py and analyze.py (no Hydra import here)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnn_explorer.errors import UserError

SAVED_CONFIG = Path(".hydra") / "config.yaml"
SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path:
    """A run's checkpoints live in ``<run dir>/checkpoints/``; this returns ``<run dir>``."""
    return Path(ckpt_path).resolve().parent.parent


def register_resolvers() -> None:
    """Resolvers used by conf/hydra/default.yaml so that a resumed run writes into its own run dir.

    ``${resume_dir:${ckpt_path},<new dir>}`` is the checkpoint's run dir when resuming, else the new dir;
    ``${resume_subdir:${ckpt_path}}`` keeps the original ``.hydra`` config and puts the resumed run's
    config beside it, under ``.hydra/resumed-<time>``.
    """
    if not OmegaConf.has_resolver("resume_dir"):
        OmegaConf.register_new_resolver(
            "resume_dir", lambda ckpt, new: str(run_dir_of_checkpoint(ckpt)) if ckpt else new
        )
    if not OmegaConf.has_resolver("resume_subdir"):
        OmegaConf.register_new_resolver(
            "resume_subdir",
            lambda ckpt: f".hydra/resumed-{datetime.now():%Y-%m-%d_%H-%M-%S}" if ckpt else ".hydra",
            use_cache=True,  # one timestamp per run, however often it is resolved
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Reject settings Lightning or torch would accept silently or fail on obscurely.

    Raises:
        UserError: naming the key and what it must be.
    """
    epochs = cfg.trainer.get("max_epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs <= 0:
        raise UserError(f"trainer.max_epochs must be a positive whole number of epochs, got {epochs!r}")
    lr = cfg.model.optimizer.get("lr")
    if lr is not None and not lr > 0:
        raise UserError(f"model.optimizer.lr must be a positive learning rate, got {lr!r}")


def check_resume(cfg: DictConfig) -> None:
    """When ``ckpt_path`` is set: the file exists and the run is resumed with the model and data it had.

    Raises:
        UserError: if the checkpoint is missing, or the composed ``model``/``data`` differ from the run's
            saved config (the message lists the original overrides to repeat).
    """
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} does not exist; give a checkpoint such as <run dir>/checkpoints/last.ckpt"
        )
    saved_path = run_dir_of_checkpoint(ckpt) / SAVED_CONFIG
    if not saved_path.is_file():
        return  # a checkpoint from elsewhere: nothing to compare with
    saved = OmegaConf.load(saved_path)
    for key in ("model", "data"):
        if OmegaConf.to_container(saved[key]) != OmegaConf.to_container(cfg[key], resolve=False):
            overrides_path = run_dir_of_checkpoint(ckpt) / SAVED_OVERRIDES
            overrides = OmegaConf.load(overrides_path) if overrides_path.is_file() else []
            original = " ".join(o for o in overrides if not o.startswith("ckpt_path="))
            raise UserError(
                f"{ckpt} was trained with a different '{key}' config than this command composes. "
                f"Resume with the original overrides: python train.py {original} ckpt_path={cfg.ckpt_path}"
            )
