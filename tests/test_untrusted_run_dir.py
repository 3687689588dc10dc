"""A run dir or checkpoint someone sent you costs what a real one costs: crafted configs, metrics and checkpoints
are refused with one message, quickly, in bounded memory, with nothing written (issue 17, items 8 to 11).

Each case runs analyze.py or train.py in a subprocess as a user would, on a finished tiny run whose files are
doctored; the doctored files stay small (the bounds are relative to the net, or the files sparse).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnn_explorer.checkpoints import MAX_NET_ELEMENTS
from cnn_explorer.run_status import STATUS_FILE, read_status
from cnn_explorer.rundir import (
    MAX_METRICS_BYTES,
    MAX_METRICS_ROWS,
    SAVED_HYDRA,
    load_run_config,
    run_choices,
    run_launch_dir,
    run_overrides,
)
from cnn_explorer.safe_config import MAX_YAML_BYTES
from tests.conftest import ANALYZE_FAST, ROOT, TINY_MINIMAL, compose_train_config, tree_snapshot

ANALYZED = [*TINY_MINIMAL, "test=false"]  # a finished run of the small net without views: the fastest to read
PEAK_MB = 1500  # importing torch alone takes ~650 MB of RSS, analyze.py's imports ~930 MB; the defects took GBs
SECONDS = 60  # a refusal comes before any long work (a few seconds of imports)


@dataclass(frozen=True)
class Result:
    returncode: int
    stderr: str
    peak_mb: int
    seconds: float


def run_measured(script: str, *args: str, cwd: Path, tmp_path: Path) -> Result:
    """``python <script> <args>`` from ``cwd``, with its exit status, stderr, peak memory (RSS) and wall time."""
    start = time.monotonic()
    with (tmp_path / "stderr.txt").open("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / script), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not the fixture's training run's
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        text = stderr.read()
    (tmp_path / "stderr.txt").unlink()
    return Result(process.returncode, text, usage.ru_maxrss // 1024, time.monotonic() - start)


def assert_refused(result: Result, message: str) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert result.peak_mb < PEAK_MB, f"peak {result.peak_mb} MB"
    assert result.seconds < SECONDS, f"{result.seconds:.0f} s"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *ANALYZED, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A copy of the finished run, to doctor."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("report"))
    return copy


def analyze_refuses(run_dir: Path, tmp_path: Path, message: str) -> None:
    before = tree_snapshot(tmp_path)
    result = run_measured("analyze.py", str(run_dir), *ANALYZE_FAST, cwd=tmp_path, tmp_path=tmp_path)
    assert_refused(result, message)
    assert tree_snapshot(tmp_path) == before  # no report, no temp folder, nothing changed


def train_refuses(ckpt: Path, tmp_path: Path, message: str, *overrides: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    before = tree_snapshot(tmp_path)
    result = run_measured("train.py", *ANALYZED, *overrides, f"ckpt_path={ckpt}", cwd=work, tmp_path=tmp_path)
    assert_refused(result, message)
    assert tree_snapshot(tmp_path) == before  # no run dir (in work/outputs or beside the checkpoint), no .hydra


def edit_config(run_dir: Path, key: str, value: object) -> None:
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    OmegaConf.update(config, key, value)
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")


def alias_bomb(levels: int = 9) -> str:
    """YAML that expands to 10**levels strings ("billion laughs")."""
    lines = ['lol0: &lol0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"lol{n}: &lol{n} [{','.join([f'*lol{n - 1}'] * 10)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


# --- 8: the net is checked against the checkpoint before it is allocated -----------------------------------------


@pytest.mark.parametrize(
    ("hidden", "message"),
    [
        (250_000, "shape (ckpt vs config): classifier.fc1.weight (256, 2048) vs (250000, 2048)"),  # 2 GB of fc1
        (1_000_000_000, f"more than the {MAX_NET_ELEMENTS:,} this project builds"),  # 8 TB
    ],
    ids=["2GB", "8TB"],
)
def test_analyze_checks_the_net_size_before_building_it(run_dir, tmp_path, hidden, message):
    edit_config(run_dir, "model.net.hidden", hidden)
    analyze_refuses(run_dir, tmp_path, message)


def test_train_resume_checks_the_net_size_before_building_it(finished, tmp_path):
    ckpt = tmp_path / "last.ckpt"  # outside a run dir: the composed config is the one checked
    shutil.copyfile(finished / "checkpoints" / "last.ckpt", ckpt)
    message = f"model.net describes a net of 2,059,000,093,258 weights, more than the {MAX_NET_ELEMENTS:,}"
    train_refuses(ckpt, tmp_path, message, "model.net.hidden=1000000000")


# --- 9: file sizes, YAML aliases and rows are bounded ------------------------------------------------------------


def test_analyze_refuses_a_yaml_alias_bomb_in_the_config(run_dir, tmp_path):
    with (run_dir / ".hydra" / "config.yaml").open("a") as config:
        config.write(alias_bomb())
    analyze_refuses(run_dir, tmp_path, "uses a YAML anchor or alias (&name, *name), which train.py never writes")


def test_analyze_refuses_a_config_larger_than_the_cap(run_dir, tmp_path):
    with (run_dir / ".hydra" / "config.yaml").open("r+b") as config:
        config.truncate(2 * MAX_YAML_BYTES)  # sparse: no disk used
    analyze_refuses(run_dir, tmp_path, f"is larger than {MAX_YAML_BYTES} bytes, the most read from a run dir's config")


def test_train_resume_refuses_an_alias_bomb_in_the_checkpoints_run_dir(run_dir, tmp_path):
    with (run_dir / ".hydra" / "config.yaml").open("a") as config:
        config.write(alias_bomb())
    train_refuses(run_dir / "checkpoints" / "last.ckpt", tmp_path, "uses a YAML anchor or alias")


def test_analyze_refuses_metrics_larger_than_the_cap(run_dir, tmp_path):
    with (run_dir / "csv" / "version_0" / "metrics.csv").open("r+b") as metrics:
        metrics.truncate(MAX_METRICS_BYTES + 2**20)  # sparse
    analyze_refuses(run_dir, tmp_path, f"the run's metrics files are larger than {MAX_METRICS_BYTES} bytes together")


def test_analyze_refuses_metrics_with_more_rows_than_the_cap(run_dir, tmp_path):
    (run_dir / "csv" / "version_0" / "metrics.csv").write_text("epoch,step\n" + "0,0\n" * (MAX_METRICS_ROWS + 1))
    analyze_refuses(run_dir, tmp_path, f"the run's metrics files have more than {MAX_METRICS_ROWS} rows")


def test_labels_of_a_run_fall_back_quickly_on_an_alias_bomb(run_dir):
    hydra_yaml = run_dir / SAVED_HYDRA
    hydra_yaml.write_text(hydra_yaml.read_text() + alias_bomb())
    (run_dir / ".hydra" / "overrides.yaml").write_text(alias_bomb() + "x: [*lol8]\n")
    start = time.monotonic()
    assert run_choices(run_dir) == {} and run_launch_dir(run_dir) is None and run_overrides(run_dir) == []
    assert time.monotonic() - start < 5


def test_hydra_yaml_resolvers_are_read_as_written(run_dir):
    hydra_yaml = run_dir / SAVED_HYDRA
    saved = OmegaConf.load(hydra_yaml)
    saved.hydra.runtime.choices.model = "${oc.env:HOME}"
    OmegaConf.save(saved, hydra_yaml)
    assert run_choices(run_dir)["model"] == "${oc.env:HOME}"


def test_an_oversized_run_status_is_not_read(run_dir):
    with (run_dir / STATUS_FILE).open("r+b") as status:
        status.truncate(64 * 2**20)  # sparse
    assert read_status(run_dir) is None


# --- 10: resolvers in a run dir's config run nothing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.net.hidden", "${oc.env:HOME}", "model.net.hidden calls the resolver 'oc.env' ('${oc.env:HOME}')"),
        ("data.val_size", "${oc.decode:'[1, 2]'}", "data.val_size calls the resolver 'oc.decode'"),
        ("data.source.root", "${oc.env:HOME}", "data.source.root calls the resolver 'oc.env'"),
        ("model.net.hidden", "${..seed}", "may refer only to absolute keys such as ${data.num_classes}"),
        ("model.net.hidden", "${nope.missing}", "model.net.hidden refers to ${nope.missing}, which the config"),
        ("model.net.hidden", "${model.net.hidden}", "model.net.hidden refers to itself"),
    ],
    ids=["oc.env", "oc.decode", "oc.env-data-root", "relative", "missing", "loop"],
)
def test_analyze_refuses_resolvers_in_the_config(run_dir, tmp_path, key, value, message):
    edit_config(run_dir, key, value)
    analyze_refuses(run_dir, tmp_path, message)


def test_analyze_refuses_references_that_expand_the_config(run_dir, tmp_path):
    lines = ["lol0: " + "x" * 1000]
    lines += [f"lol{n}: '{''.join(['${lol' + str(n - 1) + '}'] * 10)}'" for n in range(1, 9)]  # 10**8 x 1000 chars
    with (run_dir / ".hydra" / "config.yaml").open("a") as config:
        config.write("\n".join(lines) + "\n")
    analyze_refuses(run_dir, tmp_path, "its references (${key}) would add")


@pytest.mark.parametrize("data", ["synthetic", "cifar10", "cifar10_folder", "imagenette", "pennfudan"])
def test_the_interpolations_train_py_saves_are_accepted(tmp_path, data):
    """Every data option's saved config resolves: its references, and the oc.env of conf/data/source/."""
    config = compose_train_config(["task=detection"] if data == "pennfudan" else [f"data={data}"], tmp_path)
    config_dict = OmegaConf.to_container(config, resolve=False)
    config_dict["run_dir"] = "${hydra:runtime.output_dir}"  # as train.py saves it
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config_dict), tmp_path / ".hydra" / "config.yaml")
    loaded = load_run_config(tmp_path)
    assert OmegaConf.to_container(loaded, resolve=True)["run_dir"] == str(tmp_path)


