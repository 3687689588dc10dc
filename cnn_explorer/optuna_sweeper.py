"""A Hydra sweeper that searches hyperparameters with Optuna (4 or 5), for ``hparams_search=optuna``.

hydra-optuna-sweeper 1.3, the last release of Hydra's own plugin, pins ``optuna<3``, keeps the study in memory and
stops the study at the first trial whose job returns NaN (train.py's failed sweep job). This sweeper:

- keeps the study in a database: SQLite in the sweep dir (``<sweep dir>/optuna.db``) unless ``storage`` names
  another (an RDB URL that several sweeps, e.g. SLURM array jobs, share through ``study_name``). Running the same
  command again with the same ``hydra.sweep.dir`` resumes the study: the trials it had are kept, the ones left
  running by a sweep that crashed are recorded as failed, and only the trials still missing up to ``n_trials``
  (complete or pruned) are run;
- launches the trials in batches of ``n_jobs`` through the configured Hydra launcher (joblib, submitit), so each
  trial is one sweep job with its own run dir;
- records a job that fails (it returns NaN, or raises) as a failed trial (``TrialState.FAIL``) and goes on; the
  job's ``run_status.json`` says failed, so the sweep's summary (:class:`~cnn_explorer.hydra_callbacks.SweepSummary`)
  lists it and the sweep exits 1;
- prunes: each job gets its trial as ``optuna_trial={storage:..,study:..,number:..}``; the callback
  ``callbacks.optuna_pruning.OptunaPruning`` reports val/acc each epoch and stops the run when the pruner says so,
  and the sweeper then records the trial as pruned;
- writes Optuna's own plots (optimization history, parameter importances, intermediate values) as PNGs and the
  best trial into ``optimization_results.yaml`` in the sweep dir.

The search space is written in Hydra's override grammar (``conf/hparams_search/optuna.yaml``, ``params``), as with
hydra-optuna-sweeper: ``choice(a, b)`` -> categorical (lists and dicts too: ``choice([32,M,64,M], [64,M])``),
``interval(lo, hi)`` -> uniform floats, ``tag(log, interval(lo, hi))`` -> log-uniform, ``tag(int, interval(lo,
hi))`` -> whole numbers (both tags: log-uniform whole numbers), ``range(start, stop, step)`` -> stepped (``stop``
excluded, as in Python). A sweep on the command line (``model.net.hidden=choice(64,128)``, ``seed=1,2``) joins the
space; a plain value there fixes the key for every trial.

Registered with Hydra by hydra_plugins/cnn_explorer_sweepers.py (``hydra/sweeper=optuna``).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from cnn_explorer.config import hydra_value
from cnn_explorer.errors import UserError
from cnn_explorer.run_status import read_status, write_status

log = logging.getLogger(__name__)
DIRECTIONS = ("maximize", "minimize")
DATABASE = "optuna.db"  # the default storage: SQLite in the sweep dir
RESULTS = "optimization_results.yaml"  # the best trial, as hydra-optuna-sweeper wrote it
PLOTS = ("optimization_history", "param_importances", "intermediate_values")  # <name>.png in the sweep dir
TRIAL_KEY = "optuna_trial"  # the job config's key that names its trial (conf/hparams_search/optuna.yaml)
SQLITE_TIMEOUT_S = 60  # how long a writer waits for SQLite's lock: jobs side by side report at the same moments
PRUNED_AT = "pruned_at_epoch"  # the user attribute by which a job's pruning callback says it stopped the run
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials n_trials counts


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper`` for ``hydra/sweeper=optuna``; conf/hparams_search/optuna.yaml fills it in.

    ``sampler`` and ``pruner`` are Optuna classes as ``_target_`` configs; ``_recursive_: false`` hands them to
    the sweeper as configs, so it can seed the sampler anew when it resumes a study and the jobs can build the
    pruner (``${hydra:sweeper.pruner}``).
    """

    _target_: str = "hydra_plugins.cnn_explorer_sweepers.OptunaSweeper"
    _recursive_: bool = False
    direction: str = "maximize"  # of the value train.py's main returns (``optimized_metric``)
    n_trials: int = 20  # complete or pruned trials the study should hold when the sweep ends
    n_jobs: int = 1  # trials per batch, launched together (set the launcher's n_jobs to match)
    storage: str | None = None  # null: sqlite:///<sweep dir>/optuna.db
    study_name: str | None = None  # null: the sweep dir's name; required with an explicit storage
    sampler: Any = None  # null: optuna.samplers.TPESampler()
    pruner: Any = None  # null: never prune (the jobs still report their per-epoch values)
    params: dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep: choice(..), interval(..), range(..)


