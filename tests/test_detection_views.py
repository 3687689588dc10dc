"""The detection views: matching at IoU 0.5, the precision-recall curve, the threshold table, the drawn boxes, the
TensorBoard view in a real run, and the detection report of a tiny run dir."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cnn_explorer.detection.analysis import (
    confident_false_positives,
    match_detections,
    missed_objects,
    precision_recall,
    threshold_table,
)
from cnn_explorer.detection.module import mean_average_precision
from cnn_explorer.render.boxes import GT_COLOR, PREDICTION_COLOR, BoxesOnImage, draw_boxes
from tests.conftest import TINY_DETECTION, run_cli, trained_run_dir


def hand_built() -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Image 0: objects A = (0, 0, 10, 10) and B = (20, 0, 30, 10); four detections: on A (0.9), a shifted copy of
    A (0.8: IoU 90/110 with A, which the first took: a duplicate), one on background (0.6), one on B (0.4).
    Image 1: object C = (0, 0, 10, 20), no detection."""
    predictions = [
        {
            "boxes": torch.tensor([[1.0, 0, 11, 10], [20, 0, 30, 10], [0, 0, 10, 10], [50, 50, 60, 60]]),
            "scores": torch.tensor([0.8, 0.4, 0.9, 0.6]),  # not sorted: the matching sorts
            "labels": torch.tensor([1, 1, 1, 1]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]), "labels": torch.tensor([1, 1])},
        {"boxes": torch.tensor([[0.0, 0, 10, 20]]), "labels": torch.tensor([1])},
    ]
    return predictions, targets


def test_matching_takes_objects_in_score_order():
    matches = match_detections(*hand_built())
    # Detections flattened in descending score per image: 0.9 (A), 0.8 (duplicate), 0.6 (background), 0.4 (B).
    assert matches.det_score.tolist() == pytest.approx([0.9, 0.8, 0.6, 0.4])
    assert matches.det_index.tolist() == [2, 0, 3, 1]  # their indices in the image's predictions
    assert matches.det_true.tolist() == [True, False, False, True]
    assert matches.det_iou.tolist() == pytest.approx([1.0, 90 / 110, 0.0, 1.0])
    assert matches.gt_score.tolist() == pytest.approx([0.9, 0.4, 0.0])  # A, B, C (C never matched)
    assert matches.found(0.5).tolist() == [True, False, False] and matches.found(0.3).tolist() == [True, True, False]
    assert confident_false_positives(matches, k=5).tolist() == [1, 2]  # the duplicate, then the background box
    assert missed_objects(matches, 0.5).tolist() == [1, 2] and missed_objects(matches, 0.3).tolist() == [2]


def test_a_detection_of_another_class_matches_nothing():
    predictions = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
    ]
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    matches = match_detections(predictions, targets)
    assert matches.det_true.tolist() == [False] and matches.det_iou.tolist() == [0.0]


def test_precision_recall_points_and_ap_equal_cocos_map_50():
    """Ranked 0.9 (hit), 0.8 (miss), 0.6 (miss), 0.4 (hit) of 3 objects: precision 1, 1/2, 1/3, 1/2 at recall
    1/3, 1/3, 1/3, 2/3. Made monotone from the right: 1, 1/2, 1/2, 1/2. Of COCO's 101 recall points, 0.00..0.33
    (34) read 1, 0.34..0.66 (33) read 1/2, 0.67..1 read 0: AP = (34 + 16.5) / 101 = 0.5."""
    predictions, targets = hand_built()
    curve = precision_recall(match_detections(predictions, targets))
    assert curve.precision.tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 2])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert curve.average_precision == pytest.approx(0.5)
    metric = mean_average_precision()
    metric.update(predictions, targets)
    assert metric.compute()["map_50"].item() == pytest.approx(0.5, abs=1e-6)


def test_ap_equals_torchmetrics_map_50_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    predictions, targets = [], []
    for _ in range(20):
        m, k = int(torch.randint(0, 4, (), generator=g)), int(torch.randint(0, 6, (), generator=g))
        corner = torch.rand(m, 2, generator=g) * 200
        truth = torch.cat([corner, corner + 20 + torch.rand(m, 2, generator=g) * 80], 1)
        near = truth[torch.randint(0, m, (k,), generator=g)] if m else torch.rand(k, 4, generator=g) * 100
        boxes = near + torch.randn(k, 4, generator=g) * 10  # jittered copies: IoUs on both sides of 0.5
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 5)], 1)
        predictions.append({"boxes": boxes, "scores": torch.rand(k, generator=g), "labels": torch.ones(k).long()})
        targets.append({"boxes": truth, "labels": torch.ones(m).long()})
    metric = mean_average_precision()
    metric.update(predictions, targets)
    expected = metric.compute()["map_50"].item()
    assert 0.1 < expected < 0.9  # a case with hits and misses
    assert precision_recall(match_detections(predictions, targets)).average_precision == pytest.approx(
        expected, abs=1e-6
    )


