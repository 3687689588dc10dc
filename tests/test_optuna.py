"""The Optuna sweeper (cnn_explorer.optuna_sweeper, ``hparams_search=optuna``): the search space from Hydra's sweep
grammar, trials handed to their jobs, and whole searches as a user runs them: the best trial reported, a failed
trial recorded while the study goes on, a study resumed from its storage, trials pruned from their per-epoch
val/acc (issue 20, 3 and 4)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import optuna
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from torch.utils.data import DataLoader, TensorDataset

from callbacks.optuna_pruning import OptunaPruning
from cnn_explorer.errors import UserError
from cnn_explorer.optuna_sweeper import (
    DATABASE,
    OptunaSweeper,
    TrialRef,
    build_sampler,
    consecutive,
    job_value,
    open_trial,
    output_dir,
    search_space,
    stale_trials,
)
from tests.conftest import run_cli
from tests.test_sweeps import JOB, completed, jobs

# Every trial at the same settings but the swept ones: the lr, width and dropout of conf/hparams_search/optuna.yaml
# fixed on the command line (a plain value takes its key out of the search space).
FIXED = ["model.optimizer.lr=0.001", "model.net.hidden=64", "model.net.dropout=0.0"]
# A sampler that tries each point of a discrete space once, in any order: the test knows which trials exist.
BRUTE_FORCE = [
    "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
    "~hydra.sweeper.sampler.n_startup_trials",
]


def sweep(sweep_dir: Path, *overrides: str):
    return run_cli("train.py", "hparams_search=optuna", *JOB, f"hydra.sweep.dir={sweep_dir}", *overrides)


def stored_trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials in the sweep's default storage, ``<sweep dir>/optuna.db``, study named after the dir."""
    return optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / DATABASE}").trials


def test_the_search_space_is_read_from_hydras_sweep_grammar():
    space = search_space(
        {
            "model.optimizer.lr": "tag(log, interval(0.0001, 0.01))",
            "model.net.hidden": "choice(128, 256, 512)",
            "model.net.dropout": "interval(0.0, 0.5)",
            "data.batch_size": "range(32, 160, 32)",  # 32, 64, 96, 128: Hydra's range leaves out its stop
            "trainer.max_epochs": "interval(2, 8)",
            "model.net.width": "tag(log, int, interval(16, 256))",
        },
        ["seed=1,2", "model.net.dropout=0.1", "trainer.max_epochs=choice(3, 4)"],
    )
    assert space.distributions == {
        "model.optimizer.lr": FloatDistribution(0.0001, 0.01, log=True),
        "model.net.hidden": CategoricalDistribution([128, 256, 512]),
        "data.batch_size": IntDistribution(32, 128, step=32),
        "trainer.max_epochs": CategoricalDistribution([3, 4]),  # the command line's sweep replaces the params one
        "model.net.width": IntDistribution(16, 256, log=True),
        "seed": CategoricalDistribution([1, 2]),  # a comma list is a choice
    }
    assert space.fixed == ["model.net.dropout=0.1"]  # a plain value on the command line fixes the key for all trials


def test_each_choice_goes_back_to_the_job_as_the_value_it_was_in_the_sweep():
    """Optuna stores plain values only: a list (an architecture) is stored as its override text, and that text,
    not a quoted string, is what the trial's override holds; text with a comma is quoted (not a sweep)."""
    space = search_space({"model.net.architecture": "choice([32,M,64], [64,M])"}, ["x=choice(small, 'a,b', 2.5, true)"])
    assert space.distributions["model.net.architecture"].choices == ("[32,M,64]", "[64,M]")
    overrides = [
        space.overrides({"model.net.architecture": a, "x": x}) for a, x in (("[32,M,64]", "a,b"), ("[64,M]", 2.5))
    ]
    assert overrides == [["model.net.architecture=[32,M,64]", 'x="a,b"'], ["model.net.architecture=[64,M]", "x=2.5"]]
    parsed = [[o.value() for o in OverridesParser.create().parse_overrides(trial)] for trial in overrides]
    assert parsed == [[[32, "M", 64], "a,b"], [[64, "M"], 2.5]]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("glob(*)", "Optuna samples choice(..), range(..) and interval(..) sweeps, not model.net.hidden=glob(*)"),
        ("shuffle(range(1, 4))", "give Optuna an increasing range(start, stop, step)"),
        ("range(4, 1)", "give Optuna an increasing range(start, stop, step)"),
    ],
)
def test_a_sweep_optuna_cannot_sample_is_refused_naming_the_key(sweep, message):
    with pytest.raises(UserError, match=re.escape(f"model.net.hidden: {message}")):
        search_space({}, [f"model.net.hidden={sweep}"])


