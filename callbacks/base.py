"""What every view shares: when it draws (its cadence, the one gate), where it logs (TensorBoard, rank zero), the
net and the probe set.

A view is a Lightning callback that says when it draws (:attr:`View.when`: after a training epoch, after the
validation loop, at the end), what it draws and where it logs it. Whether it may draw now is one question,
:meth:`View.may_draw`; the answer comes from the trainer's :class:`~callbacks.schedule.ViewSchedule` where there is
one (the time budget, turn-taking), else from the view's cadence alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar, Literal

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import nn

from callbacks.tensorboard_logger import log_step
from cnn_explorer.data import ProbeSet
from cnn_explorer.errors import BadArgument, check_positive
from cnn_explorer.module import TRAINING_STEP_HOOKS, skip_idle_hooks
from cnn_explorer.render.figures import figure_to_image
from cnn_explorer.render.fonts import figure_names, undrawable_note

if TYPE_CHECKING:
    from callbacks.schedule import ViewSchedule

When = Literal["epoch", "validation", "end"]


class View(L.Callback):
    """Base class of the views: a cadence, one gate and a TensorBoard writer; logs scalars and text.

    A view with ``when = "epoch"`` implements :meth:`draw`, called after every training epoch it may draw in
    (by the trainer's :class:`~callbacks.schedule.ViewSchedule`, which times it, or, without one, by this class's
    ``on_train_epoch_end``). A view that draws at another time uses its own hooks, asks :meth:`may_draw` and draws
    inside :meth:`drawing`. With no TensorBoard logger the view warns once and logs nothing (no files, no crash).

    Args:
        every_n_epochs: draw after epochs ``n - 1, 2n - 1, ...`` (1 = every epoch).

    Raises:
        BadArgument: (a ``ValueError``) if ``every_n_epochs`` is not a positive integer.
    """

    when: ClassVar[When] = "epoch"
    """When the view draws: after a training epoch (validation included), after the validation loop, at the end."""

    at_last_epoch: ClassVar[bool] = False
    """Also draw after the run's last epoch, whatever the cadence and the time budget say (end-of-run checks)."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        check_positive(every_n_epochs=every_n_epochs)
        self.every_n_epochs = every_n_epochs
        self._writer = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None:
            rank_zero_warn(f"{type(self).__name__} logs to TensorBoard, but the trainer has no TensorBoardLogger")
            self._writer = None
        else:
            self._writer = tensorboard.experiment  # a dummy on ranks other than zero

    def due(self, trainer: L.Trainer) -> bool:
        """A TensorBoard writer, not Lightning's sanity check, and the epoch is one of this view's (its cadence, or
        the last epoch with :attr:`at_last_epoch`). The same on every rank, so collective operations line up."""
        if self._writer is None or trainer.sanity_checking:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or (self.at_last_epoch and last_epoch(trainer))

    def may_draw(self, trainer: L.Trainer) -> bool:
        """The one gate: :meth:`due`, global rank zero (where views draw), and the trainer's schedule allows it
        (the time budget and the turn-taking); without a schedule, whenever due."""
        if not (trainer.is_global_zero and self.due(trainer)):
            return False
        schedule = schedule_of(trainer)
        return schedule is None or schedule.allows(self, trainer)

    @contextmanager
    def drawing(self, trainer: L.Trainer) -> Iterator[None]:
        """Book the time of the body as this view's drawing in the trainer's schedule (nothing without one)."""
        schedule = schedule_of(trainer)
        if schedule is None:
            yield
        else:
            with schedule.booking(self, trainer):
                yield

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw and log this view after a training epoch (views with ``when = "epoch"``)."""
        raise NotImplementedError(f"{type(self).__name__} has when = 'epoch' but no draw()")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # With a schedule, the schedule draws the epoch views, in its order and under its clock.
        if self.when == "epoch" and schedule_of(trainer) is None and self.may_draw(trainer):
            self.draw(trainer, pl_module)

    def log_scalars(self, trainer: L.Trainer, values: Mapping[str, float]) -> None:
        """Log scalars at the current epoch (TensorBoard's step axis is the epoch for every scalar and image of a
        run: see callbacks.tensorboard_logger)."""
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=log_step(trainer))

    def log_text(self, trainer: L.Trainer, tag: str, text: str) -> None:
        """Log Markdown text at the current epoch (TensorBoard's Text tab)."""
        self._writer.add_text(tag, text, global_step=log_step(trainer))


class ImageView(View):
    """A view that logs images (matplotlib figures)."""

    def log_figure(self, trainer: L.Trainer, tag: str, figure: Figure) -> None:
        """Render a matplotlib figure and log it as an image at the current epoch."""
        self._writer.add_image(tag, figure_to_image(figure), global_step=log_step(trainer))


# The hooks Lightning calls on every callback at every batch (lightning.pytorch.trainer.call._call_callback_hooks):
# the module's per-training-step ones, and those of the evaluation batches.
PER_BATCH_HOOKS = (
    *TRAINING_STEP_HOOKS,
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_idle_batch_hooks(callbacks: Iterable[L.Callback]) -> list[str]:
    """Stop Lightning calling the per-batch hooks that a callback does not override (``Callback``'s, which do
    nothing); returns them as ``"<class>.<hook>"``.

    Lightning calls each hook of each callback at every batch, overridden or not, inside a profiler context whose
    name it formats from the callback's state key (a ``ModelCheckpoint`` formats a dict): with the minimal callbacks,
    ~40 calls per training step that do nothing (:func:`cnn_explorer.module.skip_idle_hooks`, issue 23). A
    ``ModelCheckpoint`` that saves at epoch ends only (no ``every_n_train_steps``, no ``train_time_interval``) also
    loses its ``on_train_batch_end``, which then only decides not to save.
    """
    skipped = []
    for callback in callbacks:
        idle = skip_idle_hooks(callback, L.Callback, PER_BATCH_HOOKS)
        saves_at_epoch_ends_only = (
            type(callback).on_train_batch_end is ModelCheckpoint.on_train_batch_end
            and callback._every_n_train_steps < 1
            and callback._train_time_interval is None
        )
        if saves_at_epoch_ends_only:  # its per-batch check never saves
            callback.on_train_batch_end = None
            idle.append("on_train_batch_end")
        skipped += [f"{type(callback).__name__}.{name}" for name in idle]
    return skipped


def schedule_of(trainer: L.Trainer) -> ViewSchedule | None:
    """The trainer's view schedule, or None (views then draw at their cadence, with no budget)."""
    from callbacks.schedule import ViewSchedule  # callbacks.schedule imports this module

    return next((cb for cb in trainer.callbacks if isinstance(cb, ViewSchedule)), None)


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