@dataclass(frozen=True)
class TrialRef:
    """Where a job finds its trial: the study's storage URL, the study's name and the trial's number."""

    storage: str
    study: str
    number: int

    def override(self) -> str:
        """The job override that hands this trial to the job (read back by :func:`open_trial`)."""
        return (
            f"{TRIAL_KEY}={{storage:{hydra_value(self.storage)},study:{hydra_value(self.study)},number:{self.number}}}"
        )


class OptunaSweeper(Sweeper):
    """Hydra sweeper over an Optuna study; see the module docstring and :class:`OptunaSweeperConf`.

    Raises:
        ValueError: on a direction, ``n_trials`` or ``n_jobs`` it cannot use (the message lists the allowed values).
    """

    def __init__(
        self,
        direction: str,
        n_trials: int,
        n_jobs: int,
        storage: str | None,
        study_name: str | None,
        sampler: DictConfig | None,
        pruner: DictConfig | None,
        params: Mapping[str, str] | None,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"hydra.sweeper.{name} must be a whole number >= 1, got {value!r}")
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.storage, self.study_name = storage, study_name
        self.sampler, self.pruner = sampler, pruner
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.sweep_dir = Path()  # set by sweep()
        self.unlisted_failures: list[int] = []  # failed trials without a job dir: the sweep's summary misses them

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> optuna.Study:
        """Run the study up to ``n_trials`` complete or pruned trials; returns it (Hydra ignores the value).

        A mistake the user can fix (a search space Optuna cannot sample, a study stored with the other direction,
        a shared storage without a study name) is printed without a traceback, and the process exits 1.
        """
        try:
            return self._sweep(arguments)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    def _sweep(self, arguments: list[str]) -> optuna.Study:
        assert self.config is not None and self.launcher is not None
        if int(os.environ.get("LOCAL_RANK") or 0) > 0:
            # Lightning's ddp strategy starts ranks 1.. by running the command line again: here, the whole sweep.
            raise UserError(
                f"this process is rank {os.environ['LOCAL_RANK']} of a trial's DDP run, which Lightning's "
                f"trainer.strategy=ddp starts by running the command again, and so a second sweep; run DDP trials "
                f"with trainer.strategy=ddp_spawn, or on SLURM with one task per device (hydra/launcher=slurm)"
            )
        self.sweep_dir = sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper: the sweep's settings
        space = search_space(self.params, arguments)
        study = self._study(sweep_dir)
        for trial in stale_trials(study, sweep_dir):
            tell(study, trial.number, state=TrialState.FAIL)
            log.warning("trial %d was left running by a sweep that stopped: recorded as failed", trial.number)
        left = self.n_trials - count(study, DONE)  # this sweep's trials to run
        log.info(
            "Optuna study %r in %s: %d trials so far, %d to run; after a crash, the same command with "
            "hydra.sweep.dir=%s resumes it",
            study.study_name,
            shown_url(self._storage_url(sweep_dir)),
            len(study.trials),
            max(left, 0),
            shlex.quote(hydra_value(str(sweep_dir))),
        )
        exhausted = False
        while not exhausted and (batch := self._batch_size(study, left)) > 0:
            trials = [study.ask(space.distributions) for _ in range(batch)]
            for trial in trials:
                trial.set_user_attr("sweep_dir", str(sweep_dir))  # whose trial it is, should this sweep crash
            left -= batch
            for trial, job in self._launch(study, trials, space, sweep_dir):
                exhausted |= self._record(study, trial, job)
        if exhausted:
            log.info("the sampler has tried every point of the search space: the study ends here")
        write_results(study, sweep_dir)
        objective = str(self.config.get("optimized_metric") or "Objective Value")
        reported = str(OmegaConf.select(self.config, "callbacks.optuna_pruning.monitor", default="Intermediate Value"))
        write_plots(study, sweep_dir, objective, reported)
        log.info("%s", summary(study))
        if self.unlisted_failures:  # the others are in the sweep's summary, which exits 1 for them
            raise UserError(
                f"Optuna trials {', '.join(map(str, self.unlisted_failures))} failed before their jobs made a run dir"
            )
        return study

    def _storage_url(self, sweep_dir: Path) -> str:
        return self.storage or f"sqlite:///{sweep_dir / DATABASE}"

    def _study(self, sweep_dir: Path) -> optuna.Study:
        """The study, created or loaded; the sampler seeded anew when it resumes one (see :func:`build_sampler`)."""
        if self.storage and not self.study_name:
            raise UserError(
                f"hydra.sweeper.storage={shown_url(self.storage)} is set: name the study too "
                f"(hydra.sweeper.study_name=NAME), so that the sweeps sharing this storage share one study"
            )
        storage = open_storage(self._storage_url(sweep_dir))
        name = self.study_name or sweep_dir.name
        so_far: list[FrozenTrial] = []
        if name in {s.study_name for s in storage.get_all_studies()}:
            stored = optuna.load_study(study_name=name, storage=storage)
            if stored.direction.name.lower() != self.direction:
                raise UserError(
                    f"the Optuna study {name!r} in {shown_url(self._storage_url(sweep_dir))} was made to "
                    f"{stored.direction.name.lower()}; resume it with hydra.sweeper.direction="
                    f"{stored.direction.name.lower()}, or start a new study (another hydra.sweep.dir or study_name)"
                )
            so_far = stored.get_trials(deepcopy=False)
        return optuna.create_study(
            storage=storage,
            study_name=name,
            direction=self.direction,
            sampler=build_sampler(self.sampler, len(so_far)),
            pruner=build_pruner(self.pruner),
            load_if_exists=True,
        )

    def _launch(
        self, study: optuna.Study, trials: list[optuna.Trial], space: SearchSpace, sweep_dir: Path
    ) -> Iterator[tuple[optuna.Trial, JobReturn]]:
        """Run ``trials`` as sweep jobs numbered by trial number; yields each with its job's return.

        Trials asked back to back have consecutive numbers unless another sweep shares the study: each run of
        consecutive numbers is one launch (jobs side by side), so job folders keep their trial's number.
        A launcher that raises (Ctrl-C, a submission refused) leaves no trial running: they are told FAIL.
        """
        url = self._storage_url(sweep_dir)
        for group in consecutive(trials):
            overrides = [
                [*space.overrides(t.params), TrialRef(url, study.study_name, t.number).override()] for t in group
            ]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=group[0].number)
            except BaseException:
                for trial in trials[trials.index(group[0]) :]:  # this launch's and the ones not launched yet
                    tell(study, trial, state=TrialState.FAIL)
                raise
            yield from zip(group, returns, strict=True)

    def _batch_size(self, study: optuna.Study, left: int) -> int:
        """How many trials to launch next: ``n_jobs``, fewer at the end, counting the trials that sweeps sharing
        the study run meanwhile."""
        return min(self.n_jobs, left, self.n_trials - count(study, (*DONE, TrialState.RUNNING)))

    def _record(self, study: optuna.Study, trial: optuna.Trial, job: JobReturn) -> bool:
        """Record the job's outcome: pruned (its callback said so), complete (a finite value) or failed.

        Returns:
            Whether the sampler has nothing left to try (see :func:`tell`).
        """
        job_dir = output_dir(job, self.sweep_dir)
        if job_dir is not None:
            trial.set_user_attr("job_dir", job_dir.name)
        value, failure = job_value(job)
        if failure is not None:
            log.error("trial %d failed: %s", trial.number, failure)
            if job_dir is None or not job_dir.is_dir():
                self.unlisted_failures.append(trial.number)
            elif (status := read_status(job_dir)) is None or status["status"] in ("running", "completed"):
                # The job did not record a failure (it raised past train.py, or completed without the metric):
                # the sweep's summary reads run_status.json, so it must say so there.
                write_status(job_dir, "failed", f"{failure}; Optuna recorded trial {trial.number} as failed")
            return tell(study, trial, state=TrialState.FAIL)
        pruned_at = stored(study, trial.number).user_attrs.get(PRUNED_AT)  # set by the job's pruning callback
        if pruned_at is None:
            return tell(study, trial, value)
        if job_dir is not None and (status := read_status(job_dir)) is not None and status["status"] == "completed":
            # The run completed as an early-stopped one; the sweep's summary shows why it stopped early.
            details = {k: v for k, v in status.items() if k not in ("status", "time", "host", "pid", "message")}
            write_status(job_dir, "completed", f"pruned by Optuna after epoch {pruned_at}", **details)
        return tell(study, trial, state=TrialState.PRUNED)


