"""A resumable checkpoint when the run is stopped mid-training: SIGTERM (SLURM, Kubernetes, systemd), Ctrl-C, or USR2
(SLURM's warning before a time limit, asked for by submitit)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cnn_explorer.signals import StoppedAtOnce


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (or Ctrl-C, see :class:`cnn_explorer.signals.SigintAsSigterm`) during training, saves the run's
    state at the last finished step as ``<dirpath>/<filename>.ckpt``.

    Lightning turns SIGTERM into a ``SIGTERMException`` after the step in progress; this callback saves the
    whole training state then (weights, optimizer, schedule, loops, RNG and the DataModule's place in the epoch),
    so ``ckpt_path=<that file>`` continues exactly where the run stopped. train.py then exits with a non-zero
    status, so the scheduler does not record success. Nothing is saved during testing (the weights in memory
    are then the best checkpoint's, not the run's last state), nor on a :class:`StoppedAtOnce`.

    Args:
        dirpath: the checkpoint folder (the run's ``checkpoints/``).
        filename: file name without ``.ckpt``; ``last`` replaces the end-of-epoch ``last.ckpt``, the one file to
            resume from.

    Example::

        Trainer(callbacks=[CheckpointOnSigterm("runs/a/checkpoints")])
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.saved: Path | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or isinstance(exception, StoppedAtOnce):
            return
        if trainer.state.fn != "fit":
            return
        if trainer.sanity_checking or trainer.validating:
            rank_zero_warn("Stopped during validation: the last end-of-epoch checkpoint is the one to resume from")
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state, not just weights
        self.saved = self.path
