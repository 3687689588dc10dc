"""Adebayo et al.'s data randomization test (issue 18, item 8): the ``data.random_labels_seed`` option, and
``analyze.py RUN --random-labels-run OTHER`` end to end on tiny synthetic runs, refusals included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import analyze
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.report.markdown import interval
from cnn_explorer.sources import SyntheticImages
from tests.conftest import ANALYZE_FAST, TINY_MINIMAL, run_cli, tree_snapshot

# One epoch on 400 images: the test is that the maps are compared and judged, not that the nets are good.
RUN = [o for o in TINY_MINIMAL if not o.startswith(("trainer.max_epochs=", "data.source.train_size="))]
RUN += ["trainer.max_epochs=1", "data.source.train_size=400"]


def datamodule(seed: int | None) -> ImageClassificationDataModule:
    dm = ImageClassificationDataModule(
        SyntheticImages(train_size=300, test_size=50), val_size=100, random_labels_seed=seed, on_device=False
    )
    dm.setup("fit")
    return dm


def test_random_labels_permute_train_and_val_labels_and_keep_the_test_labels() -> None:
    true, permuted, again, other = datamodule(None), datamodule(0), datamodule(0), datamodule(1)
    for split in ("train", "val"):
        labels, shuffled = getattr(true, f"{split}_labels"), getattr(permuted, f"{split}_labels")
        assert torch.equal(getattr(true, f"{split}_images"), getattr(permuted, f"{split}_images"))  # same images
        assert torch.equal(labels.sort().values, shuffled.sort().values)  # a permutation: class counts kept
        assert (labels != shuffled).float().mean() > 0.5  # with 10 classes, ~90% of labels change
        assert torch.equal(shuffled, getattr(again, f"{split}_labels"))  # the seed fixes it
        assert not torch.equal(shuffled, getattr(other, f"{split}_labels"))
    assert torch.equal(true.test_labels, permuted.test_labels) and torch.equal(true.test_images, permuted.test_images)


def test_random_labels_run_goes_with_one_run(tmp_path, capsys) -> None:
    for name in ("a", "b"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("{}\n")
    before = tree_snapshot(tmp_path)
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert analyze.main([*paths, "--out", str(tmp_path / "out"), "--random-labels-run", str(tmp_path / "b")]) == 1
    assert "--random-labels-run goes with one run" in capsys.readouterr().err
    assert tree_snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three tiny runs: the small net on true labels, the same on permuted labels, and the deep net on permuted
    labels (a random-label run of another architecture)."""
    root = tmp_path_factory.mktemp("data_randomization")
    settings = {
        "true": [],
        "random": ["data.random_labels_seed=0"],
        "deep": ["model=deep", "data.random_labels_seed=0"],
    }
    for name, extra in settings.items():
        result = run_cli("train.py", *RUN, *extra, f"hydra.run.dir={root / name}")
        assert result.returncode == 0, result.stderr
    return {name: root / name for name in settings}


def analyze_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("analyze.py", *args, *ANALYZE_FAST, cwd=cwd)


@pytest.mark.slow  # three training runs and a report (minutes on a busy CPU)
def test_analyze_with_a_random_labels_run_writes_the_data_randomization_section(runs) -> None:
    elsewhere = runs["true"].parent / "elsewhere"
    elsewhere.mkdir()
    # Relative paths from another dir: the report names the run's folder, not the path typed.
    result = analyze_py("../true", "--random-labels-run", "../random", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    report = runs["true"] / "report"
    text = (report / "report.md").read_text()
    assert "- Run dir: `true`" in text
    assert "### Data randomization" in text and "permuted labels (`random`)" in text
    assert "on 20 test images (the first 2 of each class)" in text
    assert (report / "attribution_data_randomization.png").is_file()
    assert "![Maps of the model and of the random-label model](attribution_data_randomization.png)" in text
    numbers = json.loads((report / "metrics.json").read_text())["attributions"]["data_randomization"]
    assert numbers["random_labels_run"] == "random" and numbers["images"] == 20
    assert set(numbers["methods"]) == {"gradient", "grad_cam"}
    for m in numbers["methods"].values():
        low, high = m["ci95"]
        assert len(m["spearman"]) == 20 and low <= m["mean"] <= high
        # The verdict follows from the interval and the threshold, as the model randomization check's does.
        expected = "pass" if high < numbers["threshold"] else "fail" if low >= numbers["threshold"] else "unclear"
        assert m["verdict"] == expected
        shown = "**fail**" if m["verdict"] == "fail" else m["verdict"]
        assert f"| {m['title']} | {interval(m['mean'], low, high, 2)} | {shown} |" in text  # its table row


@pytest.mark.slow  # three training runs (about a minute each on a busy CPU)
@pytest.mark.parametrize(
    ("first", "other", "message"),
    [
        ("true", "deep", "is not the architecture of"),
        ("true", "true", "was trained on the true labels"),
        ("random", "random", "was itself trained on permuted labels"),
    ],
)
def test_a_wrong_random_labels_run_is_refused_and_nothing_is_written(runs, first, other, message) -> None:
    out = runs[first].parent / f"out_{first}_{other}"
    before = tree_snapshot(runs[first].parent)
    result = analyze_py(str(runs[first]), "--random-labels-run", str(runs[other]), "--out", str(out), cwd=out.parent)
    assert result.returncode == 1
    assert message in result.stderr
    assert first == "random" or "data.random_labels_seed=0" in result.stderr  # how to train the right run
    assert "Traceback" not in result.stderr
    assert not out.exists() and tree_snapshot(runs[first].parent) == before
