"""Shared test fixtures: the repo root, the shared CIFAR-10 copy (when present), composed configs, the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from cnn_explorer.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_CIFAR = Path(os.environ.get("CIFAR10_FOLDER", ROOT.parent / "shared" / "data" / "cifar10-jpeg"))

# Tiny synthetic data and a short run: a few seconds per fit on two cores.
TINY_MINIMAL = [
    "data=synthetic",
    "data.source.train_size=1000",
    "data.source.test_size=200",
    "data.val_size=200",
    "trainer.max_epochs=2",
    "callbacks=minimal",  # checkpoints, epoch timing, progress bar: no views
    "trainer.enable_progress_bar=false",  # train.py leaves the bar's callback out
    "trainer.enable_model_summary=false",
]
# The same with every view (the default callbacks), each at every epoch whatever it costs, since tests check
# which epochs drew; the last epoch's checks smaller (10 images for the explanation scores, 8 steps per
# optimized input), as they dominate a tiny run.
TINY = [
    *(o for o in TINY_MINIMAL if o != "callbacks=minimal"),
    "view_time_budget=null",
    "callbacks.explanation_scores.per_class=1",
    "callbacks.features.visualization_steps=8",
]

# A detection run on 24 synthetic images, as fast as train.py allows (add trainer.max_epochs=N).
TINY_DETECTION = [
    "task=detection",
    "data=synthetic_detection",
    "data.source.num_images=24",
    "data.val_size=4",
    "data.test_size=4",
    "+trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]

# analyze.py on a tiny run, quickly: two attribution methods (one gradient, one CAM) on 20 test images.
ANALYZE_FAST = ["--methods", "gradient", "grad_cam", "--faithfulness-images", "20"]

needs_cifar = pytest.mark.skipif(
    not (SHARED_CIFAR / "train").is_dir(),
    reason=f"the CIFAR-10 JPEG copy is not at {SHARED_CIFAR} (set CIFAR10_FOLDER to use another path)",
)


def compose_train_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """conf/train.yaml composed as train.py would, with the run dir pinned to ``run_dir``."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"run_dir={run_dir}"])


def run_cli(script: str, *args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python <script> <args>`` as a user runs it, from ``cwd``; the repo's scripts by name (train.py, analyze.py)."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def trained_run_dir(tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str) -> Path:
    """A run dir trained by ``train.py <overrides>`` in a fresh temporary folder (for module-scoped fixtures)."""
    run_dir = tmp_path_factory.mktemp(name) / "run"
    result = run_cli("train.py", *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def write_image_folder(
    root: Path, classes: list[str], per_class: int = 2, size: int = 32, split_dirs: tuple[str, ...] = ("train", "test")
) -> None:
    """An ImageFolder dataset of solid-colour RGB PNGs: ``root/<split>/<class>/<i>.png``, a colour per class and
    image."""
    for split in split_dirs:
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (label * 20, i * 50, 7)).save(root / split / name / f"{i}.png")


def tree_snapshot(folder: Path) -> dict[str, str]:
    """Every file and dir under ``folder`` with a hash of its bytes: equal snapshots, untouched folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }
