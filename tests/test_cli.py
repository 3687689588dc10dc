"""train.py as a user runs it: a subprocess, a run dir on disk, files read back."""

import csv
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnn_explorer.run_status import write_status
from tests.conftest import ROOT, TINY, run_cli

FAST = [*TINY, "trainer.max_epochs=1"]


def run_train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, cwd=cwd)


def read_scalars(run_dir: Path) -> dict[str, list[float]]:
    """The run's scalars by tag, its train and validation curves (sub-runs) as ``train:<tag>``, ``validation:<tag>``."""
    scalars = {}
    for run in ("", "train", "validation"):
        events = EventAccumulator(str(run_dir / run))
        events.Reload()
        prefix = f"{run}:" if run else ""
        scalars |= {prefix + tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return scalars


# A 2-epoch run stopped after its first epoch, as if interrupted: the test of one epoch's outputs, then resumed.
STOPPED = [*TINY, "+callbacks.stop._target_=tests.interrupt.StopAfterEpoch", "+callbacks.stop.epoch=0"]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = run_train(*STOPPED, f"hydra.run.dir={run_dir}")
    return run_dir, result


def test_one_epoch_leaves_checkpoints_events_and_metrics(one_epoch_run):
    run_dir, result = one_epoch_run
    assert result.returncode == 0, result.stderr
    assert "test/acc" in result.stdout + result.stderr
    assert [p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")] == [
        next((run_dir / "checkpoints").glob("epoch000-val_acc0.*.ckpt")).name
    ]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    scalars = read_scalars(run_dir)
    # TensorBoard holds the learning curves as sub-runs train and validation of one tag per metric (CURVES); the
    # CSV keeps the logged names.
    curves = [f"{run}:Curves/{metric}" for run in ("train", "validation") for metric in ("accuracy", "loss")]
    for tag in (*curves, "val/acc_best", "test/acc", "time/epoch_s"):
        assert len(scalars[tag]) == 1, tag
    assert 0.3 < scalars["validation:Curves/accuracy"][0] <= 1.0

    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    val_acc = [float(r["val/acc"]) for r in rows if r["val/acc"]]
    assert val_acc == pytest.approx(scalars["validation:Curves/accuracy"])


def test_resume_continues_in_the_same_run_dir(one_epoch_run):
    run_dir, _ = one_epoch_run
    # StopAfterEpoch ends the run as completed, and a completed run is never written into again: record it as a
    # run a scheduler stopped after epoch 0, which is resumed in its own dir.
    write_status(run_dir, "interrupted", "stopped after epoch 0")
    result = run_train(*TINY, "trainer.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 0, result.stderr
    assert len(read_scalars(run_dir)["validation:Curves/accuracy"]) == 2  # epoch 0 from the first run, epoch 1 resumed
    (resumed,) = (run_dir / ".hydra").glob("resumed-*/config.yaml")
    assert "ckpt_path: null" in (run_dir / ".hydra" / "config.yaml").read_text()  # the original is kept
    assert f"ckpt_path: {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.read_text()


def test_resume_with_another_model_names_the_original_overrides(one_epoch_run):
    run_dir, _ = one_epoch_run
    result = run_train(*TINY, "model=deep", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 1
    assert "different 'model' config" in result.stderr and "data=synthetic" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # ~15 s: the default suite stays near 10 minutes
def test_multirun_writes_one_run_dir_per_job(tmp_path):
    result = run_train("-m", *FAST, "model=small,deep", "test=false", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_") and "model=deep" in jobs[1]
    for job in jobs:
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.source.download=false"], "data=cifar10_folder data.source.root="),
        (["data=cifar10_folder"], "is not an ImageFolder dataset"),
        (["trainer.max_epochs=0"], "trainer.max_epochs must be a positive"),
        (["model.optimizer.lr=0"], "model.optimizer.lr must be a positive"),
        (["data=synthetic", "data.val_size=5000"], "data.val_size: val_size must be between 1 and 1999"),
        (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt does not exist"),
    ],
)
def test_bad_input_gets_one_clear_message_and_exit_1(args, message, tmp_path):
    env_args = [f"data.source.root={tmp_path}"] if not any(a.startswith("data=synthetic") for a in args) else []
    result = run_train(*args, *env_args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_option_keeps_hydras_message(tmp_path):
    result = run_train("model=huge", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert "Could not find 'model/huge'" in result.stderr
