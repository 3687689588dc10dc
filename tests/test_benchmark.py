"""The benchmark's arithmetic on hand-made epoch times (running it takes the real data and many minutes), and its
plain loop doing airbench's recipe on a tiny airbench net and synthetic data."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cnn_explorer.airbench import freeze_whitening_bias, patch_whitening
from cnn_explorer.benchmark import (
    OVERHEAD_VARIANTS,
    StepClock,
    _seconds_from_csv,
    _step_clock_overrides,
    _train_py_overrides,
    batches_per_epoch,
    composed_config,
    main,
    overhead_report,
    parse_args,
    per_step_overhead,
    report,
    train_by_hand,
    training_loss,
)
from cnn_explorer.errors import UserError
from tests.conftest import compose_train_config


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


def test_imagenette_reads_its_own_variable_and_train_py_gets_the_data_option_and_precision(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_FOLDER", raising=False)
    monkeypatch.setenv("IMAGENETTE_FOLDER", str(tmp_path))
    args = parse_args(["--data", "imagenette", "--model", "resnet18", "--precision", "bf16-mixed", "--no-overhead"])
    assert args.data_root == tmp_path
    overrides = _train_py_overrides(args, "minimal", tmp_path / "run")
    assert {"data=imagenette", f"data.source.root={tmp_path}", "model=resnet18", "trainer.precision=bf16-mixed"} <= set(
        overrides
    )
    assert not any(o.startswith("trainer.accelerator") for o in overrides)  # the CPU: Lightning's auto
    monkeypatch.delenv("IMAGENETTE_FOLDER")
    with pytest.raises(UserError, match="set IMAGENETTE_FOLDER=DIR"):
        parse_args(["--data", "imagenette"])


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


# ---------------------------------------------------------------------------------------------------- airbench

# A tiny airbench on synthetic data: 80 images less 16 for validation, 64 trained in 4 batches of 16 (a 2-core CPU
# trains one in well under a second); the recipe's callbacks as conf/model/airbench.yaml sets them.
TINY_AIRBENCH = [
    "data=synthetic",
    "data.source.train_size=80",
    "data.val_size=16",
    "model=airbench",
    "model.net.widths=[8,8,8]",
    "model.channels_last=false",  # at 8 channels, channels-last convs on a CPU take 4 times as long
    "data.batch_size=16",
    "callbacks=minimal",
    "trainer.max_epochs=1",
]


def _train_tiny_airbench(tmp_path, *overrides: str) -> nn.Module:
    cfg = compose_train_config([*TINY_AIRBENCH, *overrides], tmp_path)
    _, net = train_by_hand(cfg, torch.device("cpu"))
    return net


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if v.is_floating_point()}


def test_the_plain_loop_whitens_from_the_training_images_and_trains_the_bias_only_its_epochs(tmp_path):
    # callbacks.whitening.images above the 64 training images: all of them, in order, normalized as the synthetic
    # data's mean 0.5 and std 0.25 say. Before the fix the conv kept its random init.
    # Without the lookahead, which would reset the net to its starting weights after these 2 steps (fewer than 5).
    no_lookahead = ("~callbacks.lookahead", "++trainer.limit_train_batches=2")
    net = _train_tiny_airbench(tmp_path, "callbacks.whitening.images=1000", *no_lookahead)
    datamodule = instantiate(compose_train_config(TINY_AIRBENCH, tmp_path).data)
    datamodule.setup("fit")
    assert len(datamodule.train_labels) == 64
    by_hand = (datamodule.train_images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(net.whitening.weight, patch_whitening(by_hand), atol=1e-6)
    assert net.whitening_bias.abs().sum() > 0  # bias_epochs 3: trained in the one epoch
    frozen = _train_tiny_airbench(tmp_path, "callbacks.whitening.bias_epochs=0", *no_lookahead)
    assert torch.equal(frozen.whitening_bias, torch.zeros_like(frozen.whitening_bias))  # never moved
    assert frozen.features.block1.norm1.bias.abs().sum() > 0  # while the rest trained


def test_the_whitening_bias_loses_its_gradient_from_epoch_bias_epochs_on():
    net = nn.Module()
    net.whitening_bias = nn.Parameter(torch.zeros(2, 1, 1))
    net.whitening_bias.grad = torch.ones(2, 1, 1)
    freeze_whitening_bias(net, epoch=0, bias_epochs=1)  # the first epoch of one: still trained
    assert net.whitening_bias.grad is not None
    freeze_whitening_bias(net, epoch=1, bias_epochs=1)
    assert net.whitening_bias.grad is None


def test_the_plain_loop_ends_on_the_lookahead_average(tmp_path):
    # Three steps (limit 3 of the 4 batches), lookahead every 2 with decay 0.95 and power 3, total 3 steps:
    # at step 2 slow = d * w0 + (1 - d) * w2 with d = 0.95**2 * (2/3)**3 = 0.2674, and the net is reset to it;
    # step 3 moves the net, and the run's end resets it to slow again. So the result is d * w0 + (1 - d) * w2,
    # with w0 the weights before the first step (whitening set) and w2 those after two plain steps.
    net = _train_tiny_airbench(tmp_path, "++trainer.limit_train_batches=3", "callbacks.lookahead.every=2")
    # w0: no epoch (the schedule still needs a positive length); w2: two steps without the lookahead, which until
    # step 2 changes nothing (the same seed, so the same init, batches and augmentation).
    w0 = _state(_train_tiny_airbench(tmp_path, "trainer.max_epochs=0", "model.scheduler.total=1"))
    w2 = _state(_train_tiny_airbench(tmp_path, "++trainer.limit_train_batches=2", "~callbacks.lookahead"))
    d = 0.95**2 * (2 / 3) ** 3
    expected = {k: d * w0[k] + (1 - d) * w2[k] for k in w0}
    torch.testing.assert_close(_state(net), expected)
    assert not torch.allclose(w2["classifier.fc.weight"], expected["classifier.fc.weight"])  # the average moved it


def test_the_plain_loop_trains_on_the_label_smoothed_loss_the_config_sets():
    # 10 classes, logits 2 for the label and 0 elsewhere: p = e^2 / (e^2 + 9) for the label, 1 / (e^2 + 9) for each
    # other, log(e^2 + 9) = 2.79661. Plain: -log p = 0.79661. Smoothing 0.2 (model=airbench): the target is 0.82 on
    # the label and 0.02 on each other, 0.82 * 0.79661 + 0.18 * 2.79661 = 1.15661.
    logits, labels = torch.tensor([[2.0] + [0.0] * 9]), torch.tensor([0])
    airbench = composed_config(parse_args(["--data", "synthetic", "--model", "airbench"]))
    small = composed_config(parse_args(["--data", "synthetic", "--model", "small"]))
    assert training_loss(airbench)(logits, labels).item() == pytest.approx(1.156614, abs=1e-5)
    assert training_loss(small)(logits, labels).item() == pytest.approx(0.796614, abs=1e-5)


def test_limit_batches_reaches_train_py_and_the_plain_loop(tmp_path):
    args = parse_args(["--data", "synthetic", "--model", "airbench", "--limit-batches", "3"])
    assert "++trainer.limit_train_batches=3" in _train_py_overrides(args, "minimal", tmp_path)
    assert composed_config(args).trainer.limit_train_batches == 3  # the plain loop reads it from here
    assert not any("limit_train" in o for o in _train_py_overrides(args, "minimal", tmp_path, overhead=True))
    assert not any("limit_train" in o for o in _train_py_overrides(parse_args(["--data", "synthetic"]), "x", tmp_path))
    assert (batches_per_epoch(44, None), batches_per_epoch(44, 3), batches_per_epoch(2, 3)) == (44, 3, 2)
    assert batches_per_epoch(44, 0.5) == 22  # Lightning's fraction
    with pytest.raises(UserError, match="--limit-batches must be a positive number of batches, got 0"):
        parse_args(["--data", "synthetic", "--limit-batches", "0"])


def test_the_plain_loop_stops_each_epoch_after_the_limit(tmp_path):
    cfg = compose_train_config([*TINY_AIRBENCH, "++trainer.limit_train_batches=3", "trainer.max_epochs=2"], tmp_path)
    record, _ = train_by_hand(cfg, torch.device("cpu"))
    assert record["train_images"] == 3 * 16 and len(record["epoch_s"]) == 2
    record, _ = train_by_hand(compose_train_config(TINY_AIRBENCH, tmp_path), torch.device("cpu"))
    assert record["train_images"] == 64  # no limit: the whole split
