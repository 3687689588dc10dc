"""Explanations of one detection, and their checks: pure torch, any detector shaped like torchvision's.

- :mod:`.matching`: the :class:`Detector` interface, the target detection's match and box score, D-RISE's similarity.
- :mod:`.drise`: D-RISE (Petsiuk et al. 2021), black-box, from randomly masked images.
- :mod:`.box_cam`: Grad-CAM (Selvaraju et al. 2017) of the box score at a backbone layer.
- :mod:`.localization`: the energy-based pointing game (Wang et al. 2020) against a ground-truth mask, and the
  deletion/insertion curves of the box score (Petsiuk et al. 2018).
- :mod:`.checks`: both methods checked over the objects of a few images: localization against the masks vs chance,
  deletion/insertion vs a random order, the randomization cascade (heads first), with paired bootstrap intervals.

Like the rest of :mod:`cnn_explorer.interpret`, every function leaves the detector's modes, flags, ``.grad`` tensors
and hooks as it found them.
"""

from __future__ import annotations

from cnn_explorer.interpret.detection.box_cam import box_grad_cam
from cnn_explorer.interpret.detection.checks import (
    ExplanationChecks,
    checks_markdown,
    explanation_checks,
    randomization_steps,
)
from cnn_explorer.interpret.detection.drise import DRiseMap, drise, rise_masks
from cnn_explorer.interpret.detection.localization import (
    box_deletion_insertion,
    box_random_order_curves,
    chance_share,
    energy_share,
)
from cnn_explorer.interpret.detection.matching import (
    Detections,
    Detector,
    box_score,
    box_scores,
    detection_similarity,
    matched_detection,
)

__all__ = [
    "DRiseMap",
    "Detections",
    "Detector",
    "ExplanationChecks",
    "box_deletion_insertion",
    "box_grad_cam",
    "box_random_order_curves",
    "box_score",
    "box_scores",
    "chance_share",
    "checks_markdown",
    "detection_similarity",
    "drise",
    "energy_share",
    "explanation_checks",
    "matched_detection",
    "randomization_steps",
    "rise_masks",
]