def tell(
    study: optuna.Study, trial: optuna.Trial | int, value: float | None = None, state: TrialState | None = None
) -> bool:
    """``study.tell``; returns whether the sampler has nothing left to try.

    Grid and brute-force samplers call ``Study.stop()`` once they have covered the space, which Optuna refuses
    outside ``Study.optimize`` (RuntimeError); the trial's state is stored before that.
    """
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise
        return True
    return False


def output_dir(job: JobReturn, sweep_dir: Path) -> Path | None:
    """The job's run dir (in ``sweep_dir``): Hydra's output dir in the job's config; else ``working_dir``, set to
    the run dir by :class:`cnn_explorer.launchers.ResilientJoblibLauncher` for a job it rebuilt (a job's own is the
    process's working dir, which Hydra 1.3 leaves as it is). None when neither is in the sweep dir."""
    hydra_cfg = job.hydra_cfg.get("hydra") if job.hydra_cfg is not None else None
    candidates = [hydra_cfg.runtime.get("output_dir") if hydra_cfg is not None else None, job.working_dir]
    found = [Path(str(c)).resolve() for c in candidates if c]
    return next((path for path in found if path.is_relative_to(sweep_dir) and path != sweep_dir), None)


def job_value(job: JobReturn) -> tuple[float, str | None]:
    """The job's return as a trial value, and why it is not one (None when it is a finite number)."""
    if job.status != JobStatus.COMPLETED:
        error = job._return_value  # the exception the job raised (JobReturn.return_value would re-raise it)
        return math.nan, f"the job raised {type(error).__name__}: {error}"
    value = job.return_value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan, f"the job returned {value!r}, not a number"
    if not math.isfinite(number):
        return number, f"the job returned {number} (train.py's value for a job that failed; see its run_status.json)"
    return number, None


