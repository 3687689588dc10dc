"""The benchmark's arithmetic on hand-made epoch times (running it takes the real data and many minutes)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnn_explorer.benchmark import (
    OVERHEAD_VARIANTS,
    StepClock,
    _seconds_from_csv,
    _step_clock_overrides,
    _train_py_overrides,
    main,
    overhead_report,
    parse_args,
    per_step_overhead,
    report,
)
from cnn_explorer.errors import UserError


def test_the_report_computes_the_ratios_by_hand():
    def variant(epoch_s: list[float], trials: list[float], views_s: list[float] | None = None) -> dict:
        seconds = {"epoch_s": epoch_s, "trial_median_s": trials, "views_s": views_s or []}
        return {**seconds, "peak_mb": [100.0], "peak_device_mb": [0.0]}

    # The epochs of all trials pooled, and each trial's median epoch (two trials here).
    results = {
        "plain loop": variant([10.0, 10.0, 12.0], [10.0, 10.0]),  # median 10
        "train.py, callbacks off": variant([11.0, 11.0, 11.0], [11.0, 11.0]),  # median 11: 1.100x the plain loop
        # median 12.1: 1.210x the loop, 1.100x callbacks off; views 1.1 s of 12.1 s: 1.1 / 11 = 10% of the rest.
        # The last epoch, 22 s with 11 s of views, is an outlier the medians leave out and the totals keep.
        # Trial by trial: 12.1 / 11 and 13.2 / 11, so 1.100x and 1.200x, whose median is 1.150x.
        "train.py, callbacks on": variant([12.1, 12.1, 22.0], [12.1, 13.2], [1.1, 1.1, 11.0]),
    }
    text = report(parse_args(["--data", "synthetic"]), results, train_images=45_000)
    assert "| plain loop | 10.00 | 4,500 | 100 | 1.000x |" in text
    assert "| train.py, callbacks off | 11.00 | 4,091 | 100 | 1.100x |" in text
    assert "| train.py, callbacks on | 12.10 | 3,719 | 100 | 1.210x |" in text
    assert "on / callbacks off: 1.150x (median of the trials' ratios of median epochs: 1.100x, 1.200x)" in text
    assert "; 1.100x (median epoch of all trials)" in text
    # Totals: on 46.2 s / off 33 s = 1.400x; off 33 s / plain 32 s = 1.031x.
    assert "callbacks on / callbacks off: 1.400x (total time of all epochs)" in text
    assert "callbacks off / plain loop: 1.031x (total)" in text
    # Views' own: 13.2 s of 46.2 s, so 13.2 / 33 = 1.400x in all; per epoch 1.1 / 11, 1.1 / 11, 11 / 11.
    assert "median 1.10 s per epoch, 1.100x of the rest of the epoch (median epoch); 13.2 s in all, 1.400x" in text


def test_the_logged_seconds_are_read_per_tag_from_one_csv(tmp_path):
    # Lightning's CSV: one row per epoch with the epoch-end scalars, and validation rows with the others empty.
    (tmp_path / "csv" / "version_0").mkdir(parents=True)
    rows = "epoch,time/epoch_s,time/views_s,val/acc\n0,10.5,0.5,\n0,,,0.3\n1,11.0,0.25,\n"
    (tmp_path / "csv" / "version_0" / "metrics.csv").write_text(rows)
    logged = _seconds_from_csv(tmp_path, ("time/epoch_s", "time/views_s"))
    assert logged == {"time/epoch_s": [10.5, 11.0], "time/views_s": [0.5, 0.25]}


def test_without_a_data_root_the_benchmark_names_both_ways_to_give_one(monkeypatch, capsys):
    # No default path (it pointed outside the repository): the message names the flag and the variable.
    monkeypatch.delenv("CIFAR10_FOLDER", raising=False)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "give --data-root DIR or set CIFAR10_FOLDER=DIR" in err and "--data synthetic" in err
    assert parse_args(["--data", "synthetic"]).data_root is None  # generated data needs no folder


def test_the_data_root_is_the_flag_else_the_variable_made_absolute(tmp_path, monkeypatch):
    # train.py and the plain loop run in the repository, so a path relative to the user's dir is made absolute.
    here = tmp_path.resolve()
    (here / "flag").mkdir()
    (here / "env").mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("CIFAR10_FOLDER", "env")
    assert parse_args([]).data_root == here / "env"
    args = parse_args(["--data-root", "flag"])
    assert args.data_root == here / "flag"
    assert f"data.source.root={here / 'flag'}" in _train_py_overrides(args, "minimal", here / "run")
    with pytest.raises(UserError, match="--data-root=.*missing is not a folder"):
        parse_args(["--data-root", "missing"])


def test_the_per_step_overhead_is_the_median_of_each_trials_ratio_of_median_epochs():
    # Seconds per step of each epoch, two trials. Trial medians: train.py 1.1 ms and 1.2 ms (its first epoch, the
    # warm-up, is left out by the median), the loop 1.0 ms in both; so ratios 1.1 and 1.2, median 1.15, spread 0.1.
    train_py = [[0.0030, 0.0011, 0.0011], [0.0013, 0.0012, 0.0012]]
    loop = [[0.0010, 0.0010, 0.0011], [0.0010, 0.0009, 0.0010]]
    o = per_step_overhead(train_py, loop)
    assert o["train_py_us"] == pytest.approx(1150.0)  # the median of 1100 and 1200
    assert o["loop_us"] == pytest.approx(1000.0)
    assert o["extra_us"] == pytest.approx(150.0)
    assert o["trial_ratios"] == pytest.approx([1.1, 1.2])
    assert o["ratio"] == pytest.approx(1.15) and o["spread"] == pytest.approx(0.1)
    text = overhead_report({OVERHEAD_VARIANTS[0]: {"step_s": loop}, OVERHEAD_VARIANTS[1]: {"step_s": train_py}})
    assert "| tiny net, plain loop | 1,000 | 1.000x |" in text and "| tiny net, train.py | 1,150 | 1.150x |" in text
    assert "150 us more per step" in text and "(1.100x, 1.200x; spread 0.100)" in text
    with pytest.raises(ValueError, match="one list of epochs per trial"):
        per_step_overhead(train_py, loop[:1])


def test_the_overhead_variant_runs_the_tiny_net_with_the_minimal_callbacks(tmp_path):
    overrides = _train_py_overrides(parse_args(["--data", "synthetic"]), "default", tmp_path, overhead=True)
    assert {"model.net.architecture=[4,M]", "model.net.hidden=16", "callbacks=minimal", "data=synthetic"} <= set(
        overrides
    )
    assert "callbacks=default" not in overrides


def test_the_step_clock_divides_each_epochs_training_time_by_its_steps(tmp_path):
    # Fake clock: the epoch starts at 10 s, validation starts at 12 s after 4 steps (0.5 s per step); the sanity
    # check before it and the epoch's end after validation add nothing. The second epoch has no validation:
    # 3 steps from 20 s to 20.6 s at its end, 0.2 s per step.
    times = iter([10.0, 12.0, 20.0, 20.6])
    clock = StepClock(str(tmp_path / "steps.txt"), clock=lambda: next(times))
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(global_step=0, sanity_checking=True)
    clock.on_validation_start(trainer, module)  # the sanity check: not an epoch
    trainer.sanity_checking = False
    clock.on_train_epoch_start(trainer, module)
    trainer.global_step = 4
    clock.on_validation_start(trainer, module)
    clock.on_train_epoch_end(trainer, module)  # already stopped at validation: not counted twice
    clock.on_train_epoch_start(trainer, module)
    trainer.global_step = 7
    clock.on_train_epoch_end(trainer, module)
    assert clock.step_s == pytest.approx([0.5, 0.2])
    assert [float(x) for x in (tmp_path / "steps.txt").read_text().split()] == pytest.approx([0.5, 0.2])


def test_with_cpu_time_train_py_gets_a_thread_cpu_time_clock_on_one_thread(tmp_path):
    overrides = _step_clock_overrides(parse_args(["--only-overhead", "--cpu-time"]), tmp_path / "steps.txt")
    assert "threads=1" in overrides
    config = OmegaConf.from_dotlist([o.lstrip("+") for o in overrides if o.startswith("+callbacks.")])
    clock = instantiate(config.callbacks.step_clock)
    assert (
        isinstance(clock, StepClock) and clock.clock is time.thread_time and clock.path == str(tmp_path / "steps.txt")
    )
    assert "threads=1" not in _step_clock_overrides(parse_args(["--only-overhead"]), tmp_path / "steps.txt")
    with pytest.raises(UserError, match="--cpu-time measures CPU time.*--device cpu"):
        parse_args(["--only-overhead", "--cpu-time", "--device", "cuda"])
