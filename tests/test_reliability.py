"""Nothing lost, nothing run, nothing misreported: each fault as a user meets it, through train.py and analyze.py
in a subprocess, with the files on disk checked before and after."""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnn_explorer.config import new_run_dir
from cnn_explorer.rundir import read_metrics
from tests.conftest import ANALYZE_FAST, ROOT, TINY, TINY_MINIMAL, run_cli, tree_snapshot, write_image_folder

# Three short epochs of the deep model (dropout and BatchNorm: RNG and buffers must resume too), no test.
RUN = [*TINY, "model=deep", "trainer.max_epochs=3", "test=false"]
RUN += ["callbacks.explanation_scores.methods=[gradient,grad_cam]"]  # the last epoch's checks: two methods suffice
# For the tests of analyze.py: a finished run of the small net without views, which analyze.py reads fastest.
ANALYZED = [*TINY_MINIMAL, "test=false"]
STEPS_PER_EPOCH = 13  # 800 training images / batch 64


def train_py(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, cwd=cwd)


def state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training(a: Path, b: Path) -> None:
    """Same final weights, optimizer state and per-epoch metrics (all CSV versions merged), bit for bit."""
    first, second = state(a), state(b)
    assert first["global_step"] == second["global_step"]
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    for index, values in first["optimizer_states"][0]["state"].items():
        for key, value in values.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(second["optimizer_states"][0]["state"][index][key])
            )
    metrics_a, metrics_b = read_metrics(a), read_metrics(b)
    assert metrics_a.epochs == metrics_b.epochs == [0, 1, 2]
    for column in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert metrics_a.get(column) == metrics_b.get(column), column


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_status.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train_py(*RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert status(run_dir)["status"] == "completed"
    return run_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = train_py(*ANALYZED, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


# --- 3, 11, and the kill -9 proof: checkpoints that always resume exactly -------------------------------------


def test_last_ckpt_holds_the_final_epoch_of_a_run_whose_val_acc_never_improves(tmp_path):
    # A learning rate so small that nothing changes the predictions: val/acc is flat, so only epoch 0 is "best".
    result = train_py(*RUN, "model.optimizer.lr=1e-12", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (best_path,) = (tmp_path / "checkpoints").glob("epoch*.ckpt")
    assert best_path.name.startswith("epoch000-")  # val/acc never improved after the first epoch
    last = state(tmp_path)
    assert last["epoch"] == 2 and last["global_step"] == 3 * STEPS_PER_EPOCH  # the end of the last epoch
    best = torch.load(best_path, weights_only=True)
    assert best["global_step"] == STEPS_PER_EPOCH
    assert not all(torch.equal(v, best["state_dict"][k]) for k, v in last["state_dict"].items())


@pytest.mark.slow  # several full runs: the long checks (pytest -m slow; CI runs them too)
def test_kill_9_at_a_random_step_then_resume_ends_as_if_never_killed(uninterrupted, tmp_path):
    step = random.Random(os.getpid()).randint(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH - 1)  # after epoch 0's ckpt
    kill = ["+callbacks.kill._target_=tests.interrupt.SignalAtStep", f"+callbacks.kill.step={step}"]
    killed = train_py(*RUN, *kill, "+callbacks.kill.signal_name=SIGKILL", f"hydra.run.dir={tmp_path}")
    assert killed.returncode == -signal.SIGKILL, f"step {step}: {killed.stderr[-2000:]}"
    assert status(tmp_path)["status"] == "running"  # killed: nothing could record how it ended
    resumed = train_py(*RUN, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training(uninterrupted, tmp_path)
    assert status(tmp_path)["status"] == "completed"


@pytest.mark.slow  # several full runs: the long checks (pytest -m slow; CI runs them too)
def test_sigterm_exits_non_zero_with_a_checkpoint_that_resumes_exactly(uninterrupted, tmp_path):
    step = STEPS_PER_EPOCH + 5  # mid-epoch 1
    term = ["+callbacks.term._target_=tests.interrupt.SignalAtStep", f"+callbacks.term.step={step}"]
    stopped = train_py(*RUN, *term, f"hydra.run.dir={tmp_path}")
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
    assert status(tmp_path)["status"] == "interrupted"
    assert state(tmp_path)["global_step"] == step  # the state at the last finished step, mid-epoch
    resumed = train_py(*RUN, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training(uninterrupted, tmp_path)


# --- 5 and 9: resuming --------------------------------------------------------------------------------------


def test_resuming_with_more_epochs_is_refused_and_changes_nothing(uninterrupted):
    before = tree_snapshot(uninterrupted)
    result = train_py(*RUN, "trainer.max_epochs=5", f"ckpt_path={uninterrupted / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cosine schedule over 3 epochs; this command plans 5" in result.stderr
    assert "Resume with trainer.max_epochs=3" in result.stderr
    assert tree_snapshot(uninterrupted) == before


@pytest.mark.slow  # several full runs: the long checks (pytest -m slow; CI runs them too)
def test_a_copied_run_dir_resumes_into_its_own_last_ckpt(tmp_path):
    first = tmp_path / "first"
    # Killed after epoch 0's last.ckpt: a run that did not complete is resumed in its own dir (a completed one never)
    kill = ["+callbacks.kill._target_=tests.interrupt.SignalAtStep", f"+callbacks.kill.step={STEPS_PER_EPOCH + 1}"]
    assert train_py(*RUN, *kill, "+callbacks.kill.signal_name=SIGKILL", f"hydra.run.dir={first}").returncode == -9
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    result = train_py(*RUN, f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (copy / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]  # no last-v1.ckpt
    assert state(copy)["epoch"] == 2
    assert state(first)["epoch"] == 0  # the original is untouched


def test_a_checkpoint_from_outside_a_run_dir_starts_a_new_run_dir(uninterrupted, tmp_path):
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    shutil.copyfile(uninterrupted / "checkpoints" / "last.ckpt", downloads / "last.ckpt")
    before = tree_snapshot(tmp_path / "home")
    # The same run's own checkpoint, continued to epoch 3 under a new plan would be refused; same plan, done.
    result = train_py(*RUN, f"ckpt_path={downloads / 'last.ckpt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tree_snapshot(tmp_path / "home") == before  # nothing written beside or above the checkpoint
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert (run_dir / ".hydra" / "config.yaml").is_file() and status(run_dir)["status"] == "completed"


# --- 2: one run dir per process ------------------------------------------------------------------------------


def test_two_runs_started_at_the_same_instant_get_two_run_dirs(tmp_path):
    # The views play no part here; one thread each, as the two processes share the cores.
    same = ["hydra.run.dir=${run_dir_for:null,outputs/same-second}", *TINY_MINIMAL, "model=deep", "test=false"]
    same += ["trainer.max_epochs=1", "threads=1"]
    processes = [
        subprocess.Popen([sys.executable, str(ROOT / "train.py"), *same], cwd=tmp_path, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in processes]  # reads stderr as it comes: a full pipe blocks
    assert [p.returncode for p in processes] == [0, 0], errors
    dirs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert dirs == ["same-second", "same-second_2"]
    for name in dirs:
        assert len(list((tmp_path / "outputs" / name / "csv").glob("version_*"))) == 1
        assert status(tmp_path / "outputs" / name)["status"] == "completed"


def test_new_run_dir_never_returns_a_dir_that_exists(tmp_path):
    (tmp_path / "run").mkdir()  # as if another process had just made it
    (tmp_path / "run_2").mkdir()
    assert new_run_dir(str(tmp_path / "run")) == str(tmp_path / "run_3")


# --- 4: a sweep with a bad job ---------------------------------------------------------------------------------


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path):
    result = train_py(
        "-m",
        *TINY_MINIMAL,
        "trainer.max_epochs=1",
        "model.optimizer.lr=0.001,-1,0.01",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 1
    jobs = sorted((p for p in tmp_path.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    assert [status(job)["status"] for job in jobs] == ["completed", "failed", "completed"]
    assert jobs[1].name.startswith("1_lr=-1")
    assert f"sweep {tmp_path}: 3 jobs, 2 completed, 1 not" in result.stderr
    assert f"{jobs[1].name}: failed - model.optimizer.lr must be a positive number, got -1" in result.stderr


def test_a_sweep_job_crashing_on_a_bug_fails_that_job_and_the_sweep_goes_on(tmp_path):
    crash = ["+callbacks.crash._target_=tests.interrupt.CrashAtStep", "+callbacks.crash.step=2,100000"]
    result = train_py("-m", *TINY_MINIMAL, "trainer.max_epochs=1", *crash, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1
    jobs = sorted((p for p in tmp_path.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    assert [status(job)["status"] for job in jobs] == ["failed", "completed"]  # step 100000 is never reached
    assert f"sweep {tmp_path}: 2 jobs, 1 completed, 1 not" in result.stderr
    assert f"{jobs[0].name}: failed - RuntimeError: a bug at step 2 (traceback in {jobs[0] / 'train.log'})" in (
        result.stderr
    )
    assert "Traceback" in (jobs[0] / "train.log").read_text()  # the bug's traceback, where the job logs


# --- 6: divergence ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # several full runs: the long checks (pytest -m slow; CI runs them too)
def test_a_diverging_run_stops_with_a_message_and_keeps_its_last_finite_checkpoint(tmp_path):
    poison = ["+callbacks.poison._target_=tests.interrupt.PoisonWeightsAtEpoch", "+callbacks.poison.epoch=1"]
    result = train_py(*RUN, "test=true", *poison, f"hydra.run.dir={tmp_path}")  # default callbacks: every view
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"training diverged: the loss stopped being a finite number at epoch 1, global step {STEPS_PER_EPOCH}" in (
        result.stderr
    )
    assert f"The last finite weights are in {tmp_path / 'checkpoints' / 'last.ckpt'}" in result.stderr
    assert status(tmp_path)["status"] == "diverged"
    last = state(tmp_path)
    assert last["epoch"] == 0 and all(t.isfinite().all() for t in last["state_dict"].values() if t.is_floating_point())
    report = run_cli("analyze.py", str(tmp_path), *ANALYZE_FAST)
    assert report.returncode == 0, report.stderr
    assert "diverged" in report.stderr  # the warning
    assert "- How it ended: diverged (" in (tmp_path / "report" / "report.md").read_text()


def test_a_run_diverging_in_its_first_steps_says_no_checkpoint_was_written(tmp_path):
    small = [o for o in RUN if o != "model=deep"]  # the small net has no BatchNorm to keep a huge step finite
    result = train_py(*small, "model.optimizer.lr=1e6", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "training diverged" in result.stderr and "No checkpoint was written." in result.stderr
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))


# --- 10: crafted inputs run nothing ----------------------------------------------------------------------------


class Marker:
    """Unpickling this creates a file: the proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_crafted_config_in_a_run_dir_runs_nothing(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    payload, marker = tmp_path / "payload.pt", tmp_path / "PWNED"
    with payload.open("wb") as handle:
        pickle.dump(Marker(marker), handle)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.model.net = {"_target_": "torch.load", "f": str(payload), "weights_only": False}
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    result = run_cli("analyze.py", str(run_dir), *ANALYZE_FAST)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "names _target_ 'torch.load', which analyze.py does not build" in result.stderr
    assert not marker.exists()


def test_a_crafted_checkpoint_runs_nothing_in_train_py_or_analyze_py(uninterrupted, tmp_path):
    marker = tmp_path / "PWNED"
    evil = {"state_dict": {}, "epoch": 0, "payload": Marker(marker)}
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    torch.save(evil, best)
    torch.save(evil, run_dir / "checkpoints" / "last.ckpt")
    for result in (
        train_py(*RUN, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"),
        run_cli("analyze.py", str(run_dir), *ANALYZE_FAST),
    ):
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "holds Python objects other than tensors and plain data" in result.stderr
        assert "weights_only" not in result.stderr  # never the advice to switch the safe loader off
    assert not marker.exists()


# --- 12 and 13: one message, no traceback, nothing left behind --------------------------------------------------


def _file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.optimizer.lr=abc"], "model.optimizer.lr must be a positive number, got 'abc'"),
        (["data.val_size=abc"], "data.val_size must be a positive whole number, got 'abc'"),
        (["seed=abc"], "seed must be a whole number, got 'abc'"),
        (["data.batch_size=abc"], "data.batch_size must be a positive whole number, got 'abc'"),
        (["data.batch_size=0"], "data.batch_size must be a positive whole number, got 0"),
        (["hydra.run.dir={file}"], "hydra.run.dir={file} is a file, not a folder"),
        (["run_dir={tmp}/elsewhere"], "choose it with hydra.run.dir={tmp}/elsewhere"),
        (["ckpt_path={tmp}/missing/last.ckpt"], "ckpt_path={tmp}/missing/last.ckpt does not exist"),
        (["ckpt_path={truncated}"], "cannot read checkpoint {truncated}: it is truncated or corrupt"),
        (["ckpt_path={other_model}", "model=small"], "{other_model} does not fit the net described by model.net"),
        (["callbacks.attributions.methods=[nope]"], "methods must be a non-empty list of"),
    ],
    ids=[
        "lr",
        "val_size",
        "seed",
        "batch_size",
        "batch_size-0",
        "run-dir-file",
        "run-dir-overridden",
        "ckpt-missing",
        "ckpt-truncated",
        "ckpt-other-model",
        "bad-method",
    ],
)
def test_a_bad_input_gets_one_message_and_leaves_no_file(uninterrupted, tmp_path, args, message):
    work = tmp_path / "work"
    work.mkdir()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((uninterrupted / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    other_model = tmp_path / "small.ckpt"  # the deep run's weights offered to model=small, outside any run dir
    shutil.copyfile(uninterrupted / "checkpoints" / "last.ckpt", other_model)
    fill = {"tmp": tmp_path, "file": _file(tmp_path), "truncated": truncated, "other_model": other_model}
    given = [a.format(**fill) for a in args]
    overrides = [o for o in RUN if not (o.startswith("model=") and any(g.startswith("model=") for g in given))]
    overrides += given
    before = tree_snapshot(tmp_path)
    result = train_py(*overrides, cwd=work)
    assert result.returncode == 1
    assert message.format(**fill) in result.stderr
    assert "Traceback" not in result.stderr and "Error in call to target" not in result.stderr
    assert tree_snapshot(tmp_path) == before  # no run dir, no .hydra, no train.log, no missing folder made


def test_a_cache_dir_that_is_a_file_gets_one_message_and_leaves_no_file(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cache = _file(tmp_path)
    before = tree_snapshot(tmp_path)
    result = train_py("data=cifar10_folder", f"data.source.root={tmp_path}", f"data.source.cache_dir={cache}", cwd=work)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"data.source.cache_dir={cache} is a file, not a folder" in result.stderr
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated-image", "not-an-image"])
def test_a_bad_image_is_named_and_no_run_dir_is_left(tmp_path, damage):
    data = tmp_path / "data"
    write_image_folder(data, [f"c{label}" for label in range(10)], per_class=4)
    bad = data / "train" / "c3" / "2.png"
    bad.write_bytes(bad.read_bytes()[:30] if damage == "truncated-image" else b"notes, not pixels")
    work = tmp_path / "work"
    work.mkdir()
    result = train_py(
        "data=cifar10_folder", f"data.source.root={data}", "data.source.cache_dir=null", "data.val_size=10", cwd=work
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{bad} is not a readable image" in result.stderr
    assert list(work.iterdir()) == []


# --- 7 and 14: analyze.py says what it checked, and only that ---------------------------------------------------


def test_analyze_detects_a_metrics_line_cut_mid_line_and_ignores_it(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("report"))
    metrics = run_dir / "csv" / "version_0" / "metrics.csv"
    full = metrics.read_text()
    metrics.write_text(full[: len(full) - 20])  # killed while writing the last row
    result = run_cli("analyze.py", str(run_dir), *ANALYZE_FAST)
    assert result.returncode == 0, result.stderr
    assert "its last line was cut off mid-line" in result.stderr
    summary = json.loads((run_dir / "report" / "metrics.json").read_text())
    rows = list(csv.DictReader(full.splitlines()))
    kept = [float(r["val/loss"]) for r in rows[:-1] if r["val/loss"]]
    assert [v for v in summary["training"]["curves"]["val/loss"] if v is not None] == pytest.approx(kept)
    assert summary["training"]["curves"]["train/loss"][-1] is None  # the cut row's values are not guessed
    assert "trained with test=false" in (run_dir / "report" / "report.md").read_text()  # the checked reason


@pytest.mark.parametrize("alive", [True, False])
def test_analyze_says_a_run_is_still_training_or_was_killed(finished, tmp_path, alive):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("report"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if not alive:
        sleeper.kill()
        sleeper.wait()
    record = status(run_dir) | {"status": "running", "pid": sleeper.pid}
    (run_dir / "run_status.json").write_text(json.dumps(record))
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.test = True  # a run that would test when it ends: "trained with test=false" would be false
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    try:
        result = run_cli("analyze.py", str(run_dir), *ANALYZE_FAST)
    finally:
        sleeper.kill()
    assert result.returncode == 0, result.stderr
    markdown = (run_dir / "report" / "report.md").read_text()
    expected = f"still training: process {sleeper.pid}" if alive else f"its process {sleeper.pid} is no longer running"
    assert expected in result.stderr and expected in markdown
    assert "trained with test=false" not in markdown  # a cause that was not checked is not stated


def test_no_best_checkpoint_advice_is_checked_before_it_is_given(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("report"))
    for ckpt in (run_dir / "checkpoints").glob("epoch*.ckpt"):
        ckpt.unlink()
    result = run_cli("analyze.py", str(run_dir), *ANALYZE_FAST)
    assert result.returncode == 1
    assert f"resume it: python train.py <its overrides> ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" in (
        result.stderr
    )
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    result = run_cli("analyze.py", str(run_dir), *ANALYZE_FAST)
    assert result.returncode == 1
    assert "there is nothing to resume: train it again" in result.stderr and "last.ckpt" not in result.stderr


# --- 1: analyze.py deletes nothing it did not write -------------------------------------------------------------


def test_analyze_keeps_a_file_the_user_added_to_the_report(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("report"))
    assert run_cli("analyze.py", str(run_dir), *ANALYZE_FAST).returncode == 0
    notes = run_dir / "report" / "my_notes.md"
    notes.write_text("what I saw")
    before = tree_snapshot(run_dir)
    result = run_cli("analyze.py", str(run_dir), *ANALYZE_FAST)
    assert result.returncode == 1
    assert "holds 1 file(s) analyze.py did not write (my_notes.md)" in result.stderr
    assert tree_snapshot(run_dir) == before


def test_analyze_out_refuses_a_folder_it_did_not_write(finished, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "comparison.md").write_text("my own comparison")
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    before = tree_snapshot(thesis)
    result = run_cli("analyze.py", str(finished), str(finished), "--out", str(thesis))
    assert result.returncode == 1
    assert f"{thesis} exists and was not written by analyze.py" in result.stderr
    assert tree_snapshot(thesis) == before