@dataclass
class SearchSpace:
    """What the sweep varies and what it fixes.

    Attributes:
        distributions: Optuna's distribution by config key.
        fixed: the command line's plain overrides, given to every trial as they are.
        structured: by key, the choices that are lists or dicts (``choice([32,M,64],[64,M])``): Optuna stores
            them as their override text (it stores only plain values), which goes into the override unquoted.
    """

    distributions: dict[str, BaseDistribution]
    fixed: list[str]
    structured: dict[str, set[str]]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: its sampled values, then the fixed ones."""
        sampled = [
            f"{key}={value if value in self.structured.get(key, ()) else override_value(value)}"
            for key, value in params.items()
        ]
        return [*sampled, *self.fixed]


def search_space(params: Mapping[str, str], arguments: Sequence[str]) -> SearchSpace:
    """The search space of ``params`` and the sweeps among ``arguments``, and the fixed overrides.

    A plain value in ``arguments`` fixes its key (and takes it out of the space); a sweep there replaces the
    ``params`` entry of the same key.

    Raises:
        UserError: on a sweep Optuna cannot sample (a glob, a shuffled or empty range).
    """
    parser = OverridesParser.create()
    space = SearchSpace({}, [], {})
    sweeps = [parser.parse_override(f"{key}={sweep}") for key, sweep in params.items()]
    for override in [*sweeps, *parser.parse_overrides(list(arguments))]:
        key = override.get_key_element()
        space.structured.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
            if isinstance(override.value(), ChoiceSweep):
                space.structured[key] = {
                    Transformer.encode(c) for c in override.value().list if isinstance(c, list | dict)
                }
        else:
            space.distributions.pop(key, None)
            space.fixed.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
    return space


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one Hydra sweep override (see the module docstring for the mapping).

    Raises:
        UserError: on a glob, or a shuffled or empty range.
    """
    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, ChoiceSweep):
        # Lists and dicts as their override text ([32,M,64]); Optuna stores plain values only.
        return CategoricalDistribution([Transformer.encode(c) if isinstance(c, list | dict) else c for c in sweep.list])
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if sweep.shuffle or not values or sweep.step is None or sweep.step <= 0:
            raise UserError(f"{key}: give Optuna an increasing range(start, stop, step), not {override.input_line}")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(sweep.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):  # Hydra makes both ends floats: the tag int asks for whole numbers
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:
            return IntDistribution(math.ceil(sweep.start), math.floor(sweep.end), log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise UserError(f"{key}: Optuna samples choice(..), range(..) and interval(..) sweeps, not {override.input_line}")


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text: numbers and booleans as YAML reads them, text quoted if needed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return hydra_value(str(value))


def consecutive(trials: Sequence[optuna.Trial]) -> list[list[optuna.Trial]]:
    """``trials`` split where their numbers are not consecutive."""
    groups: list[list[optuna.Trial]] = []
    for trial in trials:
        if groups and trial.number == groups[-1][-1].number + 1:
            groups[-1].append(trial)
        else:
            groups.append([trial])
    return groups


def stale_trials(study: optuna.Study, sweep_dir: Path) -> list[FrozenTrial]:
    """Trials that a sweep in ``sweep_dir`` left running: it crashed (this sweep has not started any).

    Only this sweep dir's: a storage shared with other sweeps holds their running trials too.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if t.user_attrs.get("sweep_dir") == str(sweep_dir)]


def stored(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` as the storage holds it now (an ``optuna.Trial`` keeps what it knew when it was asked)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    """How many of the study's trials are in one of ``states``."""
    return len(study.get_trials(deepcopy=False, states=states))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``; SQLite's writers wait up to :data:`SQLITE_TIMEOUT_S` for its lock, since the
    jobs of a batch report their epochs at the same moments."""
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: Optuna will say so when it opens it
        return url


def build_sampler(config: DictConfig | None, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``config`` (TPE when null). A seeded sampler resuming a study of ``trials_so_far`` trials
    gets ``seed + trials_so_far``: with its first seed it would propose the first trials' values again.

    Raises:
        UserError: when Optuna's class refuses the config's arguments.
    """
    if config is None:
        return optuna.samplers.TPESampler()
    seed = config.get("seed")
    try:
        if seed is not None and trials_so_far:
            log.info("resuming a study of %d trials: sampler seed %d + %d", trials_so_far, seed, trials_so_far)
            return instantiate(config, seed=int(seed) + trials_so_far)
        return instantiate(config)
    except Exception as err:
        raise UserError(f"hydra.sweeper.sampler: {err.__cause__ or err}") from None


def build_pruner(config: DictConfig | Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner of ``config``; null never prunes.

    Raises:
        UserError: when Optuna's class refuses the config's arguments.
    """
    if config is None:
        return optuna.pruners.NopPruner()
    try:
        return instantiate(config)
    except Exception as err:
        raise UserError(f"hydra.sweeper.pruner: {err.__cause__ or err}") from None


def open_trial(ref: TrialRef | Mapping[str, Any], pruner: optuna.pruners.BasePruner | None) -> optuna.Trial:
    """In a sweep job: its running trial, through the study's storage, judged by ``pruner``.

    Raises:
        UserError: if the study or the trial is not in the storage.
    """
    ref = ref if isinstance(ref, TrialRef) else TrialRef(str(ref["storage"]), str(ref["study"]), int(ref["number"]))
    storage = open_storage(ref.storage)
    try:
        study = optuna.load_study(study_name=ref.study, storage=storage, pruner=pruner or optuna.pruners.NopPruner())
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(ref.study), ref.number
        )
    except KeyError as err:
        raise UserError(
            f"{TRIAL_KEY}: no trial {ref.number} of study {ref.study!r} in {shown_url(ref.storage)} ({err}); "
            f"{TRIAL_KEY} is set by the Optuna sweeper, run the search with hparams_search=optuna"
        ) from None
    return optuna.Trial(study, trial_id)


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """``optimization_results.yaml``: the best trial, its params and value (null when no trial completed), and
    how many trials ended in each state."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    results = {
        "name": "optuna",
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "best_trial": best.number if best else None,
        "best_params": dict(best.params) if best else None,
        "best_value": best.value if best else None,
        "trials": {state.name.lower(): count(study, (state,)) for state in TrialState if count(study, (state,))},
    }
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS)