def test_a_mistake_in_the_sweep_config_is_one_line_on_stderr_and_exit_status_1(tmp_path):
    result = run_cli(
        "train.py", "hparams_search=optuna", "hydra.sweeper.storage=sqlite:///x.db", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.storage=sqlite:///x.db is set: name the study too (hydra.sweeper.study_name=NAME), "
        "so that the sweeps sharing this storage share one study"
    )
    assert "Traceback" not in result.stderr


def test_a_trial_reaches_its_job_through_one_override_hydra_reads_back():
    ref = TrialRef("sqlite:////tmp/a b/optuna.db", "2026-01-01/12-00-00", 7)
    override = OverridesParser.create().parse_override(ref.override())
    assert override.get_key_element() == "optuna_trial"
    assert override.value() == {"storage": "sqlite:////tmp/a b/optuna.db", "study": "2026-01-01/12-00-00", "number": 7}


def test_open_trial_reports_to_the_running_trial_in_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.ask(), study.ask()
    trial = open_trial({"storage": url, "study": "s", "number": 1}, optuna.pruners.ThresholdPruner(lower=0.5))
    trial.report(0.25, step=0)
    assert trial.should_prune()  # 0.25 < 0.5
    assert [t.intermediate_values for t in study.get_trials()] == [{}, {0: 0.25}]


class ConstantAccuracy(L.LightningModule):
    """A linear layer trained on noise that logs val/acc = 0.3 at every validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.3)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit_with_pruning(tmp_path: Path, callback: OptunaPruning) -> L.Trainer:
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=1,
    )
    trainer.fit(ConstantAccuracy(), train_dataloaders=loader, val_dataloaders=loader)
    return trainer


def test_the_pruning_callback_reports_each_epoch_and_stops_the_run_when_pruned(tmp_path):
    """ThresholdPruner(lower=0.5, n_warmup_steps=1): val/acc 0.3 is reported at epochs 0 and 1 (the sanity check's
    validation is not), epoch 0 is a warm-up step, epoch 1 is pruned: the run stops after 2 of 4 epochs."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.ask()
    pruner = optuna.pruners.ThresholdPruner(lower=0.5, n_warmup_steps=1)
    trainer = fit_with_pruning(tmp_path, OptunaPruning({"storage": url, "study": "s", "number": 0}, pruner))
    assert trainer.current_epoch == 2
    trial = study.get_trials()[0]
    assert trial.intermediate_values == pytest.approx({0: 0.3, 1: 0.3})
    assert trial.user_attrs == {"pruned_at_epoch": 1}
    assert trial.state == TrialState.RUNNING  # the sweeper tells, once the job has returned

    study.tell(0, state=TrialState.PRUNED)  # the run resumed by hand later: its trial is over, nothing reported
    trainer = fit_with_pruning(tmp_path, OptunaPruning({"storage": url, "study": "s", "number": 0}, pruner))
    assert trainer.current_epoch == 4 and study.get_trials()[0].intermediate_values == pytest.approx({0: 0.3, 1: 0.3})


def test_the_pruning_callback_names_the_metrics_there_are_when_its_monitor_was_not_logged(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=url).ask()
    callback = OptunaPruning({"storage": url, "study": "s", "number": 0}, monitor="val/map")
    with pytest.raises(UserError, match="monitor=val/map was not logged in validation; choose one of val/acc"):
        fit_with_pruning(tmp_path, callback)


