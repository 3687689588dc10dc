"""What every view callback shares: a cadence, a time budget, rank-zero logging to TensorBoard, the net, the
probe set."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import nn

from cnn_explorer.data import ProbeSet
from cnn_explorer.errors import BadArgument, check_positive
from cnn_explorer.render.figures import figure_to_image
from cnn_explorer.render.fonts import figure_names, undrawable_note


class TimeLedger:
    """The seconds the view callbacks of one trainer have spent drawing since fitting started, and when each
    last drew: shared, so that together they keep to one time budget."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spent = 0.0
        self.last_drawn: dict[L.Callback, int] = {}  # view -> the epoch it last drew
        self.last_cost: dict[L.Callback, float] = {}  # view -> seconds its last drawing took

    def training_time(self) -> float:
        """Seconds since fitting started, less the views' own."""
        return time.perf_counter() - self.start - self.spent


class TensorBoardImageCallback(L.Callback):
    """Base class: decides when to run and where images go; subclasses decide what to draw.

    A view that draws at the end of a training epoch implements :meth:`draw`; it is called where :meth:`draws`
    (the epoch is one of the callback's, this is global rank zero, and the time budget allows it). A view that
    reads the validation loop uses :meth:`due` (true on every rank, so collective operations line up under
    DDP), and draws under :meth:`spending` where :meth:`active` and :meth:`within_budget`. With no TensorBoard
    logger the callback warns once and logs nothing (no files, no crash).

    The time budget keeps the views cheap whatever the hardware. The views of one trainer share one
    :class:`TimeLedger`: a view draws only while the time all of them have spent, with what this view took
    last time, stays within its ``time_budget`` of the rest of the run's time. On a CPU, where an epoch takes
    half a minute, the light views draw most epochs; on a fast GPU, every few epochs. When the budget is tight
    they take turns (the one that drew longest ago first). The first epoch always draws, so every view shows
    once.

    Args:
        every_n_epochs: run after epochs ``n - 1, 2n - 1, ...`` (1 = every epoch).
        time_budget: at most this fraction of the training time spent drawing by all views together
            (0.05: 5%); None: this view draws whenever it is due (its time still counts against the others').

    Raises:
        BadArgument: (a ``ValueError``) if ``every_n_epochs`` is not a positive integer or ``time_budget`` is
            not a positive fraction.
    """

    draws_last_epoch = False
    """Draw after the run's last epoch whatever the cadence and the budget say (the heavy end-of-run checks)."""

    def __init__(self, every_n_epochs: int = 1, time_budget: float | None = None) -> None:
        check_positive(every_n_epochs=every_n_epochs)
        if time_budget is not None and not 0 < time_budget <= 1:
            raise BadArgument(f"time_budget must be a fraction in (0, 1] or None, got {time_budget!r}")
        self.every_n_epochs, self.time_budget = every_n_epochs, time_budget
        self._writer = None
        self._ledger: TimeLedger | None = None  # shared by the trainer's views from on_train_start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Hooks run in the order of trainer.callbacks: the first view opens the ledger, the others join it.
        first = view_callbacks(trainer)[0]
        self._ledger = TimeLedger() if first is self else first._ledger

    def within_budget(self, trainer: L.Trainer) -> bool:
        """Whether this view may draw now: always in the first epoch and without a budget; else if the views'
        time together, with what this view took last time, stays within ``time_budget`` of the training time,
        and no other view that is due this epoch drew longer ago than this one (it goes first)."""
        ledger = self._ledger
        if self.time_budget is None or ledger is None or trainer.current_epoch == 0:
            return True
        if ledger.spent + ledger.last_cost.get(self, 0.0) > self.time_budget * ledger.training_time():
            return False
        mine = ledger.last_drawn.get(self, -1)
        others = (view for view in view_callbacks(trainer) if view is not self)
        waiting = (view for view in others if view.time_budget is not None and view.due(trainer))
        return not any(ledger.last_drawn.get(view, -1) < mine for view in waiting)

    @contextmanager
    def spending(self, trainer: L.Trainer) -> Iterator[None]:
        """Count the time of the body against the views' shared time budget."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._ledger is not None:  # None in a test run without fitting: nothing to share
                cost = time.perf_counter() - start
                self._ledger.spent += cost
                self._ledger.last_cost[self], self._ledger.last_drawn[self] = cost, trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.draws(trainer):
            with self.spending(trainer):
                self.draw(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw and log this view after a training epoch (subclasses that draw then)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None:
            rank_zero_warn(
                f"{type(self).__name__} logs images to TensorBoard, but the trainer has no TensorBoardLogger"
            )
            self._writer = None
        else:
            self._writer = tensorboard.experiment  # a dummy on ranks other than zero

    def due(self, trainer: L.Trainer) -> bool:
        """A TensorBoard writer, not Lightning's sanity check, and the current epoch is one of this callback's."""
        return (
            self._writer is not None
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def draws(self, trainer: L.Trainer) -> bool:
        """:meth:`due`, rank zero and :meth:`within_budget`: this epoch is one of the callback's, this process
        logs images, and the time budget allows it; or, with :attr:`draws_last_epoch`, the run's last epoch."""
        if self.draws_last_epoch and last_epoch(trainer) and self.active(trainer):
            return True
        return self.due(trainer) and trainer.is_global_zero and self.within_budget(trainer)

    def active(self, trainer: L.Trainer) -> bool:
        """A TensorBoard writer, global rank zero, not in the sanity check: where images are drawn and logged."""
        return self._writer is not None and trainer.is_global_zero and not trainer.sanity_checking

    def log_figure(self, trainer: L.Trainer, tag: str, figure: Figure) -> None:
        """Render a matplotlib figure and log it as an image at the current epoch (TensorBoard's step axis is
        the epoch for every scalar and image of a run: see callbacks.tensorboard_logger)."""
        self._writer.add_image(tag, figure_to_image(figure), global_step=trainer.current_epoch)


