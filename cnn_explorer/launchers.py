"""Hydra launchers of train.py: joblib's, made to outlive a worker process that dies, and submitit's SLURM launcher,
made to resume a job that its time limit, a preemption or a requeue stopped.

hydra-joblib-launcher runs a sweep's jobs in loky worker processes. When one worker dies (``kill -9``, the
out-of-memory killer), loky breaks the whole pool: it kills the workers beside it, joblib raises
``TerminatedWorkerError``, and the jobs not yet started never run. :class:`ResilientJoblibLauncher` records the jobs
that were running as failed, runs the others in a new pool, and returns a result for every job, so that the sweep's
summary (:class:`cnn_explorer.hydra_callbacks.SweepSummary`) lists them all and exits 1.

hydra-submitit-launcher runs each job as a SLURM job. :class:`ResumingSlurmLauncher` makes a job that is started again
(requeued by submitit before its time limit, preempted and requeued by SLURM, ``scontrol requeue``) continue from its
job dir's ``checkpoints/last.ckpt``, and makes the job's exit status say how it ended, so that ``sacct`` does not
record a stopped or failed job as COMPLETED.
"""

from __future__ import annotations

import inspect
import logging
import math
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext
from hydra_plugins.hydra_joblib_launcher._core import execute_job, process_joblib_cfg
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from joblib import Parallel, delayed
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from cnn_explorer.config import CHECKPOINT_DIR, LAST_CHECKPOINT, hydra_value, register_resolvers
from cnn_explorer.run_status import process_exists, read_status, write_status
from cnn_explorer.signals import SignalAsSigterm

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
        assert self.config is not None and self.hydra_context is not None
        return sweep_job_dir(self.config, self.hydra_context, idx, overrides)


def sweep_job_dir(config: DictConfig, hydra_context: HydraContext, idx: int, overrides: Sequence[str]) -> Path:
    """Job ``idx``'s output dir, from its config composed as a launcher's job composes it (Hydra's ``run_job``)."""
    config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
        config.hydra.job.num = idx
    HydraConfig.instance().set_config(config)  # the dir's resolvers read Hydra's config
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


EXIT_SIGTERM = 128 + 15  # train.py's status for a run stopped by SIGTERM; SLURM records it as the job's exit code
# What a job does when it starts again (submitit's requeue, SLURM's preemption requeue, ``scontrol requeue``) and finds
# its job dir: a completed run is not trained again, a stopped one continues from its last.ckpt.
RESUMABLE = ("running", "interrupted")


class JobNotCompleted(RuntimeError):
    """Raised out of a SLURM job whose run failed or diverged, so that submitit and SLURM record a failed job (exit
    status 1) rather than COMPLETED; the message is the one in its ``run_status.json``."""


class ResumingSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's ``SlurmLauncher`` (same settings), whose jobs resume where they stopped and end with
    an exit status that says how the run ended.

    A sweep job's dir (``<sweep dir>/<job number>_<label>``) is fixed when the sweep is launched, so a job started
    again by SLURM finds the dir it wrote before. Then:

    - USR2, which submitit asks SLURM to send ``signal_delay_s`` before the time limit (and which a preemption with
      ``--signal`` sends), stops training at the end of the step in progress, as SIGTERM does: ``last.ckpt`` is
      saved, then submitit requeues the job (at most ``max_num_timeout`` times for time limits).
    - A job that starts and finds ``checkpoints/last.ckpt`` of a run that did not complete (stopped by USR2 or
      SIGTERM, or killed) continues from it with ``ckpt_path=``, in the same dir (train.py resumes it there);
      one that finds a completed run returns its recorded result without training again.
    - The job's exit status: 0 for a completed run; 143 for a run stopped by SIGTERM (``scancel``, a time limit
      reached without a requeue left, a preemption: SLURM records CANCELLED, TIMEOUT or PREEMPTED); 1 for a failed
      or diverged run (:class:`JobNotCompleted`: SLURM records FAILED).

    The sweep itself gets a result for every job, whatever happened to it (a job cancelled before it wrote a result
    included), and :class:`cnn_explorer.hydra_callbacks.SweepSummary` lists each job's ``run_status.json``.
    """

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        import submitit  # as the plugin does: importing it at start would slow every Hydra command

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        register_resolvers()  # the sweep's config names this project's resolvers; this process may not have them
        Singleton.set_state(singleton_state)
        setup_globals()
        environment = submitit.JobEnvironment()
        overrides = list(sweep_overrides)
        sweep_config = self._sweep_config(overrides, job_num, environment.job_id)
        job_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        status = read_status(job_dir)
        if status is not None and status["status"] == "completed":
            log.info("%s completed before this start of the job: not trained again", job_dir)
            return self._recorded(overrides, job_dir, status)
        last = job_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if last.is_file() and (status is None or status["status"] in RESUMABLE):
            log.info("%s: resuming from %s (this job was started again)", job_dir.name, last)
            overrides.append(f"ckpt_path={hydra_value(str(last))}")
            sweep_config = self._sweep_config(overrides, job_num, environment.job_id)

        requeue = SignalAsSigterm(signal.SIGUSR2)
        try:
            with requeue:
                job_return = run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key=job_dir_key,
                    job_subdir_key="hydra.sweep.subdir",
                )
        except SIGTERMException:  # USR2 before train.py's main caught it (Hydra's own code around the job)
            if not requeue.received:
                raise
            job_return = JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED)
        status = read_status(job_dir)
        ended = status["status"] if status is not None else None
        if requeue.received and ended != "completed" and callable(requeue.previous):
            # submitit's handler: checkpoint() resubmits this same call, `scontrol requeue`, and exits (or raises
            # when the job timed out max_num_timeout times). The next start resumes from last.ckpt.
            log.warning("USR2 (time limit near, or preempted): last.ckpt saved; handing the job back to submitit")
            requeue.previous(signal.SIGUSR2, None)
        if environment.global_rank != 0 or ended in (None, "completed"):
            return job_return  # a task function's own exception is still raised by run_job's JobReturn
        if ended == "interrupted":
            sys.exit(EXIT_SIGTERM)  # no result file: SLURM's state (CANCELLED, TIMEOUT, PREEMPTED) says what happened
        raise JobNotCompleted(f"{job_dir}: {ended}: {status.get('message', '')}")

    def _sweep_config(self, overrides: list[str], job_num: int, job_id: str) -> DictConfig:
        """The job's config, composed as the plugin composes it."""
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = job_id
            sweep_config.hydra.job.num = job_num
        HydraConfig.instance().set_config(sweep_config)  # the job dir's resolvers read hydra's config
        return sweep_config

    def _recorded(self, overrides: list[str], job_dir: Path, status: dict[str, Any]) -> JobReturn:
        """The result of a job that completed before: its ``optimized_metric`` as train.py recorded it."""
        assert self.config is not None
        value = status.get(str(self.config.get("optimized_metric") or "val/acc_best"), math.nan)
        return JobReturn(
            overrides=overrides,
            working_dir=str(job_dir),
            status=JobStatus.COMPLETED,
            _return_value=float(value) if isinstance(value, int | float) else math.nan,
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The plugin's ``launch`` (an array job, one task per sweep job), with a result for every job: a job that
        failed, or that SLURM ended before it wrote a result (``scancel``, a node lost), returns NaN, as a failed
        job does in train.py, and the sweep goes on to its summary."""
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
        )
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {key: value for key, value in self.params.items() if key not in ("submitit_folder", "max_num_timeout")}
        # The job's Python unpickles this launcher by its class's module, hydra_plugins/ beside train.py, which is not
        # an installed package: the job finds it, and train.py's other modules, on its PYTHONPATH.
        root = Path(inspect.getfile(type(self))).resolve().parent.parent
        params["setup"] = [
            *(params.get("setup") or []),
            f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}",
        ]
        executor.update_parameters(
            **{key if key in queue_keys else f"{self._EXECUTOR}_{key}": value for key, value in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        calls = []
        for position, overrides in enumerate(job_overrides):
            idx = initial_job_idx + position
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            calls.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*calls, strict=True))
        return [
            self._result(job, overrides, initial_job_idx + i)
            for i, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True))
        ]

    def _result(self, job: Any, overrides: Sequence[str], idx: int) -> JobReturn:
        """The job's result; NaN for a job that did not complete, with why in the log. Its run_status.json, read by
        the sweep's summary, says how the run ended; a job that SLURM ended before it could record that (killed
        before train.py started, or SIGKILLed) is recorded as failed, with SLURM's reason."""
        assert self.config is not None and self.hydra_context is not None
        try:
            return job.results()[0]
        except Exception as err:  # submitit re-raises the job's exception, or says SLURM ended it without a result
            reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
            log.error("job #%d (SLURM job %s) did not complete: %s", idx, job.job_id, reason)
            job_dir = sweep_job_dir(self.config, self.hydra_context, idx, overrides)
            status = read_status(job_dir)
            if status is None or status["status"] == "running":
                job_dir.mkdir(parents=True, exist_ok=True)
                write_status(
                    job_dir,
                    "failed",
                    f"SLURM job {job.job_id} ended before the run recorded how it ended ({reason}); "
                    f"its log: {job.paths.stderr}",
                )
            return JobReturn(
                overrides=list(overrides), working_dir=str(job_dir), status=JobStatus.COMPLETED, _return_value=math.nan
            )