def test_only_this_sweep_dirs_running_trials_are_stale(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    mine, other, done = study.ask(), study.ask(), study.ask()
    mine.set_user_attr("sweep_dir", str(tmp_path))
    other.set_user_attr("sweep_dir", "/elsewhere")  # another sweep sharing the storage: still running there
    done.set_user_attr("sweep_dir", str(tmp_path))
    study.tell(done, 0.5)
    assert [t.number for t in stale_trials(study, tmp_path)] == [0]


def test_job_returns_become_values_or_failures():
    ok = JobReturn(status=JobStatus.COMPLETED, _return_value=0.75)
    nan = JobReturn(status=JobStatus.COMPLETED, _return_value=math.nan)
    raised = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("seed -1"))
    assert job_value(ok) == (0.75, None)
    assert "returned nan" in job_value(nan)[1]
    assert job_value(raised)[1] == "the job raised ValueError: seed -1"


def test_a_stored_study_is_resumed_only_in_its_direction_and_a_shared_storage_needs_a_study_name(tmp_path):
    optuna.create_study(study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / DATABASE}", direction="minimize")
    with pytest.raises(UserError, match="was made to minimize; resume it with hydra.sweeper.direction=minimize"):
        OptunaSweeper("maximize", 3, 1, None, None, None, None, {})._study(tmp_path)
    with pytest.raises(UserError, match="name the study too"):
        OptunaSweeper("maximize", 3, 1, "sqlite:///x.db", None, None, None, {})._study(tmp_path)
    with pytest.raises(ValueError, match="direction must be one of maximize, minimize, got 'max'"):
        OptunaSweeper("max", 3, 1, None, None, None, None, {})


def test_a_seeded_sampler_resuming_a_study_of_n_trials_is_seeded_with_seed_plus_n():
    config = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 3})
    first = optuna.create_study(sampler=build_sampler(config, 2)).ask().suggest_float("x", 0, 1)
    assert first == optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5)).ask().suggest_float("x", 0, 1)


def test_a_jobs_run_dir_is_found_in_the_sweep_dir_only(tmp_path):
    job_dir = tmp_path / "0_lr=0.1"
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
    own = JobReturn(hydra_cfg=hydra_cfg, working_dir=str(Path.cwd()), status=JobStatus.COMPLETED)
    rebuilt = JobReturn(working_dir=str(job_dir), status=JobStatus.COMPLETED)  # by ResilientJoblibLauncher
    elsewhere = JobReturn(working_dir=str(Path.cwd()), status=JobStatus.COMPLETED)  # never written into
    assert [output_dir(job, tmp_path) for job in (own, rebuilt, elsewhere)] == [job_dir, job_dir, None]


