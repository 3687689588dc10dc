"""The view schedule: its decisions on a fake clock, its bookings, and its independence of the callbacks' order."""

import itertools
import random
from datetime import timedelta
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.attributions import AttributionCallback
from callbacks.base import PER_BATCH_HOOKS, View, skip_idle_batch_hooks
from callbacks.confusion_matrix import ConfusionMatrixCallback
from callbacks.filters import FilterGridCallback
from callbacks.misclassified import MisclassifiedCallback
from callbacks.schedule import Candidate, ViewSchedule, plan
from tests.test_callbacks import make_trainer, read_images


def ticking(step: float = 1.0):
    """A fake clock: each reading ``step`` seconds after the previous one, from 0."""
    counter = itertools.count()
    return lambda: next(counter) * step


def test_the_first_epoch_and_no_budget_draw_every_due_view_never_drawn_first_then_by_name():
    views = [Candidate("b", "B", 3, 50.0), Candidate("a", "A", 3, 50.0), Candidate("c", "C", None, 0.0)]
    # epoch 0: everything, whatever the budget; c never drew, so it leads; a and b tie on epoch 3 and cost, by name.
    assert plan(views, epoch=0, spent=100.0, training_time=1.0, budget=0.01) == ["c", "a", "b"]
    assert plan(views, epoch=7, spent=100.0, training_time=1.0, budget=None) == ["c", "a", "b"]


def test_a_tight_budget_takes_turns_the_view_that_drew_longest_ago_first():
    a, b, c = Candidate("a", "A", 3, 1.0), Candidate("b", "B", 1, 1.0), Candidate("c", "C", 2, 1.0)
    # allowance 3% of 400 s = 12 s, 10 s spent: b (drew at 1) 10 + 1 = 11 fits, c (at 2) 12 fits, a 13 does not.
    assert plan([a, b, c], epoch=4, spent=10.0, training_time=400.0, budget=0.03) == ["b", "c"]
    # b's guess of 5 s does not fit (15 > 12): it waits for its turn. Each epoch adds 12 / 5 = 2.4 s of room (the
    # mean of epochs 0-4), so 15 s fit in 2 epochs (16.8). c (11 s now) backfills: with it b needs 16, still 2
    # epochs away. a would then need 12 (fits) but push b to 17, 3 epochs away: a waits.
    b5 = Candidate("b", "B", 1, 5.0)
    assert plan([a, b5, c], epoch=4, spent=10.0, training_time=400.0, budget=0.03) == ["c"]
    # 100 s later (allowance 15 s): b5 takes 15 s, so c (16) does not fit, nor a.
    assert plan([a, b5, c], epoch=5, spent=10.0, training_time=500.0, budget=0.03) == ["b"]


def test_among_views_that_drew_in_the_same_epoch_the_cheapest_draw_first_and_the_costly_one_is_not_starved():
    # After epoch 0 every view last drew in epoch 0. Allowance 3% of 1000 s = 30 s, 28 s spent.
    costly, cheap, cheaper = Candidate("x", "X", 0, 20.0), Candidate("y", "Y", 0, 1.5), Candidate("z", "Z", 0, 0.1)
    # z (0.1 s) and y (1.5 s) fit: 28 + 0.1 + 1.5 = 29.6 <= 30; x's 20 s do not, and it is last among equals.
    assert plan([costly, cheap, cheaper], epoch=1, spent=28.0, training_time=1000.0, budget=0.03) == ["z", "y"]
    # Next epoch y and z drew in epoch 1: x (epoch 0) leads. Allowance 33 s, 11 s more each epoch (33 / 3): x needs
    # 29.6 + 20 = 49.6 s, room in 2 epochs (55). z (29.7 now, x then 49.7) and y (31.2, x then 51.2) backfill.
    y1, z1 = Candidate("y", "Y", 1, 1.5), Candidate("z", "Z", 1, 0.1)
    assert plan([costly, y1, z1], epoch=2, spent=29.6, training_time=1100.0, budget=0.03) == ["z", "y"]
    # A costlier x (25 s: 54.6 of 55 in 2 epochs) leaves 0.4 s: z fits in it, y would put x off to 3 epochs.
    costlier = Candidate("x", "X", 0, 25.0)
    assert plan([costlier, y1, z1], epoch=2, spent=29.6, training_time=1100.0, budget=0.03) == ["z"]
    # x's turn: allowance 51 s at 1700 s; x (49.6) and z (49.7) fit, y (51.2) waits.
    assert plan([costly, y1, z1], epoch=9, spent=29.6, training_time=1700.0, budget=0.03) == ["x", "z"]


