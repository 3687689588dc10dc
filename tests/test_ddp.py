"""DDP on the CPU (gloo), as the project runs it: two processes, each rank training on its own batches, figures and
numbers covering every image of a split, every file written once; three processes whose evaluation batches do not
divide between them, every image still counted once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.plugins import TorchSyncBatchNorm
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch.utils.data import DistributedSampler

from cnn_explorer.data import ImageClassificationDataModule, ShardedBatches
from cnn_explorer.errors import UserError
from cnn_explorer.models import ConvNet
from cnn_explorer.sources import SyntheticImages
from tests.conftest import ROOT, TINY, compose_train_config, run_cli
from tests.scripts import ddp_uneven

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


def test_train_loss_and_accuracy_are_the_means_over_both_ranks_images(ddp):
    _, ranks = ddp
    sums = [rank["train_sums"] for rank in ranks]
    images = sum(s["images"] for s in sums)
    assert [s["images"] for s in sums] == [400, 400]
    for rank in ranks:  # every rank logs the pooled figures, not its own share's
        assert rank["train_acc"] == pytest.approx(sum(s["correct"] for s in sums) / images, abs=1e-6)
        assert rank["train_loss"] == pytest.approx(sum(s["loss"] for s in sums) / images, rel=1e-5)


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


def test_each_rank_evaluates_a_contiguous_share_and_every_image_once():
    shares = [ShardedBatches(499, 50, rank, 3) for rank in range(3)]
    # 499 // 3 = 166: images 0-165, 166-331, 332-498.
    assert [[len(batch) for batch in share] for share in shares] == [[50, 50, 50, 16]] * 2 + [[50, 50, 50, 17]]
    assert [len(share) for share in shares] == [4, 4, 4]
    assert torch.cat([batch for share in shares for batch in share]).tolist() == list(range(499))
    # Lightning wraps any other sampler in its own DistributedSampler, which pads with repeated batches.
    assert all(isinstance(share, DistributedSampler) for share in shares)
    # One process: the split in order, as before.
    assert [batch.tolist() for batch in ShardedBatches(120, 50)] == [
        list(range(50)),
        list(range(50, 100)),
        list(range(100, 120)),
    ]
    # The DataModule's: the trainer's global rank of its world size.
    third = ShardedBatches.for_trainer(499, 50, SimpleNamespace(global_rank=2, world_size=3))
    assert (third.start, third.stop) == (332, 499) and ShardedBatches.for_trainer(499, 50, None).stop == 499
    with pytest.raises(UserError, match="2 images for 3 processes"):
        ShardedBatches(2, 50, rank=0, world_size=3)


def test_three_processes_with_uneven_batches_count_every_image_once(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "ddp_uneven.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sync_dist=True" not in result.stderr  # time/views_s included
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(3)]
    # 200 validation images in batches of 33 are 7 batches, 499 test images 16: neither divides by 3. The shares:
    # 66, 67, 67 and 166, 166, 167 images.
    assert [[len(batch) for batch in rank["val_indices"]] for rank in ranks] == [[33, 33], [33, 33, 1], [33, 33, 1]]
    assert [[len(batch) for batch in rank["test_indices"]] for rank in ranks] == [[33] * 5 + [1]] * 2 + [[33] * 5 + [2]]
    for split, n in (("val", 200), ("test", 499)):
        assert [i for rank in ranks for batch in rank[f"{split}_indices"] for i in batch] == list(range(n))
        assert [rank[f"{split}_confusion_total"] for rank in ranks] == [n] * 3  # not 231 and 528, padded
    # One process on the same weights, the whole split in one batch: the same correct count, the same mean loss.
    net = ddp_uneven.net()
    net.load_state_dict(torch.load(tmp_path / "final_weights.pt", weights_only=True))
    net.eval()
    datamodule = ImageClassificationDataModule(SyntheticImages(**ddp_uneven.SOURCE), **ddp_uneven.DATA)
    datamodule.setup("fit")
    for split in ("val", "test"):
        images, labels = getattr(datamodule, f"{split}_images"), getattr(datamodule, f"{split}_labels")
        with torch.no_grad():
            logits = net(datamodule.prepare_batch((images, labels), train=False)[0])
        correct, loss = int((logits.argmax(1) == labels).sum()), float(F.cross_entropy(logits, labels))
        assert 0.3 < correct / len(labels) < 1  # a trained net: accuracy tells a missing or doubled image
        for rank in ranks:
            assert rank[f"{split}_acc"] == pytest.approx(correct / len(labels), abs=1e-6), split
            assert rank[f"{split}_loss"] == pytest.approx(loss, rel=1e-5), split


def test_the_ddp_trainer_option_takes_nodes_and_sync_batchnorm(tmp_path):
    overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=3", "trainer.num_nodes=2"]
    cfg = compose_train_config([*overrides, "trainer.sync_batchnorm=true"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, L.Trainer) and trainer.num_nodes == 2 and trainer.num_devices == 3
    assert trainer.world_size == 6 and type(trainer.strategy).__name__ == "DDPStrategy"
    # The plugin that turns every BatchNorm into a SyncBatchNorm when fitting starts.
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)
