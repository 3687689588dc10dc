"""A resumable checkpoint when the run is stopped mid-training: SIGTERM (SLURM, Kubernetes, systemd) or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StoppedAtOnce(SIGTERMException):
    """A stop raised where the signal arrived, not at a step boundary (outside Lightning's loops, or on a second
    Ctrl-C): the state in memory may be half a step, so no checkpoint is saved from it."""


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (or Ctrl-C, see :class:`SigintAsSigterm`) during training, saves the run's state at the last
    finished step as ``<dirpath>/<filename>.ckpt``.

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


class SigintAsSigterm:
    """Within this context, Ctrl-C (SIGINT) stops the run as SIGTERM does: at the end of the step in progress,
    with ``last.ckpt`` saved by :class:`CheckpointOnSigterm` and a ``SIGTERMException`` out of ``Trainer.fit``.

    Lightning installs its SIGTERM handler only while a Trainer runs: then SIGINT is handed to it, and the step,
    or the checkpoint being written, finishes first. Elsewhere (building the net, loading data, between fit and
    test), and on a second Ctrl-C, :class:`StoppedAtOnce` is raised at once. Lightning's own Ctrl-C handling
    (``KeyboardInterrupt``: exit 1, no checkpoint) is never reached. ``received`` counts the Ctrl-Cs. Outside the
    main thread, where no handler can be installed, it does nothing.

    Example::

        interrupts = SigintAsSigterm()
        try:
            with interrupts:
                trainer.fit(module, datamodule)
        except SIGTERMException:
            print("Ctrl-C" if interrupts.received else "SIGTERM")
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: Any = None
        self._sigterm_at_entry: Any = None

    def __enter__(self) -> SigintAsSigterm:
        if threading.current_thread() is threading.main_thread():
            self._sigterm_at_entry = signal.getsignal(signal.SIGTERM)
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        if self.received == 1 and sigterm_handler is not self._sigterm_at_entry and callable(sigterm_handler):
            sigterm_handler(signum, frame)  # a Trainer runs: it stops after the step, as on SIGTERM
            return
        raise StoppedAtOnce()
