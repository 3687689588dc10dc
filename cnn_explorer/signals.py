"""Signals that stop a run as SIGTERM does: Ctrl-C, and USR2 (SLURM's warning before a time limit, asked for by
submitit). Lightning stops a Trainer on SIGTERM at the end of the step in progress; these hand other signals to it.

Here rather than in callbacks/ because the SLURM launcher (:mod:`cnn_explorer.launchers`) uses them too, and nothing in
cnn_explorer imports callbacks.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException


class StoppedAtOnce(SIGTERMException):
    """A stop raised where the signal arrived, not at a step boundary (outside Lightning's loops, or on a second
    Ctrl-C): the state in memory may be half a step, so no checkpoint is saved from it."""


class SignalAsSigterm:
    """Within this context, signal ``signum`` stops the run as SIGTERM does: at the end of the step in progress, with
    ``last.ckpt`` saved (by ``callbacks.interruption.CheckpointOnSigterm``) and a ``SIGTERMException`` out of
    ``Trainer.fit``.

    For Ctrl-C (:class:`SigintAsSigterm`), and for USR2, which submitit has SLURM send a job before its time limit
    (:class:`cnn_explorer.launchers.ResumingSlurmLauncher` then requeues the job, which resumes from ``last.ckpt``).
    Lightning installs its SIGTERM handler only while a Trainer runs: then the signal is handed to it, and the step,
    or the checkpoint being written, finishes first. Elsewhere (building the net, loading data, between fit and
    test), and on a second signal, :class:`StoppedAtOnce` is raised at once. ``received`` counts the signals;
    ``previous`` is the handler this context replaced (restored at exit). Outside the main thread, where no handler
    can be installed, it does nothing.

    Args:
        signum: the signal, e.g. ``signal.SIGUSR2``.

    Example::

        with SignalAsSigterm(signal.SIGUSR2) as usr2:
            trainer.fit(module, datamodule)  # USR2: last.ckpt, then SIGTERMException
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.received = 0
        self.previous: Any = None
        self._installed = False
        self._sigterm_at_entry: Any = None

    def __enter__(self) -> SignalAsSigterm:
        if threading.current_thread() is threading.main_thread():
            self._sigterm_at_entry = signal.getsignal(signal.SIGTERM)
            self.previous = signal.signal(self.signum, self._on_signal)
            self._installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(self.signum, self.previous)
            self._installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        if self.received == 1 and sigterm_handler is not self._sigterm_at_entry and callable(sigterm_handler):
            sigterm_handler(signum, frame)  # a Trainer runs: it stops after the step, as on SIGTERM
            return
        raise StoppedAtOnce()


class SigintAsSigterm(SignalAsSigterm):
    """Ctrl-C (SIGINT) stops the run as SIGTERM does (:class:`SignalAsSigterm`): a checkpoint at the step boundary;
    a second Ctrl-C stops at once. Lightning's own Ctrl-C handling (``KeyboardInterrupt``: exit 1, no checkpoint) is
    never reached.

    Example::

        interrupts = SigintAsSigterm()
        try:
            with interrupts:
                trainer.fit(module, datamodule)
        except SIGTERMException:
            print("Ctrl-C" if interrupts.received else "SIGTERM")
    """

    def __init__(self) -> None:
        super().__init__(signal.SIGINT)
