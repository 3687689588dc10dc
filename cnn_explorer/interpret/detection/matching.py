"""Which detection is "the" detection being explained, and how much another detection resembles it.

A detector here is anything shaped like torchvision's detection models in eval mode (:class:`Detector`): a list
of images in, one dict of boxes, scores and labels per image out. Both explanation methods and their checks
explain one number per detection, computed here: D-RISE's similarity to the target detection (Petsiuk et al.
2021) and the box score of the Grad-CAM target (:func:`box_score`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from cnn_explorer.errors import BadArgument

Detections = Mapping[str, Tensor]
"""One image's detections: ``boxes [K, 4]`` float ``(x1, y1, x2, y2)`` in pixels, ``scores [K]`` in [0, 1],
``labels [K]`` integer; optionally ``class_probs [K, num_classes]`` (a class probability vector per detection)
and ``objectness [K]`` in [0, 1] (for detectors that expose them, e.g. YOLO-style heads)."""


class Detector(Protocol):
    """torchvision's detection interface in eval mode: ``detector([image [C, H, W], ...]) -> [detections, ...]``.

    Faster R-CNN, RetinaNet, FCOS and SSDlite fit it as they are; so does any callable returning
    :data:`Detections` per image.
    """

    def __call__(self, images: list[Tensor], /) -> list[dict[str, Tensor]]: ...


def check_target(box: Tensor, label: int) -> Tensor:
    """Check a target detection's box and label; return the box as a float ``[4]`` tensor.

    Raises:
        BadArgument: if ``box`` is not 4 finite numbers with ``x1 < x2`` and ``y1 < y2``, or ``label`` is not an
            int >= 0.
    """
    if box.shape != (4,) or not torch.isfinite(box).all():
        raise BadArgument(f"box must be 4 finite numbers (x1, y1, x2, y2), got {box.tolist()}")
    x1, y1, x2, y2 = box.tolist()
    if not (x1 < x2 and y1 < y2):
        raise BadArgument(f"box must have x1 < x2 and y1 < y2 (pixels, xyxy), got {box.tolist()}")
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise BadArgument(f"label must be a class index >= 0, got {label!r}")
    return box.detach().float()


def detection_similarity(
    detections: Detections, box: Tensor, label: int, *, class_probs: Tensor | None = None
) -> Tensor:
    """D-RISE's similarity of each detection to the target detection: ``IoU x class term [x objectness]``.

    Petsiuk et al. (2021), "Black-box Explanation of Object Detectors via Saliency Maps", section 3.1, eq. 2:
    ``s(d_t, d_j) = IoU(L_t, L_j) * cos(P_t, P_j) * O_j``. The class term is the cosine of the class
    probability vectors when the detections carry ``class_probs`` (the target's vector is ``class_probs`` if
    given, else the one-hot vector of ``label``); when the detector exposes only a label and a score (torchvision's
    models), it is the paper's simplification: the score if the label is the target's, else 0 (the cosine of a
    one-hot target with a vector whose only known entry is the score at the detection's label). The objectness
    factor is applied only when the detections carry ``objectness``.

    Args:
        detections: one image's :data:`Detections` (``K`` may be 0).
        box: ``[4]`` target box, xyxy pixels.
        label: target class index.
        class_probs: ``[num_classes]`` the target's class probability vector, used only with detections that
            carry ``class_probs``.

    Returns:
        ``[K]`` similarities in [0, 1] (for scores and probabilities in [0, 1]), on the detections' device.
    """
    boxes = detections["boxes"]
    target_box = box.to(device=boxes.device, dtype=boxes.dtype)
    iou = box_iou(target_box[None], boxes)[0]  # [K]
    if "class_probs" in detections:
        probs = detections["class_probs"]  # [K, num_classes]
        target = F.one_hot(torch.tensor(label), probs.shape[1]) if class_probs is None else class_probs
        class_term = F.cosine_similarity(target.to(probs)[None], probs, dim=1)  # [K]
    else:
        labels = detections["labels"].to(boxes.device)
        scores = detections["scores"]
        class_term = torch.where(labels == label, scores, torch.zeros_like(scores))
    similarity = iou * class_term
    if "objectness" in detections:
        similarity = similarity * detections["objectness"]
    return similarity


def matched_detection(detections: Detections, box: Tensor, label: int) -> int | None:
    """Index of the detection with the target label whose box overlaps the target box most, or ``None``.

    ``None`` when no detection has the label or none of them overlaps the box (IoU 0). Ties go to the first.
    """
    boxes = detections["boxes"]
    same = detections["labels"].to(boxes.device) == label
    if not same.any():
        return None
    iou = box_iou(box.to(device=boxes.device, dtype=boxes.dtype)[None], boxes.detach())[0]  # [K]
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))
    best = int(iou.argmax())
    return best if float(iou[best]) > 0 else None


def box_score(detections: Detections, box: Tensor, label: int) -> Tensor:
    """The target's box score: ``score_j * IoU(box, box_j)`` of :func:`matched_detection` ``j``, else 0.

    The number the gradient method and the deletion/insertion check explain. pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` takes, per target box, the detection of highest IoU and (if its label matches and
    the IoU passes a threshold) adds ``score + IoU``. A product instead of a sum: it is 0 when the detector no longer
    finds the object (score 0) *or* no longer puts a box on it (IoU 0), as D-RISE's similarity is, so the two
    explanations explain the same quantity up to the choice of detection (D-RISE takes the most similar detection,
    this the best-overlapping one of the right class); with a sum, a confident box next to the object still
    scores. Differentiable through both factors where the detector is.

    Args:
        detections: one image's :data:`Detections`.
        box: ``[4]`` target box, xyxy pixels.
        label: target class index.

    Returns:
        a 0-d tensor (0 when nothing matches: still a tensor, not connected to the detector's graph).
    """
    index = matched_detection(detections, box, label)
    boxes = detections["boxes"]
    if index is None:
        return torch.zeros((), device=boxes.device)
    iou = box_iou(box.to(device=boxes.device, dtype=boxes.dtype)[None], boxes[index : index + 1])[0, 0]
    return detections["scores"][index] * iou


def box_scores(detector: Detector, images: Sequence[Tensor], box: Tensor, label: int) -> Tensor:
    """``[B]`` :func:`box_score` of one target in each of ``images`` (e.g. perturbed copies of one image)."""
    outputs = detector(list(images))
    return torch.stack([box_score(detections, box, label) for detections in outputs])
