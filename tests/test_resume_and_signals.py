"""Stopping and resuming as a user does it, through train.py in a subprocess: Ctrl-C, the printed resume command
pasted into a shell, a completed run's checkpoints, an epoch cut short by ``limit_train_batches``, ``threads``."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.interruption import CheckpointOnSigterm
from cnn_explorer.signals import SignalAsSigterm, StoppedAtOnce
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


# --- issue 20 item 2: a sweep job's printed resume command, run as printed -----------------------------------------


def test_a_sweep_jobs_printed_resume_command_run_as_printed_resumes_it_exactly(uninterrupted, tmp_path):
    sweep_dir = tmp_path / "a b" / "sweep"  # a space; the job folder adds = and , (0_seed=42,data=synthetic,...)
    step = STEPS_PER_EPOCH + 5
    stopped = train_py("-m", *RUN, *signal_at(step, "SIGTERM"), "seed=42", f'hydra.sweep.dir="{sweep_dir}"')
    assert stopped.returncode == 1, stopped.stderr[-3000:]  # the sweep's summary: a job did not complete
    (job,) = sweep_dir.glob("0_*")
    assert "=" in job.name and "," in job.name
    assert status(job) == "interrupted" and last_state(job)["global_step"] == step

    printed = stopped.stderr.split("resume exactly from there with: ")[1].splitlines()[0]
    program, script, *arguments = shlex.split(printed)  # as a shell splits it
    assert (program, script) == ("python", "train.py")
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {job} from where it stopped" in resumed.stderr
    assert status(job) == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b"]  # resumed in the job's dir, no new one
    assert_same_run(uninterrupted, job)


# --- issue 20 item 1: USR2, which submitit has SLURM send before the time limit, stops training as SIGTERM does ---


class SignalAt(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_usr2_stops_training_after_the_step_in_progress_with_last_ckpt_saved(tmp_path):
    before = signal.getsignal(signal.SIGUSR2)
    saver = CheckpointOnSigterm(str(tmp_path))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=10,
        limit_val_batches=0,
        callbacks=[saver, SignalAt(3, signal.SIGUSR2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with SignalAsSigterm(signal.SIGUSR2) as usr2, pytest.raises(SIGTERMException) as stop:
        trainer.fit(BoringModel())
    assert not isinstance(stop.value, StoppedAtOnce)  # at a step boundary, not where the signal arrived
    assert usr2.received == 1 and saver.saved == tmp_path / "last.ckpt"
    assert torch.load(saver.saved, weights_only=True)["global_step"] == 3  # the 3 steps done, none half done
    assert signal.getsignal(signal.SIGUSR2) is before  # the handler it replaced is back


def test_usr2_outside_training_stops_at_once():
    with pytest.raises(StoppedAtOnce), SignalAsSigterm(signal.SIGUSR2) as usr2:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert usr2.received == 1


# --- issue 20 item 6: SIGTERM during the end-of-epoch views --------------------------------------------------------
# Measured (2 shared cores, threads=1, the TINY run's views at epoch 0): from SIGTERM at the start of the views to the
# process's exit 13.8 s, as every view still drew (Attribution 6.2 s, FeatureMap 3.6 s, ExplanationScores 7.3 s,
# FeatureStats 3.2 s, ...); with the schedule stopping between views, 9.1 s (the view in progress, then ~3.6 s to
# save last.ckpt and exit). SLURM sends SIGKILL 30 s after SIGTERM.


def test_sigterm_during_the_views_stops_the_views_not_yet_drawn(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks.base import View
    from callbacks.schedule import ViewSchedule

    drawn = []

    class FirstView(View):  # the schedule draws never-drawn views by name: this one first
        def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            drawn.append("first")
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's SIGTERM while this view draws

    class SecondView(View):
        def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            drawn.append("second")

    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[ViewSchedule(), FirstView(), SecondView()],
        logger=TensorBoardLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert drawn == ["first"]


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
