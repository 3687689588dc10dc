"""Sweeps on Hydra's own engines, as a user starts them: jobs side by side (joblib), through submitit's local
executor (SLURM's code path), HParams for comparing the runs, and job folders whose names stay short whatever the
overrides. The Optuna sweeper's tests: tests/test_optuna.py."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cnn_explorer.config import JOB_LABEL_LENGTH
from tests.conftest import TINY_MINIMAL, run_cli

SHORTER = ["trainer.max_epochs=1", "data.source.train_size=400", "data.val_size=100"]
JOB = [o for o in TINY_MINIMAL if o.split("=")[0] not in {s.split("=")[0] for s in SHORTER}] + SHORTER


def jobs(sweep: Path) -> list[Path]:
    return sorted(
        (p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0])
    )


def completed(job: Path) -> dict:
    status = json.loads((job / "run_status.json").read_text())
    assert status["status"] == "completed", status
    return status


def log_times(job: Path) -> tuple[datetime, datetime]:
    """First and last time stamp of the job's train.log: when it ran."""
    stamps = [line[1:24] for line in (job / "train.log").read_text().splitlines() if line.startswith("[20")]
    return datetime.fromisoformat(stamps[0].replace(",", ".")), datetime.fromisoformat(stamps[-1].replace(",", "."))


def test_joblib_runs_two_jobs_side_by_side(tmp_path):
    result = run_cli("train.py", "-m", *JOB, "hydra/launcher=parallel", "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = jobs(tmp_path)
    completed(first), completed(second)
    (start_a, end_a), (start_b, end_b) = log_times(first), log_times(second)
    assert start_a < end_b and start_b < end_a  # their lifetimes overlap: they ran at the same time
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr


def test_submitit_local_runs_a_sweep_through_submitits_code_path(tmp_path):
    result = run_cli("train.py", "-m", *JOB, "hydra/launcher=submitit_local", "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [completed(job)["status"] for job in jobs(tmp_path)] == ["completed", "completed"]
    assert list((tmp_path / ".submitit").iterdir())  # submitit's own job folders: it really ran them


def test_the_slurm_launcher_config_composes():
    result = run_cli("train.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr
    launcher = OmegaConf.create(result.stdout).hydra.launcher
    assert launcher._target_ == "hydra_plugins.cnn_explorer_launchers.ResumingSlurmLauncher"
    assert launcher.max_num_timeout == 10  # a long job survives its time limit: requeued up to 10 times
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == ("gpu", 1, 1, 1)


def test_hparams_of_each_job_hold_its_settings_and_final_metrics(tmp_path):
    result = run_cli("train.py", "-m", *JOB, "model=small,deep", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    for job, model in zip(jobs(tmp_path), ("small", "deep"), strict=True):
        events = EventAccumulator(str(job))
        events.Reload()
        content = events.PluginTagToContent("hparams")
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert hparams.session_start_info.hparams["model"].string_value == model
        assert events.Scalars("hparams/val_acc_best")[0].value == pytest.approx(completed(job)["val/acc_best"])
        assert events.Scalars("hparams/test_acc")[0].value == pytest.approx(completed(job)["test/acc"])
        assert "_hparams_/experiment" not in content  # the sweep declares one experiment for all its jobs
    sweep = EventAccumulator(str(tmp_path))
    sweep.Reload()
    content = sweep.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    # What differs between the jobs first (the model), both values in its domain; test accuracy the first metric.
    assert experiment.hparam_infos[0].name == "model"
    assert [v.string_value for v in experiment.hparam_infos[0].domain_discrete.values] == ["deep", "small"]
    assert experiment.metric_infos[0].name.tag == "hparams/test_acc"


def test_a_sweep_with_twelve_long_overrides_keeps_its_folder_names_short(tmp_path):
    long = [f"+note{i}=a_rather_long_value_that_someone_typed_to_remember_what_this_run_was_for_{i}" for i in range(11)]
    result = run_cli("train.py", "-m", *JOB, *long, "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    names = [job.name for job in jobs(tmp_path)]
    assert len(names) == 2 and all(len(name) <= JOB_LABEL_LENGTH + 3 for name in names)
    assert names == ["0_seed=1", "1_seed=2"]  # only what tells the jobs apart
    overrides = list(OmegaConf.load(jobs(tmp_path)[0] / ".hydra" / "overrides.yaml"))
    assert overrides[-12:] == [*long, "seed=1"]  # every override kept in full


@pytest.mark.slow  # ~15 s: the default suite stays near 10 minutes
def test_a_joblib_worker_killed_mid_sweep_fails_its_job_and_the_rest_still_run(tmp_path):
    """Job 0 kills its own worker (kill -9) at its second step: loky breaks the pool, and with it job 1 if it is
    still running; job 2 has not started. It runs in a new pool, and the summary lists every job (issue 17, 3)."""
    killer = ["+callbacks.killer._target_=tests.interrupt.SignalAtStep", "+callbacks.killer.signal_name=SIGKILL"]
    steps = "+callbacks.killer.step=2,-1,-2"  # only job 0 reaches its step
    result = run_cli("train.py", "-m", *JOB, "hydra/launcher=parallel", *killer, steps, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    killed, beside, later = jobs(tmp_path)
    status = json.loads((killed / "run_status.json").read_text())
    assert status["status"] == "failed" and "worker process was killed" in status["message"]
    assert json.loads((beside / "run_status.json").read_text())["status"] in ("failed", "completed")  # not running
    completed(later)
    summary = result.stderr[result.stderr.index(f"sweep {tmp_path}: 3 jobs") :]
    assert f"{killed.name}: failed - its worker process was killed" in summary
    assert f"{later.name}: completed" in summary
