"""Hydra callbacks of train.py: check a run's config before Hydra creates anything, summarize a sweep's jobs.

Registered in conf/hydra/default.yaml (``hydra.callbacks``). Hydra calls ``on_run_start`` before it makes the
run dir, writes ``.hydra/`` and opens ``train.log``: a refused config or checkpoint leaves no file behind.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnn_explorer.config import check_resume, created_run_dir, new_run_dir, remove_new_run_dir, validate_train_config
from cnn_explorer.errors import UserError
from cnn_explorer.run_status import STATUS_FILE, read_status
from cnn_explorer.tensorboard_hparams import declare_sweep

RUN_DIR = "${hydra:runtime.output_dir}"  # conf/train.yaml's run_dir
_entries_before: dict[Path, frozenset[str]] = {}  # an existing hydra.run.dir -> the names in it before this run


class CheckBeforeStart(Callback):
    """Validate a single run's config (and its ``ckpt_path``) before Hydra writes anything; exit 1 if refused."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate_train_config(config)
            _check_output_dir(config)
            if config.get("ckpt_path"):
                check_resume(config)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        _note_run_dir(config)


def _note_run_dir(config: DictConfig) -> None:
    """Before Hydra writes into a ``hydra.run.dir`` given as a plain path: make it if it does not exist (recorded
    as made by this run, like the default dir), or note what is in it, so that :func:`remove_refused_run` removes
    what a run refused before training left behind, and nothing else."""
    given = str(OmegaConf.to_container(config.hydra.run, resolve=False)["dir"])
    if "${" in given:
        return  # the default dir (made by config.new_run_dir) or a resumed run's dir
    if not Path(given).exists():
        new_run_dir(given)
    elif Path(given).is_dir():
        _entries_before[Path(given).resolve()] = frozenset(os.listdir(given))


def remove_refused_run(run_dir: Path) -> bool:
    """Remove what a run refused before it trained left in ``run_dir``: the whole dir (and the folders above it)
    if this run made it, else the files and folders it added to an existing ``hydra.run.dir``.

    Returns:
        Whether no trace of the run is left; False also when a ``run_status.json`` was there before (the caller
        records the failure in it) or ``run_dir`` was not noted (a resumed run's dir: nothing is removed).
    """
    if created_run_dir(run_dir):
        remove_new_run_dir(run_dir)
        return True
    before = _entries_before.get(Path(run_dir).resolve())
    if before is None:
        return False
    for entry in Path(run_dir).iterdir():
        if entry.name in before:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return STATUS_FILE not in before


def _check_output_dir(config: DictConfig) -> None:
    """A ``hydra.run.dir`` given as a plain path must not be a file (the default is made new, see config.py), and
    ``run_dir`` must stay Hydra's output dir, where ``.hydra/`` and ``train.log`` go and resuming looks."""
    given = OmegaConf.to_container(config.hydra.run, resolve=False)["dir"]
    if "${" not in str(given) and Path(str(given)).exists() and not Path(str(given)).is_dir():
        raise UserError(f"hydra.run.dir={given} is a file, not a folder; give a folder for the run's outputs")
    run_dir = OmegaConf.to_container(config, resolve=False).get("run_dir")
    if run_dir != RUN_DIR:
        raise UserError(
            f"run_dir={run_dir}: a run writes into Hydra's output dir; choose it with hydra.run.dir={run_dir} "
            f"(for a sweep, -m: hydra.sweep.dir=...), and leave run_dir as it is"
        )


class SweepSummary(Callback):
    """At the end of a sweep, declare its TensorBoard HParams experiment over the jobs' settings (what differs
    first: :func:`~cnn_explorer.tensorboard_hparams.declare_sweep`), and list every job's status from its
    ``run_status.json``; exit 1 if any job failed.

    Jobs record their own status and settings, so this works with every launcher (jobs in this process, in
    joblib workers, or on SLURM nodes through submitit).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = sorted(
            (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()),
            key=lambda p: int(p.name.split("_")[0]),
        )
        rows = []
        for job in jobs:
            status = read_status(job) or {"status": "unknown", "message": "no run_status.json (did the job start?)"}
            rows.append((job.name, status["status"], status.get("message", "")))
        failed = [row for row in rows if row[1] != "completed"]
        lines = [f"sweep {sweep_dir}: {len(rows)} jobs, {len(rows) - len(failed)} completed, {len(failed)} not"]
        lines += [f"  {name}: {status}{f' - {message}' if message else ''}" for name, status, message in rows]
        print("\n".join(lines), file=sys.stderr)
        declare_sweep(sweep_dir, jobs)
        if failed:
            sys.exit(1)
