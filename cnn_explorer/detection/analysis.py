"""What a detector got right and wrong on a labelled image set: matches at IoU 0.5, the precision-recall curve, the
confident false positives, the missed objects and a score-threshold table. Pure torch, no Lightning.

Everything starts from one matching (:func:`match_detections`), COCO's (Lin et al. 2014, pycocotools'
``evaluateImg``): per image and class, detections in descending score order each take the not yet matched ground-truth
box they overlap most, if that IoU is >= 0.5; a detection that takes none is a false positive. Because the matching
is greedy in score order, keeping only the detections scored >= t keeps exactly the first matches: one matching
answers every score threshold (a ground-truth box is found at threshold t iff its detection's score is >= t).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)  # scores of the threshold table
IOU_MATCH = 0.5  # PASCAL VOC's and COCO's mAP@.5 criterion
MAX_DETECTIONS = 100  # per image, the most COCO's evaluation keeps (mAP's maxDets), so AP@.5 here equals its map_50
# COCO's 101 recall points of interpolated AP, as pycocotools makes them (torch.linspace differs in the last bit).
RECALL_POINTS = torch.from_numpy(np.linspace(0.0, 1.0, 101))


@dataclass(frozen=True)
class DetectionMatches:
    """The matching of an image set's detections to its ground truth, flattened over images.

    Detections (``D`` of them, at most :data:`MAX_DETECTIONS` per image, the highest-scoring):

    Attributes:
        det_image: int64 ``[D]`` the image of each detection.
        det_index: int64 ``[D]`` its index in that image's predictions.
        det_score: float ``[D]``.
        det_label: int64 ``[D]``.
        det_box: float ``[D, 4]`` xyxy pixels.
        det_true: bool ``[D]`` it matched a ground-truth box (a true positive at IoU :attr:`iou_threshold`).
        det_iou: float ``[D]`` its largest IoU with a ground-truth box of its class (matched or not; 0 if none):
            a false positive with a high one is a duplicate or a misplaced box, with 0 it fired on background.

    Ground-truth boxes (``G`` of them):

    Attributes:
        gt_image: int64 ``[G]``.
        gt_index: int64 ``[G]`` its index in that image's targets.
        gt_label: int64 ``[G]``.
        gt_box: float ``[G, 4]``.
        gt_score: float ``[G]`` the score of the detection that matched it, 0 if none did.
        gt_best_iou: float ``[G]`` its largest IoU with any detection of its class (0 if none).

    Attributes:
        num_images: images in the set.
        iou_threshold: the IoU a match needs.
    """

    det_image: Tensor
    det_index: Tensor
    det_score: Tensor
    det_label: Tensor
    det_box: Tensor
    det_true: Tensor
    det_iou: Tensor
    gt_image: Tensor
    gt_index: Tensor
    gt_label: Tensor
    gt_box: Tensor
    gt_score: Tensor
    gt_best_iou: Tensor
    num_images: int
    iou_threshold: float

    @property
    def num_objects(self) -> int:
        return len(self.gt_image)

    def found(self, threshold: float) -> Tensor:
        """bool ``[G]``: matched by a detection scored >= ``threshold``."""
        return (self.gt_score >= threshold) & (self.gt_score > 0)


def match_detections(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    iou_threshold: float = IOU_MATCH,
    max_detections: int = MAX_DETECTIONS,
) -> DetectionMatches:
    """Match each image's detections to its ground-truth boxes as COCO's evaluation does (see the module docstring).

    Ties in score keep the predictions' order (a stable sort, as pycocotools' mergesort); a detection takes the
    unmatched box of largest IoU, the first on ties.

    Args:
        predictions: per image ``{"boxes" [K, 4], "scores" [K], "labels" [K]}`` (torchvision's eval output).
        targets: per image ``{"boxes" [M, 4], "labels" [M]}``.
        iou_threshold: the IoU a match needs (>=).
        max_detections: per image, only the highest-scoring ones are matched and kept.

    Returns:
        :class:`DetectionMatches`, tensors on the CPU.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    det: dict[str, list[Tensor]] = {k: [] for k in ("image", "index", "score", "label", "box", "true", "iou")}
    gt: dict[str, list[Tensor]] = {k: [] for k in ("image", "index", "label", "box", "score", "best_iou")}
    for image, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        scores = pred["scores"].detach().float().cpu()
        order = scores.argsort(descending=True, stable=True)[:max_detections]
        boxes, labels = pred["boxes"].detach().float().cpu()[order], pred["labels"].detach().cpu()[order]
        scores = scores[order]
        gt_boxes, gt_labels = target["boxes"].detach().float().cpu(), target["labels"].detach().cpu()
        iou = box_iou(boxes, gt_boxes) if len(boxes) and len(gt_boxes) else torch.zeros(len(boxes), len(gt_boxes))
        iou = torch.where(labels[:, None] == gt_labels[None, :], iou, torch.zeros_like(iou))  # [K, M], same class
        taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
        true = torch.zeros(len(boxes), dtype=torch.bool)
        gt_score = torch.zeros(len(gt_boxes))
        for k in range(len(boxes)):  # descending score
            free = torch.where(taken, torch.full_like(iou[k], -1.0), iou[k])
            if len(free) and free.max() >= iou_threshold:
                m = int(free.argmax())
                taken[m], true[k], gt_score[m] = True, True, scores[k]
        det["image"].append(torch.full((len(boxes),), image, dtype=torch.int64))
        det["index"].append(order)
        det["score"].append(scores)
        det["label"].append(labels.long())
        det["box"].append(boxes.reshape(-1, 4))
        det["true"].append(true)
        det["iou"].append(iou.amax(1) if iou.shape[1] else torch.zeros(len(boxes)))
        gt["image"].append(torch.full((len(gt_boxes),), image, dtype=torch.int64))
        gt["index"].append(torch.arange(len(gt_boxes)))
        gt["label"].append(gt_labels.long())
        gt["box"].append(gt_boxes.reshape(-1, 4))
        gt["score"].append(gt_score)
        gt["best_iou"].append(iou.amax(0) if iou.shape[0] else torch.zeros(len(gt_boxes)))
    cat = {f"det_{k}": _cat(v, k) for k, v in det.items()} | {f"gt_{k}": _cat(v, k) for k, v in gt.items()}
    return DetectionMatches(**cat, num_images=len(targets), iou_threshold=iou_threshold)


def _cat(parts: list[Tensor], key: str) -> Tensor:
    if parts:
        return torch.cat(parts)
    return torch.zeros(0, 4) if key == "box" else torch.zeros(0)


@dataclass(frozen=True)
class PrecisionRecall:
    """The precision-recall curve of all detections ranked by score, across images and classes.

    Attributes:
        scores: float ``[D]`` descending: the threshold at each point.
        precision: float ``[D]`` true positives / detections scored >= ``scores[i]``.
        recall: float ``[D]`` true positives / ground-truth boxes.
        average_precision: COCO's 101-point interpolated AP at the matching's IoU (NaN without ground truth).
    """

    scores: Tensor
    precision: Tensor
    recall: Tensor
    average_precision: float


def precision_recall(matches: DetectionMatches) -> PrecisionRecall:
    """The precision-recall curve and its AP as COCO computes it (pycocotools' ``accumulate``): the precision made
    monotone from the right (the best precision at any recall >= r), read at the recalls 0, 0.01, ..., 1 (the first
    point reaching each; 0 past the last), averaged.

    With one class (Penn-Fudan) this AP at IoU 0.5 is COCO's mAP@.5 (torchmetrics' ``map_50``); with several it
    pools the classes' detections into one ranking, where COCO averages per-class APs.
    """
    order = matches.det_score.argsort(descending=True, stable=True)
    true = matches.det_true[order].double()  # float64 as pycocotools: recall 0.5 meets the recall point 0.5 exactly
    tp, fp = true.cumsum(0), (1 - true).cumsum(0)
    precision = tp / (tp + fp).clamp_min(1)
    recall = tp / max(matches.num_objects, 1)
    scores = matches.det_score[order]
    if matches.num_objects == 0:
        return PrecisionRecall(scores, precision, recall, math.nan)
    if len(precision) == 0:
        return PrecisionRecall(scores, precision, recall, 0.0)
    envelope = precision.flip(0).cummax(0).values.flip(0)  # the best precision at this recall or beyond
    index = torch.searchsorted(recall, RECALL_POINTS, side="left")  # the first point reaching each recall
    sampled = torch.where(index < len(envelope), envelope[index.clamp(max=len(envelope) - 1)], 0.0)
    return PrecisionRecall(scores, precision, recall, float(sampled.mean()))


@dataclass(frozen=True)
class ThresholdRow:
    """The detections kept at one score threshold, counted against the ground truth."""

    threshold: float
    true_positives: int
    false_positives: int
    objects: int
    precision: float  # NaN when nothing is kept
    recall: float  # NaN without ground truth
    f1: float
    detections_per_image: float
    false_positives_per_image: float


def threshold_table(matches: DetectionMatches, thresholds: Sequence[float] = THRESHOLDS) -> list[ThresholdRow]:
    """Per score threshold t: the detections scored >= t, their precision, recall, F1 (``2PR / (P + R)``, 0 when
    both are 0, NaN when either is NaN) and counts per image."""
    rows = []
    for t in thresholds:
        kept = matches.det_score >= t
        tp, fp = int((kept & matches.det_true).sum()), int((kept & ~matches.det_true).sum())
        g = matches.num_objects
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / g if g else math.nan
        if math.isnan(precision) or math.isnan(recall):
            f1 = math.nan
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        n = max(matches.num_images, 1)
        rows.append(ThresholdRow(t, tp, fp, g, precision, recall, f1, (tp + fp) / n, fp / n))
    return rows


def confident_false_positives(matches: DetectionMatches, k: int) -> Tensor:
    """int64 ``[<= k]``: indices into the matches' detections of the ``k`` highest-scoring false positives."""
    false = (~matches.det_true).nonzero().squeeze(1)
    order = matches.det_score[false].argsort(descending=True, stable=True)
    return false[order][:k]


def missed_objects(matches: DetectionMatches, score_threshold: float) -> Tensor:
    """int64 ``[M]``: indices into the matches' ground-truth boxes that no detection scored >= ``score_threshold``
    matched at the matching's IoU, in image order."""
    return (~matches.found(score_threshold)).nonzero().squeeze(1)
