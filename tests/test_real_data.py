"""Long checks on the real CIFAR-10 copy (`pytest -m slow`); they skip where ../shared/data is absent."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SHARED_CIFAR, needs_cifar

pytestmark = [pytest.mark.slow, needs_cifar]


def test_one_real_epoch_learns_and_analyze_agrees_with_train(tmp_path):
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            "train.py",
            "data=cifar10_folder",
            f"data.source.root={SHARED_CIFAR}",
            f"data.source.cache_dir={tmp_path / 'cache'}",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=150",
            "~callbacks.progress_bar",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    analyze = subprocess.run(
        [sys.executable, "analyze.py", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    summary = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert summary["run"]["classes"] == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert summary["test"]["images"] == 10_000
    assert abs(summary["test"]["acc"] - summary["test"]["logged_acc"]) < 0.001  # within 0.1 percentage points
    assert 0.35 < summary["test"]["acc"] < 0.9  # 150 batches of 128 images: well above chance, far from converged
