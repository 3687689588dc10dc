"""Two processes of DDP on the CPU (gloo), as the project runs them: each rank trains on its own batches,
figures and numbers cover every image of a split, and every file is written once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.models import ConvNet
from cnn_explorer.sources import SyntheticImages
from tests.conftest import ROOT, TINY, run_cli

SCRIPT = ROOT / "tests" / "scripts" / "ddp_run.py"


def run_ddp(out: Path, strategy: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), strategy], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sync_dist=True" not in result.stderr  # every epoch-level metric is reduced across ranks
    return [
        json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2) if (out / f"rank{rank}.json").exists()
    ]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    return out, run_ddp(out, "ddp")


def test_each_rank_trains_on_its_own_batches(ddp):
    _, ranks = ddp
    for epoch in range(2):
        first, second = (set(rank["train_indices"][epoch]) for rank in ranks)
        assert len(first) == len(second) == 400 and not first & second and len(first | second) == 800, epoch


def test_the_test_confusion_matrix_counts_the_whole_test_set(ddp):
    _, ranks = ddp
    for rank in ranks:
        assert sum(map(sum, rank["test_confusion"])) == 500  # not 250, rank zero's share


def test_metrics_equal_the_single_process_values_on_the_same_weights(ddp):
    out, ranks = ddp
    net = ConvNet([8, "M", 16, "M"], hidden=32)
    net.load_state_dict(torch.load(out / "final_weights.pt", weights_only=True))
    net.eval()
    datamodule = ImageClassificationDataModule(
        SyntheticImages(1000, 500, signal=0.3), val_size=200, mean=[0.5] * 3, std=[0.25] * 3
    )
    datamodule.setup("fit")
    for images, labels, key in (
        (datamodule.val_images, datamodule.val_labels, "val_acc"),
        (datamodule.test_images, datamodule.test_labels, "test_acc"),
    ):
        with torch.no_grad():
            inputs, _ = datamodule.prepare_batch((images, labels), train=False)
            correct = int((net(inputs).argmax(1) == labels).sum())
        for rank in ranks:
            assert rank[key] == pytest.approx(correct / len(labels), abs=1e-6), key


def test_images_and_checkpoints_are_written_once(ddp):
    out, _ = ddp
    events = EventAccumulator(str(out), size_guidance={IMAGES: 0})
    events.Reload()
    counts = {tag: len(events.Images(tag)) for tag in events.Tags()["images"]}
    methods = ["gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "grad_cam"]
    methods += ["grad_cam_plus_plus", "guided_backprop"]
    per_epoch = ["filters/conv1", "misclassified/val", "confusion_matrix/val"]
    per_epoch += [f"feature_maps/class{c}" for c in range(10)] + [f"attributions/{m}" for m in methods]
    assert counts == {**dict.fromkeys(per_epoch, 2), "confusion_matrix/test": 1}  # 2 epochs, one writer
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch001.ckpt"]


@pytest.mark.slow  # two more spawned processes, fit and test: the long checks
def test_ddp_spawn_runs_too(tmp_path, ddp):
    # The DataModule's generator is made in setup(), so the DataModule pickles into the spawned processes.
    (spawned,) = run_ddp(tmp_path, "ddp_spawn")  # only the main process writes its record
    assert spawned["val_acc"] > 0.2 and (tmp_path / "checkpoints" / "epoch001.ckpt").is_file()


def test_train_py_on_two_processes_prints_and_writes_once(tmp_path):
    result = run_cli(
        "train.py",
        *TINY,
        "data.source.test_size=500",
        "data.eval_batch_size=50",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum("- test/acc " in line for line in result.stderr.splitlines()) == 1
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints").iterdir()) == ["epoch001", "last.ckpt"]
    assert json.loads((tmp_path / "run_status.json").read_text())["status"] == "completed"
