"""Stopping and resuming as a user does it, through train.py in a subprocess: Ctrl-C, the printed resume command
pasted into a shell, a completed run's checkpoints, an epoch cut short by ``limit_train_batches``, ``threads``."""

from __future__ import annotations

import csv
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_MINIMAL, run_cli, tree_snapshot

RUN = [*TINY_MINIMAL, "test=false", "threads=1"]  # two epochs of the small net, 13 steps each
STEPS_PER_EPOCH = 13  # 800 training images / batch 64
LIMITED = [*TINY_MINIMAL, "trainer.max_epochs=3", "++trainer.limit_train_batches=8", "threads=1"]  # 8 of 13


def train_py(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, cwd=cwd)


def signal_at(step: int, name: str) -> list[str]:
    return ["+callbacks.stop._target_=tests.interrupt.SignalAtStep", f"+callbacks.stop.step={step}"] + [
        f"+callbacks.stop.signal_name={name}"
    ]


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "run_status.json").read_text())["status"]


def last_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def logged_rows(run_dir: Path) -> set[tuple[str, ...]]:
    """Every logged value as (epoch, step, column, value), all CSV versions together; timings left out."""
    rows = set()
    for path in run_dir.glob("csv/version_*/metrics.csv"):
        for row in csv.DictReader(path.open()):
            rows |= {
                (row["epoch"], row["step"], column, value)
                for column, value in row.items()
                if value and column not in ("epoch", "step") and not column.startswith("time/")
            }
    return rows


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights and step, and the same values logged at the same epochs and steps."""
    first, second = last_state(a), last_state(b)
    assert first["global_step"] == second["global_step"]
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    assert logged_rows(a) == logged_rows(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train_py(*RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


# --- issue 17 item 4, and 13's quoting: Ctrl-C, then the printed command pasted into a shell --------------------


def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_printed_command_resumes_exactly(uninterrupted, tmp_path):
    run_dir = tmp_path / "a b" / "0_lr=0.1,x=2"  # a space, and a sweep job folder's = and ,
    step = STEPS_PER_EPOCH + 5  # mid-epoch 1
    stopped = train_py(*RUN, *signal_at(step, "SIGINT"), f'hydra.run.dir="{run_dir}"')
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "stopped by Ctrl-C (SIGINT)" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    assert status(run_dir) == "interrupted"
    assert last_state(run_dir)["global_step"] == step  # the state at the last finished step

    printed = stopped.stderr.split("resume exactly from there with: ")[1].splitlines()[0]
    assert printed.startswith("python train.py ")
    command = printed.replace("python train.py", f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'train.py'))}")
    resumed = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status(run_dir) == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b"]  # resumed in its own run dir, no new one
    assert_same_run(uninterrupted, run_dir)


# --- item 5: an epoch shortened by limit_train_batches, resumed from its end --------------------------------------


@pytest.mark.slow  # ~15 s: the default suite stays near 10 minutes
def test_a_limited_epoch_resumed_from_its_end_trains_and_logs_as_if_never_stopped(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train_py(*LIMITED, f"hydra.run.dir={whole}").returncode == 0
    result = train_py(*LIMITED, *signal_at(10, "SIGKILL"), f"hydra.run.dir={killed}")  # after epoch 0's last.ckpt
    assert result.returncode == -signal.SIGKILL
    assert last_state(killed)["global_step"] == 8  # the end of epoch 0
    resumed = train_py(*LIMITED, f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = sorted({(int(epoch), int(step)) for epoch, step, _, _ in logged_rows(killed)})
    assert steps == [(0, 7), (1, 15), (2, 23), (3, 24)]  # every epoch 8 steps with its validation row; the test
    assert_same_run(whole, killed)


# --- item 2: a completed run is never written into again -----------------------------------------------------------


@pytest.mark.parametrize("which", ["best", "last"])
def test_a_completed_runs_checkpoint_continues_in_a_new_run_dir_and_leaves_the_run_as_it_was(
    uninterrupted, tmp_path, which
):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(uninterrupted), str(run_dir)], check=True)  # the shared run stays untouched
    checkpoints = run_dir / "checkpoints"
    ckpt = next(checkpoints.glob("epoch000-*.ckpt"), None) if which == "best" else checkpoints / "last.ckpt"
    if ckpt is None:  # the best epoch was the last: continue from it all the same
        ckpt = next(checkpoints.glob("epoch*.ckpt"))
    before = tree_snapshot(run_dir)
    work = tmp_path / "work"
    work.mkdir()
    result = train_py(*RUN, f"ckpt_path={ckpt}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing from {ckpt} in a new run dir" in result.stderr
    assert f"{run_dir} is left as it is" in result.stderr
    assert tree_snapshot(run_dir) == before  # last.ckpt, the best checkpoint, logs and status as the run ended
    (new,) = (work / "outputs").glob("*/*")
    assert status(new) == "completed"


# --- item 13: threads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-3", "0"])
def test_threads_must_be_a_positive_whole_number_or_null(tmp_path, value):
    result = train_py(*RUN, f"threads={value}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "threads must be a positive whole number (or null: every core), got" in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before the run dir exists