def view_callbacks(trainer: L.Trainer) -> list[TensorBoardImageCallback]:
    """The trainer's view callbacks, in the order their hooks run."""
    return [cb for cb in trainer.callbacks if isinstance(cb, TensorBoardImageCallback)]


def views_ledger(trainer: L.Trainer) -> TimeLedger | None:
    """The :class:`TimeLedger` the trainer's views share; None without views or before fitting starts."""
    views = view_callbacks(trainer)
    return views[0]._ledger if views else None


def last_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch ending now is the run's last: ``max_epochs`` reached, or a callback asked to stop."""
    return trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop


def lightning_net(pl_module: L.LightningModule) -> nn.Module:
    """The plain net inside the LightningModule (``pl_module.net``), not a strategy wrapper around it."""
    return getattr(pl_module, "net", pl_module)


def check_layer_names(net: nn.Module, layers: list[str] | None, argument: str) -> None:
    """Check, before the first epoch, that every name in ``layers`` is a submodule of ``net``.

    Raises:
        BadArgument: naming ``argument`` and listing the layers the net has.
    """
    modules = dict(net.named_modules())
    unknown = [name for name in layers or [] if name not in modules]
    if unknown:
        available = [name for name in modules if name]
        raise BadArgument(f"{argument}: unknown layer(s) {unknown}; {type(net).__name__} has {available}")


def probe_set(trainer: L.Trainer, per_class: int) -> ProbeSet | None:
    """The DataModule's fixed probe set, or None (after one warning) when the trainer has no DataModule with one."""
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "probe_set"):
        rank_zero_warn("view callbacks need an ImageClassificationDataModule (trainer.fit(..., datamodule=...))")
        return None
    return datamodule.probe_set(per_class)


def class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    """The DataModule's class names, or ``"0", "1", ...`` without them."""
    names = getattr(trainer.datamodule, "classes", None)
    return list(names) if names else [str(i) for i in range(num_classes)]


def figure_class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    """:func:`class_names` as figures show them: ``class <index>`` for a name no installed font can draw (it would
    be a row of boxes), with a warning that says so (once)."""
    names = class_names(trainer, num_classes)
    if note := undrawable_note(names):
        _warn_once(note)
    return figure_names(names)


@functools.cache
def _warn_once(message: str) -> None:
    """``rank_zero_warn`` a message once per process, however many views draw the classes."""
    rank_zero_warn(message)