# --- 11: checkpoints hold no more than the net's training state, from a Lightning that resumes them --------------


def doctor_checkpoint(source: Path, target: Path, **changes: object) -> Path:
    contents = torch.load(source, map_location="cpu", weights_only=True)
    contents.update(changes)
    contents = {k: v for k, v in contents.items() if v is not None}
    torch.save(contents, target)
    return target


# 4M float32 (16 MB) beside the small net's 0.62M weights: above 4 values per weight plus 4 MB for Lightning's state.
BOGUS = {"bogus": torch.zeros(4_000_000)}


def test_train_resume_refuses_a_checkpoint_carrying_a_bogus_tensor(finished, tmp_path):
    ckpt = doctor_checkpoint(finished / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", **BOGUS)
    train_refuses(ckpt, tmp_path, "It carries data that belongs to nothing the net or its training has")


def test_analyze_refuses_a_checkpoint_carrying_a_bogus_tensor(run_dir, tmp_path):
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    doctor_checkpoint(best, best, **BOGUS)
    analyze_refuses(run_dir, tmp_path, "It carries data that belongs to nothing the net or its training has")


@pytest.mark.parametrize(
    ("version", "message"),
    [("1.5.0", "was written by Lightning 1.5.0; the installed Lightning"), (None, "not marked with a Lightning")],
    ids=["1.5.0", "none"],
)
def test_train_resume_refuses_a_checkpoint_of_an_older_lightning(finished, tmp_path, version, message):
    changes = {"pytorch-lightning_version": version}
    ckpt = doctor_checkpoint(finished / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", **changes)
    train_refuses(ckpt, tmp_path, message)
