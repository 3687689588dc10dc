"""One schedule for the views: the time budget, the seconds spent, which view draws when, and the epoch's timing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L

from callbacks.base import View, last_epoch, skip_idle_batch_hooks
from cnn_explorer.errors import BadArgument


@dataclass(frozen=True)
class Candidate:
    """A view that is due this epoch, as :func:`plan` sees it.

    Attributes:
        key: what identifies the view (the view itself, in :class:`ViewSchedule`).
        name: breaks the ties left between views that last drew in the same epoch with the same cost, so the
            order is the same whatever the order of the trainer's callbacks (the view's class name).
        last_drawn: the epoch it last drew in; None: never.
        cost: seconds its last drawing took, the guess for this one (0 for a view that never drew).
        always: it draws whatever the budget says (the last epoch's checks).
        final: it draws at the last epoch whatever the budget says (a view with ``at_last_epoch``), so an earlier
            drawing is an extra one.
    """

    key: Hashable
    name: str
    last_drawn: int | None
    cost: float
    always: bool = False
    final: bool = False


def plan(
    candidates: Sequence[Candidate], *, epoch: int, spent: float, training_time: float, budget: float | None
) -> list[Hashable]:
    """Which of the due views draw this epoch, in drawing order: the one that drew longest ago first (never drawn
    first of all); among views that last drew in the same epoch the cheapest first, then by name.

    Every due view draws in the first epoch (each shows once) and when there is no budget. Otherwise the views
    together may spend ``budget`` of the training time: in order, a view draws while the seconds spent, with the
    guessed costs of the views before it and its own, stay within ``budget * training_time``. The first view that
    does not fit keeps its place: it draws at the first epoch end where the budget has room for it, and a view
    behind it draws now only if that does not put its turn off (the budget grows by its share of an epoch's
    training time, the mean so far, each epoch). That is EASY backfilling (Lifka 1995, "The ANL/IBM SP scheduling
    system"): an expensive view is never put off, and the cheap ones draw in the room it cannot use before its
    turn. On Imagenette at 128 px a ResNet-18's attributions take 20 s, ten epochs of a 3% budget; strictly in
    line, the confusion matrix (0.1 s) and the rest waited behind them all that while.

    ``always`` views draw regardless, and their guessed cost counts first. A ``final`` view that never drew has
    no guess: it waits for the last epoch rather than draw blind (on Imagenette at 128 px a ResNet-18's
    explanation scores and feature statistics, due every 10 epochs, first drew at epoch 9 for 325 s, ten times
    the budget); afterwards it takes turns as the others.

    Args:
        candidates: the views due this epoch.
        epoch: the current epoch (0-based).
        spent: seconds the views have spent drawing since fitting started, that the budget counts.
        training_time: seconds of training since fitting started (the views' drawings not counted).
        budget: the fraction of the training time the views may spend; None: no limit.

    Returns:
        The keys of the views that draw, in the order they draw.
    """
    order = sorted(candidates, key=lambda c: (-1 if c.last_drawn is None else c.last_drawn, c.cost, c.name))
    if budget is None or epoch == 0:
        return [c.key for c in order]
    allowance = budget * training_time
    per_epoch = allowance / (epoch + 1)  # the room one more epoch adds, at the mean epoch so far

    def turn(need: float) -> float:
        """In how many epochs the budget has room for ``need`` seconds (0: now)."""
        if need <= allowance:
            return 0
        return math.ceil((need - allowance) / per_epoch) if per_epoch > 0 else math.inf

    predicted = spent + sum(c.cost for c in order if c.always)
    chosen, waiting = set(), None
    for candidate in order:
        if candidate.final and candidate.last_drawn is None and not candidate.always:
            continue  # no guess of its cost, and it draws at the last epoch anyway
        fits = predicted + candidate.cost <= allowance
        if candidate.always:
            chosen.add(candidate.key)
        elif fits and (
            waiting is None or turn(predicted + candidate.cost + waiting.cost) == turn(predicted + waiting.cost)
        ):
            chosen.add(candidate.key)  # behind a waiting view: in room it cannot use before its turn
            predicted += candidate.cost
        elif waiting is None:
            waiting = candidate  # the first that does not fit: its turn is kept
    return [c.key for c in order if c.key in chosen]


class ViewSchedule(L.Callback):
    """Decides which views draw when, times their drawings, and logs each epoch's time.

    The views of the trainer (its :class:`~callbacks.base.View` callbacks) keep to one time budget: together they
    spend at most ``time_budget`` of the training time, taking turns when it is tight (:func:`plan`). On a CPU,
    where an epoch takes half a minute, the light views draw most epochs; on a fast GPU, every few epochs. The
    first epoch always draws, so every view shows once, and views with ``at_last_epoch`` draw after the last
    epoch whatever the budget. The first epoch's drawings are not charged to the budget, which governs the
    epochs after it: charged, they were a debt that on Imagenette at 128 px (27.7 s for a ResNet-18, against
    1.8 s of room an epoch) kept every view from drawing for the next 14 epochs.

    The epoch's plan is made once, when a view first asks (:meth:`allows`) or at the end of the epoch, so it does
    not depend on the order of the callbacks. This schedule draws the views with ``when = "epoch"`` itself, in
    the plan's order, in its own ``on_train_epoch_end``; views that draw elsewhere (after validation) ask
    :meth:`allows` and draw inside :meth:`booking`.

    At setup it also stops Lightning calling the per-batch hooks that no callback of the trainer overrides
    (:func:`~callbacks.base.skip_idle_batch_hooks`): this schedule is in every run's callbacks, and those calls are
    most of the framework's own cost per step on a small net.

    It logs ``time/epoch_s``: from the start of a training epoch to the end of its views' drawings, validation
    included (what a user waits per epoch; only the checkpoint writes, which Lightning runs last, fall outside
    it); and ``time/views_s``: the seconds the views spent drawing in that epoch (global rank zero's, where they
    draw). analyze.py and the benchmark read them from the metrics CSV.

    Args:
        time_budget: the fraction of the training time the views may spend drawing (0.03: 3%); None: every view
            draws whenever it is due.
        clock: seconds, monotonic (tests pass a fake one).

    Raises:
        BadArgument: (a ``ValueError``) if ``time_budget`` is not a fraction in (0, 1], or (at setup) the trainer
            has a second schedule.

    Example::

        Trainer(callbacks=[ViewSchedule(time_budget=0.05), FilterGridCallback(), ConfusionMatrixCallback()])
    """

    def __init__(self, time_budget: float | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        if time_budget is not None and not 0 < time_budget <= 1:
            raise BadArgument(f"time_budget must be a fraction in (0, 1] or None, got {time_budget!r}")
        self.time_budget, self.clock = time_budget, clock
        self.spent = 0.0  # seconds the views have spent drawing since fitting started
        self.first_showing = 0.0  # of which in epoch 0, when every view draws once: not charged to the budget
        self.last_drawn: dict[View, int] = {}  # view -> the epoch it last drew in
        self.last_cost: dict[View, float] = {}  # view -> seconds its last drawing took
        self._start: float | None = None
        self._epoch_start: float | None = None
        self._epoch_spent = 0.0  # self.spent when the epoch started
        self._plan: list[View] | None = None  # this epoch's, once made

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        schedules = [cb for cb in trainer.callbacks if isinstance(cb, ViewSchedule)]
        if len(schedules) > 1:  # each would draw the epoch views: twice the drawings, two budgets
            raise BadArgument(f"the trainer has {len(schedules)} ViewSchedule callbacks; keep one (callbacks.schedule)")
        skip_idle_batch_hooks(trainer.callbacks)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self.spent, self.first_showing = self.clock(), 0.0, 0.0
        self.last_drawn.clear()
        self.last_cost.clear()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._epoch_spent, self._plan = self.clock(), self.spent, None

    def allows(self, view: View, trainer: L.Trainer) -> bool:
        """Whether ``view`` draws this epoch: it is in the epoch's plan."""
        return view in self._epoch_plan(trainer)

    def _epoch_plan(self, trainer: L.Trainer) -> list[View]:
        if self._plan is None:
            views = [cb for cb in trainer.callbacks if isinstance(cb, View) and cb.due(trainer)]
            last = last_epoch(trainer)
            candidates = [
                Candidate(
                    view,
                    type(view).__name__,
                    self.last_drawn.get(view),
                    self.last_cost.get(view, 0.0),
                    always=view.at_last_epoch and last,
                    final=view.at_last_epoch,
                )
                for view in views
            ]
            start = self._start if self._start is not None else self.clock()
            training_time = self.clock() - start - self.spent
            self._plan = plan(
                candidates,
                epoch=trainer.current_epoch,
                spent=self.spent - self.first_showing,
                training_time=training_time,
                budget=self.time_budget,
            )
        return self._plan

    @contextmanager
    def booking(self, view: View, trainer: L.Trainer) -> Iterator[None]:
        """Count the time of the body as a drawing of ``view`` in this epoch."""
        start = self.clock()
        try:
            yield
        finally:
            cost = self.clock() - start
            self.spent += cost
            if trainer.current_epoch == 0:
                self.first_showing += cost
            self.last_cost[view], self.last_drawn[view] = cost, trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            for view in self._epoch_plan(trainer):
                if trainer.received_sigterm:  # SIGTERM, Ctrl-C or USR2: SLURM sends SIGKILL 30 s after SIGTERM
                    break
                if view.when == "epoch":
                    with self.booking(view, trainer):
                        view.draw(trainer, pl_module)
        if self._epoch_start is None:
            return
        # sync_dist: under DDP, the mean over ranks (they wait for each other at every step anyway).
        pl_module.log("time/epoch_s", self.clock() - self._epoch_start, on_epoch=True, sync_dist=True)
        if any(isinstance(cb, View) for cb in trainer.callbacks):
            # Rank zero's: the views draw there (the other ranks spend 0 and wait at their next collective), so the
            # largest over ranks is rank zero's, and every rank logs the same value (no sync_dist warning).
            pl_module.log(
                "time/views_s", self.spent - self._epoch_spent, on_epoch=True, sync_dist=True, reduce_fx="max"
            )