def test_views_marked_for_the_last_epoch_draw_then_whatever_the_budget():
    checks = Candidate("x", "X", 0, 100.0, always=True)
    a = Candidate("a", "A", None, 0.0)
    # allowance 12 s, 10 s spent: x's 100 s do not fit, x draws anyway and takes the room of the others (a: 110 > 12).
    assert plan([a, checks], epoch=9, spent=10.0, training_time=400.0, budget=0.03) == ["x"]
    # Its guess counts first: with 4000 s of training (120 s of room), a fits beside it (10 + 100 + 0 <= 120).
    assert plan([a, checks], epoch=9, spent=10.0, training_time=4000.0, budget=0.03) == ["a", "x"]


def test_a_view_that_draws_at_the_last_epoch_anyway_does_not_draw_earlier_before_its_cost_is_known():
    # Allowance 3% of 1000 s = 30 s, 10 s spent. x never drew: a blind drawing could take any time, and it draws
    # at the last epoch anyway, so it is passed over (without ending the turn: a still draws).
    x, a = Candidate("x", "X", None, 0.0, final=True), Candidate("a", "A", 0, 1.0)
    assert plan([x, a], epoch=9, spent=10.0, training_time=1000.0, budget=0.03) == ["a"]
    # Without a budget it draws whenever due; once it drew (its cost known, 5 s) it takes its turn as the others.
    assert plan([x, a], epoch=9, spent=10.0, training_time=1000.0, budget=None) == ["x", "a"]
    x_known = Candidate("x", "X", 4, 5.0, final=True)
    assert plan([x_known, a], epoch=9, spent=10.0, training_time=1000.0, budget=0.03) == ["a", "x"]


class Recorder(View):
    """An epoch view that records the epochs it drew in."""

    def __init__(self) -> None:
        super().__init__()
        self._writer = object()  # a TensorBoard writer: due every epoch
        self.drawn: list[int] = []

    def draw(self, trainer, pl_module) -> None:
        self.drawn.append(trainer.current_epoch)


def test_the_schedule_logs_each_epochs_seconds_and_the_views_share_of_them():
    # The clock: fitting starts at 0; epoch 0 starts at 0, is planned at 1, the view draws 2-3 s, the epoch ends at
    # 10; epoch 1: 10, 11, drawing 12-12.5, 20. So epoch_s is 10 and 10, views_s 1 and 0.5 (that epoch's only).
    readings = iter([0.0, 0.0, 1.0, 2.0, 3.0, 10.0, 10.0, 11.0, 12.0, 12.5, 20.0])
    schedule = ViewSchedule(time_budget=None, clock=lambda: next(readings))
    view = Recorder()
    trainer = SimpleNamespace(
        callbacks=[schedule, view], current_epoch=0, is_global_zero=True, sanity_checking=False, max_epochs=5
    )
    trainer.should_stop = trainer.received_sigterm = False
    logged = []
    module = SimpleNamespace(log=lambda name, value, **_: logged.append((name, value)))
    schedule.on_train_start(trainer, module)
    for epoch in (0, 1):
        trainer.current_epoch = epoch
        schedule.on_train_epoch_start(trainer, module)
        view.on_train_epoch_end(trainer, module)  # nothing: with a schedule, the schedule draws the epoch views
        schedule.on_train_epoch_end(trainer, module)
    assert view.drawn == [0, 1]
    assert logged == [("time/epoch_s", 10.0), ("time/views_s", 1.0), ("time/epoch_s", 10.0), ("time/views_s", 0.5)]
    assert schedule.last_cost[view] == 0.5 and schedule.spent == 1.5
    assert schedule.first_showing == 1.0  # epoch 0's drawing, which the budget does not count
    with pytest.raises(ValueError, match=r"time_budget must be a fraction in \(0, 1\] or None, got 2"):
        ViewSchedule(time_budget=2)


@pytest.mark.parametrize("view", [ConfusionMatrixCallback(), MisclassifiedCallback()])
def test_a_view_that_draws_after_validation_books_its_time_once_per_epoch(tmp_path, view):
    # Each clock reading is 1 s after the last: each drawing (two readings) costs exactly 1 s. A second booking at
    # the end of the training epoch (a no-op drawing) would make it 2 s per epoch and reset the view's cost to 1.
    schedule = ViewSchedule(time_budget=None, clock=ticking())
    trainer, module, datamodule = make_trainer(
        tmp_path, [view, schedule], logger=TensorBoardLogger(str(tmp_path), name="", version="")
    )
    trainer.fit(module, datamodule=datamodule)
    assert schedule.spent == 2.0 and schedule.last_drawn[view] == 1 and schedule.last_cost[view] == 1.0
    assert [e.step for e in read_images(tmp_path)[view_tag(view)]] == [0, 1]


def view_tag(view) -> str:
    return "confusion_matrix/val" if isinstance(view, ConfusionMatrixCallback) else "misclassified/val"