def write_plots(study: optuna.Study, sweep_dir: Path, objective: str, reported: str) -> list[Path]:
    """Optuna's optimization history, parameter importances (fANOVA; two complete trials at least) and
    intermediate values (what the jobs reported per epoch) as ``<sweep dir>/<name>.png``, the value axes named
    ``objective`` (the trials' value) and ``reported`` (the per-epoch value); returns the files written. A plot
    Optuna cannot draw yet (too few trials) is left out with a note in the log.

    Optuna draws on pyplot's figures, which this project's code does not use (tests/test_architecture.py): the
    few figures stay open until the sweep's process ends, moments later.
    """
    from cnn_explorer.render.figures import save_png  # matplotlib: imported only at a sweep's end

    draw = {
        "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
        "param_importances": optuna.visualization.matplotlib.plot_param_importances,
        "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
    }
    complete = count(study, (TrialState.COMPLETE,))
    written = []
    for name in PLOTS:
        if name != "intermediate_values" and not complete:
            continue  # drawn from complete trials' values only
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental, on every call
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw[name](study)
        except (ValueError, RuntimeError) as err:  # e.g. importances need two complete trials
            log.info("no %s plot: %s", name, err)
            continue
        if name == "optimization_history":
            axes.set_ylabel(objective)
        if name == "intermediate_values":
            axes.set_xlabel("Epoch")
            axes.set_ylabel(reported)
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        save_png(figure, sweep_dir / f"{name}.png")
        written.append(sweep_dir / f"{name}.png")
    return written


def summary(study: optuna.Study) -> str:
    """The study in lines: one per trial (state, value, job folder, params), then the best trial."""
    trials = study.get_trials(deepcopy=False)
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    lines = [
        f"Optuna study {study.study_name!r}: {len(trials)} trials, "
        + ", ".join(f"{n} {state.name.lower()}" for state, n in states.items() if n)
    ]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(
            f"  trial {t.number}: {t.state.name.lower():8} {value:>8}  {t.user_attrs.get('job_dir', '')}  {params}"
        )
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if failed:
        lines.append(f"Failed trials: {', '.join(map(str, failed))} (their run_status.json says why)")
    if states[TrialState.COMPLETE]:
        lines.append(f"Best value: {study.best_value} (trial {study.best_trial.number})")
        lines.append(f"Best parameters: {study.best_params}")
    else:
        lines.append("No trial completed: no best value")
    return "\n".join(lines)
