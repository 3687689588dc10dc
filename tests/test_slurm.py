"""Sweeps on a real SLURM cluster through ``hydra/launcher=slurm``: jobs complete, a job whose time limit falls mid-run
resumes where it stopped, ``scancel`` of one job leaves the other. Skipped unless ``sinfo`` answers: on a machine
without a cluster, ``sudo tools/slurm/start_local_slurm.sh`` starts a one-node one (Debian's slurm-wlm, munge,
slurmdbd with MariaDB) on localhost. Each test takes minutes: they run real jobs, with sleeps in their steps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from tests.conftest import ROOT, TINY_MINIMAL, run_cli
from tests.test_resume_and_signals import assert_same_run

pytestmark = pytest.mark.slow

RUN = [*TINY_MINIMAL, "test=false", "threads=1"]  # 13 steps an epoch
# One CPU and little memory a job, so two jobs run side by side on a two-core machine.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]
SLURM += ["hydra.launcher.gpus_per_node=0", "hydra.launcher.timeout_min=10"]


class SleepPerStep(L.Callback):
    """Sleeps ``seconds`` after every training step: a slow epoch that costs no CPU, and changes no number."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


def slow(seconds: float) -> list[str]:
    return ["+callbacks.slow._target_=tests.test_slurm.SleepPerStep", f"+callbacks.slow.seconds={seconds}"]


def slurm_answers() -> bool:
    """Whether ``sinfo`` answers with a node that can run jobs."""
    if shutil.which("sinfo") is None:
        return False
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    unusable = ("down", "drain", "drained", "draining", "fail", "failing", "unknown", "not_responding")
    return result.returncode == 0 and any(s.strip("*~#!%$@^-") not in unusable for s in result.stdout.split())


@pytest.fixture(autouse=True, scope="module")
def cluster() -> None:
    # A fixture, not a check at import: the jobs import this module too (for SleepPerStep).
    if not slurm_answers():
        pytest.skip("no SLURM cluster answers (sinfo); sudo tools/slurm/start_local_slurm.sh starts one")


def sweep(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """``python train.py -m hydra/launcher=slurm ...`` started from ``tmp_path``, its sweep dir ``tmp_path/sweep``."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *SLURM,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_status.json").read_text())


def slurm_states(job_id: str) -> dict[str, str]:
    """SLURM's accounting: job (or array task) id -> state, for the job's allocations (not its steps)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def slurm_job(sweep_dir: Path, timeout: float = 300) -> str:
    """The SLURM id of the sweep's job 0, from submitit's folders: ``<array id>_0``, or ``<id>`` for a one-job
    sweep (its folder then holds the job's pickle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        folders = [p for p in (sweep_dir / ".submitit").glob("*") if re.fullmatch(r"\d+(_\d+)?", p.name)]
        found = [p.name for p in folders if p.name.endswith("_0") or list(p.glob("*_submitted.pkl"))]
        if found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"no job submitted under {sweep_dir}")


def test_a_two_job_sweep_completes(tmp_path):
    code, stderr = finish(sweep(tmp_path, *RUN, "seed=1,2"))
    assert code == 0, stderr[-3000:]
    assert "2 jobs, 2 completed, 0 not" in stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]_*"))
    assert [status(job)["status"] for job in jobs] == ["completed", "completed"]
    states = slurm_states(slurm_job(tmp_path / "sweep").split("_")[0])
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED"], states


def test_a_job_whose_time_limit_falls_mid_run_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    # 3 epochs of 13 steps, 3 s each: ~2 minutes of training in a 2-minute limit. SLURM sends USR2 30 s before the
    # limit (up to a minute earlier: its timer's resolution); the job saves last.ckpt, submitit requeues it, and
    # the next start resumes from it. The uninterrupted run: the same settings, no sleeps, in one process.
    settings = [*RUN, "trainer.max_epochs=3", "seed=1"]
    reference = tmp_path / "reference"
    assert run_cli("train.py", *settings, f"hydra.run.dir={reference}").returncode == 0
    limited = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30"]
    code, stderr = finish(sweep(tmp_path, *settings, *slow(3), *limited))
    assert code == 0, stderr[-3000:]
    assert "1 jobs, 1 completed, 0 not" in stderr
    (job,) = (tmp_path / "sweep").glob("0_*")
    assert status(job)["status"] == "completed"
    assert list(job.glob(".hydra/resumed-*")), "the job was not started again (its time limit did not fall mid-run?)"
    submitit_log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert "Caught signal SIGUSR2" in submitit_log and "Requeued job" in submitit_log
    assert f"resuming {job} from where it stopped (last.ckpt)" in (job / "train.log").read_text()
    assert_same_run(reference, job)  # the same weights, step and logged values


def test_scancel_of_one_job_leaves_the_other_finishing_and_the_summary_right(tmp_path):
    process = sweep(tmp_path, *RUN, *slow(1), "seed=1,2")  # ~30 s of training a job
    sweep_dir = tmp_path / "sweep"
    job_id = slurm_job(sweep_dir).split("_")[0]
    deadline = time.monotonic() + 300
    while not list(sweep_dir.glob("0_*/checkpoints/last.ckpt")):  # job 0 is in its second epoch
        assert time.monotonic() < deadline and process.poll() is None, "job 0 never reached its first checkpoint"
        time.sleep(1)
    subprocess.run(["scancel", f"{job_id}_0"], check=True)
    code, stderr = finish(process)
    assert code == 1, stderr[-3000:]
    assert "2 jobs, 1 completed, 1 not" in stderr
    (first,), (second,) = sweep_dir.glob("0_*"), sweep_dir.glob("1_*")
    assert status(first)["status"] == "interrupted" and "stopped by SIGTERM" in status(first)["message"]
    assert status(second)["status"] == "completed"
    assert slurm_states(job_id) == {f"{job_id}_0": "CANCELLED by 0", f"{job_id}_1": "COMPLETED"}


def test_a_job_requeued_by_slurm_as_on_preemption_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    # `scontrol requeue` does what a preemption with PreemptMode=REQUEUE does: SIGTERM (the job saves last.ckpt at
    # the step in progress and records `interrupted`), then the same job starts again (~2 minutes later) and resumes.
    settings = [*RUN, "seed=1"]
    reference = tmp_path / "reference"
    assert run_cli("train.py", *settings, f"hydra.run.dir={reference}").returncode == 0
    process = sweep(tmp_path, *settings, *slow(1))
    sweep_dir = tmp_path / "sweep"
    job_id = slurm_job(sweep_dir)
    deadline = time.monotonic() + 300
    while not list(sweep_dir.glob("0_*/checkpoints/last.ckpt")):  # in its second epoch
        assert time.monotonic() < deadline and process.poll() is None, "the job never reached its first checkpoint"
        time.sleep(1)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    code, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    assert "1 jobs, 1 completed, 0 not" in stderr
    (job,) = sweep_dir.glob("0_*")
    assert list(job.glob(".hydra/resumed-*")) and status(job)["status"] == "completed"
    assert_same_run(reference, job)
