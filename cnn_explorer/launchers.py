"""Hydra launchers of train.py: joblib's, made to outlive a worker process that dies.

hydra-joblib-launcher runs a sweep's jobs in loky worker processes. When one worker dies (``kill -9``, the
out-of-memory killer), loky breaks the whole pool: it kills the workers beside it, joblib raises
``TerminatedWorkerError``, and the jobs not yet started never run. :class:`ResilientJoblibLauncher` records the jobs
that were running as failed, runs the others in a new pool, and returns a result for every job, so that the sweep's
summary (:class:`cnn_explorer.hydra_callbacks.SweepSummary`) lists them all and exits 1.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher._core import execute_job, process_joblib_cfg
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib import Parallel, delayed
from omegaconf import open_dict

from cnn_explorer.run_status import process_exists, read_status, write_status

log = logging.getLogger(__name__)
KILLED = (
    "its worker process was killed while it ran (kill -9, or out of memory?); joblib then stops the jobs running "
    "beside it too. The sweep's other jobs went on; run this job again with the overrides in its .hydra/overrides.yaml"
)


def _numbered_job(position: int, *args: Any) -> tuple[int, JobReturn]:
    """Run one job in a worker (as the plugin does) and say which one it was: results arrive in any order."""
    return position, execute_job(*args)


class ResilientJoblibLauncher(JoblibLauncher):
    """hydra-joblib-launcher's ``JoblibLauncher`` (same settings), which goes on when a worker process dies.

    The jobs that were running in the broken pool are recorded as ``failed`` in their ``run_status.json``
    (see :meth:`_lost_jobs`); the jobs that had not started run in a new pool.
    """

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        joblib_cfg = {**self.joblib, "backend": "loky"}  # the plugin's choice: threads do not work with Hydra
        process_joblib_cfg(joblib_cfg)
        log.info(
            "Joblib.Parallel(%s) is launching %d jobs",
            ",".join(f"{k}={v}" for k, v in joblib_cfg.items()),
            len(job_overrides),
        )
        for position, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + position, " ".join(filter_overrides(overrides)))

        pending = dict(enumerate(job_overrides))  # position in this batch -> overrides
        returns: dict[int, JobReturn] = {}
        while pending:
            try:
                for position, job_return in self._run(pending, initial_job_idx, joblib_cfg):
                    returns[position] = job_return
                    del pending[position]
            except BrokenProcessPool as err:
                lost = self._lost_jobs(pending, initial_job_idx)
                if not lost:  # none of the jobs had started: a new pool would break the same way
                    raise
                log.error(
                    "a worker process died (%s): %d jobs lost with the pool, %d still to run",
                    type(err).__name__,
                    len(lost),
                    len(pending) - len(lost),
                )
                for position, job_return in lost.items():
                    returns[position] = job_return
                    del pending[position]
        return [returns[position] for position in range(len(job_overrides))]

    def _run(
        self, jobs: dict[int, Sequence[str]], initial_job_idx: int, joblib_cfg: dict[str, Any]
    ) -> Iterator[tuple[int, JobReturn]]:
        """Start ``jobs`` in a joblib pool; yields each job's result as it finishes."""
        singleton_state = Singleton.get_state()
        return Parallel(**joblib_cfg, return_as="generator_unordered")(
            delayed(_numbered_job)(
                position,
                initial_job_idx + position,
                overrides,
                self.hydra_context,
                self.config,
                self.task_function,
                singleton_state,
            )
            for position, overrides in list(jobs.items())
        )

    def _lost_jobs(self, jobs: dict[int, Sequence[str]], initial_job_idx: int) -> dict[int, JobReturn]:
        """The jobs among ``jobs`` that started in the broken pool, each with the result the sweep gets for it.

        A job whose ``run_status.json`` still says ``running`` died with the pool: it is recorded as failed and
        returns NaN, as a job that fails in train.py does. One that ended first keeps its status and returns its
        ``optimized_metric`` (completed) or NaN. A job with no status had not started training: it runs again.
        """
        assert self.config is not None
        metric = str(self.config.get("optimized_metric") or "val/acc_best")  # what train.py's main() returns
        lost = {}
        for position, overrides in jobs.items():
            job_dir = self._job_dir(initial_job_idx + position, overrides)
            status = read_status(job_dir)
            if status is None:
                continue
            if status["status"] == "running" and _has_ended(status.get("pid")):
                write_status(job_dir, "failed", KILLED)
            value = status.get(metric, math.nan) if status["status"] == "completed" else math.nan
            lost[position] = JobReturn(
                overrides=list(overrides),
                working_dir=str(job_dir),
                status=JobStatus.COMPLETED,  # like train.py's failed sweep job: a value, and the sweep goes on
                _return_value=float(value) if isinstance(value, int | float) else math.nan,
            )
        return lost

    def _job_dir(self, idx: int, overrides: Sequence[str]) -> Path:
        """Job ``idx``'s output dir, from its config as the worker composed it (see the plugin's ``execute_job``)."""
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
            config.hydra.job.num = idx
        HydraConfig.instance().set_config(config)
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def _has_ended(pid: Any, wait_s: float = 10.0) -> bool:
    """Whether process ``pid`` has ended, waiting up to ``wait_s`` for it: loky kills the broken pool's workers
    while joblib already reports the error."""
    deadline = time.monotonic() + wait_s
    while isinstance(pid, int) and time.monotonic() < deadline:
        if not process_exists(pid):
            return True
        time.sleep(0.1)
    return False