def drawn_epochs(tmp_path, order: int) -> dict[str, list[int]]:
    """Fit 4 epochs with four views under a tight budget on a fake clock, the callbacks shuffled by ``order``."""
    views = [
        FilterGridCallback(),
        AttributionCallback(per_class=1, methods=["gradient"]),
        ConfusionMatrixCallback(),
        MisclassifiedCallback(k=2),
    ]
    # The fake clock: 500 s per training step, 1 s per reading, so each drawing costs 1 s and each epoch of 3 steps
    # 1500 s (plus a few readings). 0.0012 of the training time, of which the first epoch's 4 drawings are not
    # charged. Epoch 1 (about 3000 s: 3.6 s of room, 1.8 more each epoch): by class name of the 4 that drew at 0,
    # attributions, confusion, filters (3 s); misclassified (4 s) waits, its turn next epoch. Epoch 2 (4500 s, 5.4 s,
    # 3 spent): misclassified, then attributions (5 s); confusion (6 s) waits, and filters would too. Epoch 3
    # (6000 s, 7.2 s, 5 spent): confusion, filters (7 s); attributions (8 s) waits, and misclassified would too.
    # Charged, epoch 0's 4 s would have left no room at epoch 1 and 1.4 s at epoch 2.
    readings = itertools.count()
    schedule = ViewSchedule(time_budget=0.0012, clock=lambda: 500.0 * trainer.global_step + next(readings))
    callbacks = [schedule, *views]
    random.Random(order).shuffle(callbacks)
    log_dir = tmp_path / f"order{order}"
    trainer, module, datamodule = make_trainer(
        log_dir,
        callbacks,
        max_epochs=4,
        limit_train_batches=3,
        logger=TensorBoardLogger(str(log_dir), name="", version=""),
    )
    trainer.fit(module, datamodule=datamodule)
    return {tag: [e.step for e in events] for tag, events in read_images(log_dir).items()}


def test_the_same_views_draw_in_the_same_epochs_whatever_the_order_of_the_callbacks(tmp_path):
    first, second = drawn_epochs(tmp_path, 1), drawn_epochs(tmp_path, 2)
    assert first == second
    assert first == {
        "attributions/gradient": [0, 1, 2],
        "confusion_matrix/val": [0, 1, 3],
        "filters/conv1": [0, 1, 3],
        "misclassified/val": [0, 2],
    }


def test_a_second_schedule_is_refused_before_the_first_epoch(tmp_path):
    trainer, module, datamodule = make_trainer(tmp_path, [ViewSchedule(), FilterGridCallback(), ViewSchedule()])
    with pytest.raises(ValueError, match="the trainer has 2 ViewSchedule callbacks; keep one"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0


class CountsBatches(L.Callback):
    """Overrides two per-batch hooks and counts their calls."""

    def __init__(self) -> None:
        self.calls = {"on_before_backward": 0, "on_train_batch_end": 0}

    def on_before_backward(self, *args: object) -> None:
        self.calls["on_before_backward"] += 1

    def on_train_batch_end(self, *args: object) -> None:
        self.calls["on_train_batch_end"] += 1


def test_the_schedule_stops_lightning_calling_the_per_batch_hooks_no_callback_overrides(tmp_path):
    idle = [name for name in PER_BATCH_HOOKS if name not in ("on_before_backward", "on_train_batch_end")]
    assert skip_idle_batch_hooks([CountsBatches()]) == [f"CountsBatches.{name}" for name in idle]
    counter, schedule = CountsBatches(), ViewSchedule()
    trainer, module, datamodule = make_trainer(
        tmp_path, [schedule, counter], limit_train_batches=3, logger=False, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=datamodule)
    # 2 epochs x 3 batches: the overridden hooks still run at every batch; the idle ones are gone from the instances.
    assert counter.calls == {"on_before_backward": 6, "on_train_batch_end": 6}
    assert all(getattr(counter, name) is None and getattr(schedule, name) is None for name in idle)
    assert CountsBatches.on_train_batch_start is L.Callback.on_train_batch_start  # the class is left as it was


def test_a_checkpoint_saved_only_at_epoch_ends_loses_its_per_batch_check_one_saved_by_steps_or_time_keeps_it():
    by_epoch, by_steps = ModelCheckpoint(), ModelCheckpoint(every_n_train_steps=2)
    by_time = ModelCheckpoint(train_time_interval=timedelta(minutes=5))
    skipped = skip_idle_batch_hooks([by_epoch, by_steps, by_time])
    assert by_epoch.on_train_batch_end is None and skipped.count("ModelCheckpoint.on_train_batch_end") == 1
    assert (
        by_steps.on_train_batch_end.__func__
        is by_time.on_train_batch_end.__func__
        is ModelCheckpoint.on_train_batch_end
    )
