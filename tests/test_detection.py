"""The detection task: sources, boxes through resize and flips, the split, mAP by hand, train.py end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnn_explorer.detection.data import DetectionDataModule, detection_split, hflip, resize_sample
from cnn_explorer.detection.module import mean_average_precision
from cnn_explorer.detection.sources import (
    CocoJsonSource,
    DetectionSample,
    PennFudanSource,
    SyntheticDetection,
    VocFolderSource,
    boxes_from_masks,
)
from cnn_explorer.errors import UserError
from cnn_explorer.run_status import write_status
from tests.conftest import ROOT, TINY_DETECTION, compose_train_config, run_cli

SHARED_PENNFUDAN = Path(os.environ.get("PENNFUDAN_ROOT", ROOT.parent / "shared" / "data" / "pennfudan"))


def rectangle_sample(width: int, height: int, box: tuple[int, int, int, int]) -> DetectionSample:
    """A grey image with one white rectangle covering pixel columns x1..x2-1 and rows y1..y2-1, and its mask."""
    x1, y1, x2, y2 = box
    image = torch.full((3, height, width), 100, dtype=torch.uint8)
    image[:, y1:y2, x1:x2] = 255
    mask = torch.zeros(1, height, width, dtype=torch.uint8)
    mask[0, y1:y2, x1:x2] = 1
    return DetectionSample("r", image, torch.tensor([box], dtype=torch.float32), torch.tensor([1]), mask)


def test_boxes_from_masks_bound_the_pixels_by_their_edges():
    mask = torch.zeros(1, 10, 12, dtype=torch.uint8)
    mask[0, 2:5, 3:6] = 1  # rows 2..4, columns 3..5
    assert boxes_from_masks(mask).tolist() == [[3.0, 2.0, 6.0, 5.0]]


def test_resize_scales_boxes_and_masks_together():
    # 80 x 40 (W x H) -> shorter side 20: factor 1/2 on both axes; box (10, 20, 30, 40) -> (5, 10, 15, 20).
    resized = resize_sample(rectangle_sample(80, 40, (10, 20, 30, 40)), min_size=20, max_size=100)
    assert resized.image.shape == (3, 20, 40) and resized.masks.shape == (1, 20, 40)
    assert resized.boxes.tolist() == [[5.0, 10.0, 15.0, 20.0]]
    assert boxes_from_masks(resized.masks).tolist() == resized.boxes.tolist()
    # The longer side capped: 80 x 40 -> max_size 60 gives factor 3/4 (60 x 30), box (7.5, 15, 22.5, 30).
    capped = resize_sample(rectangle_sample(80, 40, (10, 20, 30, 40)), min_size=40, max_size=60)
    assert capped.image.shape == (3, 30, 60)
    assert capped.boxes.tolist() == [[7.5, 15.0, 22.5, 30.0]]


def test_hflip_mirrors_boxes_and_masks():
    # W = 64: x1, x2 = 10, 30 -> 64 - 30, 64 - 10 = 34, 54; y unchanged.
    sample = rectangle_sample(64, 32, (10, 5, 30, 25))
    image, target = hflip(sample.image, {"boxes": sample.boxes, "labels": sample.labels, "masks": sample.masks})
    assert target["boxes"].tolist() == [[34.0, 5.0, 54.0, 25.0]]
    assert boxes_from_masks(target["masks"]).tolist() == target["boxes"].tolist()
    assert image[0, 10, 34] == 255 and image[0, 10, 33] == 100


def test_split_fixes_the_test_images_by_name_and_seeds_val():
    train, val, test = detection_split(170, 20, 30, seed=0)
    assert (len(train), len(val), len(test)) == (120, 20, 30)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(170))
    # Evenly spaced: floor((i + 1/2) * 170 / 30) -> 2, 8, 14, ..., 167.
    assert test[:3].tolist() == [2, 8, 14] and test[-1].item() == 167
    other = detection_split(170, 20, 30, seed=1)
    assert torch.equal(other[2], test) and not torch.equal(other[1], val)
    with pytest.raises(ValueError, match="leave training images"):
        detection_split(10, 5, 5, seed=0)


def test_datamodule_batches_are_torchvision_targets_and_flips_keep_boxes_on_the_rectangles():
    dm = DetectionDataModule(
        SyntheticDetection(num_images=30, image_size=64),
        min_size=64,
        max_size=64,
        val_size=5,
        test_size=5,
        batch_size=8,
    )
    dm.setup("fit")
    assert (len(dm.train_images), len(dm.val_images), len(dm.test_images)) == (20, 5, 5)
    raw = next(iter(dm.train_dataloader()))
    images, targets = dm.prepare_batch(raw, train=True)
    assert len(images) == len(targets) == 8
    flipped = 0
    for original, image, target in zip(raw[0], images, targets, strict=True):
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert set(target) == {"boxes", "labels", "masks"} and target["labels"].dtype == torch.int64
        # The rectangles' boxes are their masks' boxes, flipped or not; the red channel is 230 inside each box.
        assert torch.equal(boxes_from_masks(target["masks"]), target["boxes"])
        for x1, y1, x2, y2 in target["boxes"].int().tolist():
            assert image[0, y1:y2, x1:x2].eq(230 / 255).float().mean() > 0.5
        flipped += not torch.equal(image, original.float() / 255)
    assert 0 < flipped < 8  # about half of the batch (seeded: the exact count is fixed for this seed)


def test_datamodule_refuses_a_wrong_class_count():
    dm = DetectionDataModule(SyntheticDetection(num_images=12), num_classes=2, val_size=2, test_size=2)
    with pytest.raises(UserError, match="num_classes=2"):
        dm.setup("fit")


def test_voc_and_coco_folders_read_boxes_as_pixel_edges(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "JPEGImages" / "a.jpg")
    objects = "".join(
        f"<object><name>{name}</name><difficult>{hard}</difficult><bndbox><xmin>11</xmin><ymin>6</ymin>"
        f"<xmax>30</xmax><ymax>20</ymax></bndbox></object>"
        for name, hard in (("dog", 0), ("cat", 0), ("cat", 1))
    )
    (tmp_path / "Annotations" / "a.xml").write_text(f"<annotation>{objects}</annotation>")
    voc = VocFolderSource(str(tmp_path)).load()
    # 1-based inclusive 11..30 -> edges 10..30; the difficult cat skipped; classes sorted: cat=1, dog=2.
    assert voc.classes == ("cat", "dog")
    assert voc.samples[0].boxes.tolist() == [[10.0, 5.0, 30.0, 20.0]] * 2
    assert voc.samples[0].labels.tolist() == [2, 1]

    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "bbox": [10, 20, 30, 15],
                "area": 450,
                "iscrowd": 0,
                "segmentation": [[10, 20, 40, 20, 40, 35, 10, 35]],
            },
        ],
        "categories": [{"id": 3, "name": "person"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    loaded = CocoJsonSource(str(tmp_path / "JPEGImages"), str(tmp_path / "coco.json"), masks=True).load()
    sample = loaded.samples[0]
    assert loaded.classes == ("person",) and sample.labels.tolist() == [1]
    assert sample.boxes.tolist() == [[10.0, 20.0, 40.0, 35.0]]  # x, y, w, h -> x1, y1, x1 + w, y1 + h
    assert sample.masks.shape == (1, 40, 50) and sample.masks[0, 25, 20] == 1 and sample.masks[0, 5, 5] == 0


def test_map_of_one_hit_and_one_miss_is_51_of_101():
    """Two pedestrians, one found exactly, one missed. Precision is 1 up to recall 1/2 and there is no detection
    beyond it; COCO's AP averages the interpolated precision at the 101 recalls 0, 0.01, ..., 1: the 51 points up
    to 0.50 get 1, the 50 above get 0, so AP = 51/101 at every IoU threshold (the hit has IoU 1) and recall 1/2."""
    metric = mean_average_precision()
    truth = {"boxes": torch.tensor([[10.0, 10, 60, 110], [100, 10, 150, 110]]), "labels": torch.tensor([1, 1])}
    found = {"boxes": torch.tensor([[10.0, 10, 60, 110]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    metric.update([found], [truth])
    result = metric.compute()
    assert result["map_50"].item() == pytest.approx(51 / 101, abs=1e-6)
    assert result["map"].item() == pytest.approx(51 / 101, abs=1e-6)
    assert result["mar_100"].item() == pytest.approx(0.5)


def test_map_with_a_confident_false_positive_halves_the_precision():
    """The same hit, ranked below a false positive scored 0.95: after the first detection precision is 0 at
    recall 0, after the second 1/2 at recall 1/2. Interpolated precision is 1/2 for the 51 recalls up to 0.50:
    AP = 0.5 * 51 / 101."""
    metric = mean_average_precision()
    truth = {"boxes": torch.tensor([[10.0, 10, 60, 110], [100, 10, 150, 110]]), "labels": torch.tensor([1, 1])}
    found = {
        "boxes": torch.tensor([[200.0, 10, 250, 110], [10, 10, 60, 110]]),
        "scores": torch.tensor([0.95, 0.9]),
        "labels": torch.tensor([1, 1]),
    }
    metric.update([found], [truth])
    assert metric.compute()["map_50"].item() == pytest.approx(0.5 * 51 / 101, abs=1e-6)


def test_backbone_starts_from_the_imagenet_weights():
    from cnn_explorer.detection.models import FasterRCNNLite0
    from cnn_explorer.standard_nets import efficientnet_lite0_imagenet_state_dict

    torch.manual_seed(0)
    net = FasterRCNNLite0(pretrained=True)
    weights = efficientnet_lite0_imagenet_state_dict()
    assert torch.equal(net.backbone.body.conv_stem.weight, weights["conv_stem.weight"])
    assert not net.backbone.body.conv_stem.weight.requires_grad  # frozen stem
    net.train()
    assert not net.backbone.body.bn1.training  # frozen BatchNorm statistics in train mode


@pytest.mark.parametrize(
    "data",
    [
        "pennfudan",
        "synthetic_detection",
        "detection_folder data.source.images=IMAGES data.source.annotations=FILE.json data.num_classes=3",
    ],
)
def test_task_detection_composes_its_data_model_and_callbacks(data, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train_config(["task=detection", *f"data={data}".split()], tmp_path)
    assert cfg.task == "detection" and cfg.optimized_metric == "val/map_best"
    assert isinstance(instantiate(cfg.data), DetectionDataModule)  # nothing is read before setup()
    assert cfg.model.net._target_.endswith("FasterRCNNLite0") and cfg.model.net.min_size == cfg.data.min_size
    checkpoint = instantiate(cfg.callbacks.checkpoint)
    assert (checkpoint.monitor, checkpoint.mode) == ("val/map", "max")
    # The file name has no "/" (a sub-folder): val/map is written as val_map.
    assert checkpoint.format_checkpoint_name({"epoch": 3, "val/map": torch.tensor(0.5)}).endswith(
        "checkpoints/epoch003-val_map0.5000.ckpt"
    )
    assert "filters" not in cfg.callbacks  # the classification views are not composed
    classification = compose_train_config([], tmp_path)
    assert classification.task == "classification" and classification.callbacks.checkpoint.monitor == "val/acc"


# A 2-epoch detection run on 24 synthetic images, stopped after its first epoch as if interrupted.
TWO_EPOCHS = [*TINY_DETECTION, "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def stopped_detection_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("detection") / "run"
    stop = ["+callbacks.stop._target_=tests.interrupt.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    return run_dir, run_cli("train.py", *TWO_EPOCHS, *stop, f"hydra.run.dir={run_dir}")


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))


def test_train_py_detection_runs_end_to_end(stopped_detection_run):
    run_dir, result = stopped_detection_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/map" in result.stdout + result.stderr
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch000-val_map") for name in checkpoints)
    rows = read_metrics(run_dir)
    val_map = [float(r["val/map"]) for r in rows if r.get("val/map")]
    assert len(val_map) == 1 and 0.0 <= val_map[0] <= 1.0
    assert any(r.get("train/loss_classifier") for r in rows) and any(r.get("test/map_50") for r in rows)
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "completed" and "test/map" in json.dumps(status)


@pytest.mark.slow  # a second train.py run, ~20 s of CPU
def test_detection_run_resumes_in_its_run_dir(stopped_detection_run):
    run_dir, _ = stopped_detection_run
    write_status(run_dir, "interrupted", "stopped after epoch 0")  # a completed run is never written into again
    result = run_cli("train.py", *TWO_EPOCHS, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 0, result.stderr[-3000:]
    # Epoch 0 in the first run's CSV, epoch 1 in the resumed run's (a resumed run adds a CSV version).
    rows = [
        row for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")) for row in csv.DictReader(open(path))
    ]
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/map")) == [0, 1]


@pytest.mark.slow  # decoding 170 photos and masks: ~15 s on two cores
@pytest.mark.skipif(
    not (SHARED_PENNFUDAN / "images").is_dir(),
    reason=f"Penn-Fudan is not at {SHARED_PENNFUDAN} (set PENNFUDAN_ROOT to use another path)",
)
def test_pennfudan_loads_170_images_423_pedestrians_with_agreeing_boxes():
    source = PennFudanSource(str(SHARED_PENNFUDAN), box_tolerance=8.0)
    loaded = source.load()  # raises if a mask's box and its annotated box differ by more than 8 px
    assert len(loaded.samples) == 170 and loaded.classes == ("person",)
    assert sum(len(s.boxes) for s in loaded.samples) == 423
    exact = 0
    for sample in loaded.samples:
        noted = source.annotated_boxes(SHARED_PENNFUDAN / "annotations" / f"{sample.name}.txt")
        exact += int((noted == sample.boxes).all(dim=1).sum())
        assert sample.masks.shape == (len(sample.boxes), *sample.image.shape[1:])
    assert exact == 407  # the other 16 within 6 px (see PennFudanSource)
    with pytest.raises(UserError, match="disagree"):
        PennFudanSource(str(SHARED_PENNFUDAN), box_tolerance=5.0).load()