def test_a_ddp_rank_that_reruns_the_command_does_not_start_a_second_sweep(monkeypatch, capsys):
    """Lightning's ddp strategy starts rank 1 by running the command line again: in a sweep, the sweep."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    sweeper = OptunaSweeper("maximize", 3, 1, None, None, None, None, {})
    sweeper.config, sweeper.launcher = OmegaConf.create({}), object()
    with pytest.raises(SystemExit) as stopped:
        sweeper.sweep([])
    assert stopped.value.code == 1
    assert "run DDP trials with trainer.strategy=ddp_spawn" in capsys.readouterr().err


def test_batches_split_where_trial_numbers_jump(tmp_path):
    study = optuna.create_study()
    trials = [study.ask() for _ in range(5)]
    groups = consecutive([trials[0], trials[1], trials[3], trials[4], trials[2]])
    assert [[t.number for t in group] for group in groups] == [[0, 1], [3, 4], [2]]


def test_optuna_searches_three_trials_and_reports_the_best(tmp_path):
    result = sweep(tmp_path, "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = jobs(tmp_path)
    values = [completed(job)["val/acc_best"] for job in trials]
    assert [job.name.split("_")[0] for job in trials] == ["0", "1", "2"]  # job number = trial number
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(values))
    assert {"model.optimizer.lr", "model.net.hidden", "model.net.dropout"} == set(best.best_params)
    assert f"Best value: {best.best_value}" in result.stdout + result.stderr
    stored = stored_trials(tmp_path)
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 3
    assert [t.value for t in stored] == pytest.approx(values)
    assert [list(t.intermediate_values) for t in stored] == [[0]] * 3  # one epoch each, val/acc reported
    assert [t.intermediate_values[0] for t in stored] == pytest.approx(values)
    for plot in ("optimization_history", "param_importances", "intermediate_values"):
        assert (tmp_path / f"{plot}.png").stat().st_size > 10_000


def test_a_failed_trial_is_recorded_and_the_study_goes_on(tmp_path):
    """seed=-1 makes Lightning's seed_everything raise ValueError in the job (numpy takes seeds from 0): that trial
    fails, the two others complete, and the sweep lists it and exits 1."""
    result = sweep(
        tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=null", *FIXED, *BRUTE_FORCE, "seed=choice(-1,1,2)"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    states = {t.params["seed"]: t.state for t in stored_trials(tmp_path)}
    assert states == {-1: TrialState.FAIL, 1: TrialState.COMPLETE, 2: TrialState.COMPLETE}
    failed = next(job for job in jobs(tmp_path) if job.name.split("_", 1)[1].startswith("seed=-1"))
    status = json.loads((failed / "run_status.json").read_text())
    assert status["status"] == "failed" and "-1 is not in bounds" in status["message"]
    number = failed.name.split("_")[0]
    assert f"Failed trials: {number}" in result.stdout + result.stderr  # the sweeper's summary
    assert f"{failed.name}: failed - ValueError: -1 is not in bounds" in result.stderr  # the sweep's job summary
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_params.seed in (1, 2) and best.trials == {"complete": 2, "fail": 1}


def test_a_study_resumes_from_its_storage(tmp_path):
    """The same command again, after a crash that left a trial running: that trial is recorded as failed, the
    complete ones are kept, and only the trial still missing up to n_trials runs."""
    first = sweep(tmp_path, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / DATABASE}")
    crashed = study.ask()  # as the sweep left it when it was killed with its job
    crashed.set_user_attr("sweep_dir", str(tmp_path))

    again = sweep(tmp_path, "hydra.sweeper.n_trials=2")
    assert again.returncode == 0, again.stderr[-3000:]
    stored = stored_trials(tmp_path)
    assert [t.state for t in stored] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]  # 3, not 1 + 2
    assert stored[2].params != stored[0].params  # the sampler reseeded: not the first trial's values again
    assert [job.name.split("_")[0] for job in jobs(tmp_path)] == ["0", "2"]
    assert "trial 1 was left running by a sweep that stopped" in again.stdout + again.stderr


def test_a_pruner_stops_trials_after_their_first_epoch(tmp_path):
    """ThresholdPruner(lower=2.0) prunes every val/acc (at most 1): each run stops after epoch 0 of 2, completes
    (its best checkpoint tested), and its trial is recorded as pruned."""
    pruner = [
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "~hydra.sweeper.pruner.n_startup_trials",
        "~hydra.sweeper.pruner.n_warmup_steps",
        "+hydra.sweeper.pruner.lower=2.0",
    ]
    result = sweep(tmp_path, "hydra.sweeper.n_trials=2", "trainer.max_epochs=2", *pruner)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = stored_trials(tmp_path)
    assert [t.state for t in stored] == [TrialState.PRUNED] * 2
    assert [list(t.intermediate_values) for t in stored] == [[0], [0]]
    for job in jobs(tmp_path):
        assert completed(job)["message"] == "pruned by Optuna after epoch 0"
        assert [p.name.split("-")[0] for p in (job / "checkpoints").glob("epoch*.ckpt")] == ["epoch000"]
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value is None and best.trials == {"pruned": 2}
    assert (tmp_path / "intermediate_values.png").is_file()  # the plots of complete trials' values are left out
    assert not (tmp_path / "optimization_history.png").exists()
    assert "No trial completed" in result.stdout + result.stderr


@pytest.mark.slow  # 17 s on two lightly loaded cores, 70 s under load (two worker processes start)
def test_trials_run_side_by_side_through_the_joblib_launcher(tmp_path):
    result = sweep(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=parallel")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    stored = stored_trials(tmp_path)
    assert [t.state for t in stored] == [TrialState.COMPLETE] * 2
    assert [t.value for t in stored] == pytest.approx([completed(job)["val/acc_best"] for job in jobs(tmp_path)])
    assert all(t.intermediate_values for t in stored)  # reported from the worker processes through the storage