def test_threshold_table_counts_by_hand():
    rows = threshold_table(match_detections(*hand_built()))
    by = {r.threshold: r for r in rows}
    # >= 0.3: all four, 2 hits of 3 objects: P 1/2, R 2/3, F1 = 2 (1/2)(2/3) / (7/6) = 4/7; 2 images.
    assert (by[0.3].true_positives, by[0.3].false_positives) == (2, 2)
    assert (by[0.3].precision, by[0.3].recall, by[0.3].f1) == pytest.approx((1 / 2, 2 / 3, 4 / 7))
    assert (by[0.3].detections_per_image, by[0.3].false_positives_per_image) == (2.0, 1.0)
    # >= 0.5: 0.9, 0.8, 0.6: one hit: P 1/3, R 1/3, F1 1/3.
    assert (by[0.5].precision, by[0.5].recall, by[0.5].f1, by[0.5].detections_per_image) == pytest.approx(
        (1 / 3, 1 / 3, 1 / 3, 1.5)
    )
    # >= 0.7: 0.9, 0.8: P 1/2, R 1/3, F1 = 2 (1/6) / (5/6) = 0.4.
    assert (by[0.7].precision, by[0.7].f1, by[0.7].false_positives_per_image) == pytest.approx((0.5, 0.4, 0.5))
    # >= 0.9: only the hit: P 1, R 1/3, F1 1/2, no false positive.
    assert (by[0.9].precision, by[0.9].f1, by[0.9].false_positives) == pytest.approx((1.0, 0.5, 0))
    empty = threshold_table(match_detections([{k: v[:0] for k, v in hand_built()[0][0].items()}], hand_built()[1][:1]))
    assert math.isnan(empty[0].precision) and empty[0].recall == 0.0 and math.isnan(empty[0].f1)


def test_boxes_are_drawn_on_their_edges_in_their_colours():
    item = BoxesOnImage(
        torch.zeros(3, 40, 60, dtype=torch.uint8),
        truth=torch.tensor([[10.0, 5, 30, 25]]),
        boxes=torch.tensor([[40.0, 5, 55, 35]]),
        scores=torch.tensor([0.87]),
    )
    image = draw_boxes(item)
    for y, x in ((5, 20), (25, 20), (15, 10), (15, 30)):  # top, bottom, left, right edges of the truth
        assert image[:, y, x].tolist() == list(GT_COLOR)
    assert image[:, 15, 20].tolist() == [0, 0, 0]  # inside: not filled
    assert image[:, 30, 55].tolist() == list(PREDICTION_COLOR)  # the prediction's right edge
    # Shown twice as large: the truth's edges move with the image (top edge at y = 10, x from 20 to 60).
    larger = draw_boxes(item, height=80)
    assert larger.shape == (3, 80, 120) and larger[:, 10, 40].tolist() == list(GT_COLOR)


# A one-epoch detection run on 24 synthetic images (tests/conftest.py), two probe images.
ONE_EPOCH = [*TINY_DETECTION, "trainer.max_epochs=1", "callbacks.detections.probe_images=2"]


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory) -> Path:
    return trained_run_dir(tmp_path_factory, "detection_views", *ONE_EPOCH)


def test_view_logs_probe_boxes_and_the_last_epochs_curve(detection_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images, texts = {}, set()
    for path in detection_run.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0})
        events.Reload()
        images |= {tag: events.Images(tag) for tag in events.Tags()["images"]}
        texts |= set(events.Tags()["tensors"])
    # The first two validation images by name (split seed 0 of 24 sorted names), one card each, and the curve.
    cards = sorted(tag for tag in images if tag.startswith("detections/"))
    assert len(cards) == 2 and all(tag.startswith("detections/synthetic") for tag in cards)
    assert "precision_recall/val" in images and "detections/thresholds/text_summary" in texts
    for tag in [*cards, "precision_recall/val"]:
        assert [(e.step, e.height) for e in images[tag]] == [(0, 215)]  # epoch 0, the card's height


def test_detection_report_has_the_map_table_and_the_figures(detection_run, tmp_path):
    from cnn_explorer.report.detection_report import METRICS_FILE, REPORT_FILE, write_detection_report

    # Few, cheap explanations: a one-epoch detector usually finds nothing to explain, and the section says so.
    out = write_detection_report(detection_run, tmp_path / "report", explained_objects=1, drise_masks=4)
    text = (out / REPORT_FILE).read_text()
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert "| mAP@[.5:.95] (COCO's primary) |" in text and "| mAP@.5 |" in text and "| AP small" in text
    assert "| score >= | found | precision | recall | F1 |" in text
    for name in ("precision_recall.png", "test_detections.png", "false_positives.png", "missed_objects.png"):
        assert (out / name).stat().st_size > 1000 and name in metrics["figures"]
    test = metrics["test"]
    assert test["images"] == 4 and test["objects"] > 0
    # The map computed here is the one train.py logged for the same checkpoint, and this matching's AP@.5 COCO's.
    assert test["coco"]["map"] == pytest.approx(test["logged"]["map"], abs=1e-4)
    assert test["ap_50_matching"] == pytest.approx(test["coco"]["map_50"], abs=1e-6)
    at = next(r for r in metrics["thresholds"] if r["threshold"] == 0.5)
    assert f"At score >= 0.5, {at['true_positives']} of {test['objects']} objects are found" in text
    assert "## Explanations" in text and ("No explanation checks" in text or "explanations.png" in text)


def test_detection_report_refuses_a_run_without_its_best_checkpoint(detection_run, tmp_path):
    import shutil

    from cnn_explorer.errors import UserError
    from cnn_explorer.report.detection_report import write_detection_report

    copy = tmp_path / "run"
    shutil.copytree(detection_run, copy, ignore=shutil.ignore_patterns("*.ckpt"))
    with pytest.raises(UserError, match="no epochNNN-val_mapX.XXXX.ckpt file .* train it again"):
        write_detection_report(copy)
    assert not (copy / "report").exists()


def test_analyze_py_writes_the_detection_report(detection_run, tmp_path):
    result = run_cli("analyze.py", str(detection_run), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| mAP@.5 |" in (tmp_path / "report" / "report.md").read_text()
