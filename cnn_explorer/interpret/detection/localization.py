"""Checks of a detection's explanation: is its energy on the object, and does the box score follow it?

Two measures. The energy-based pointing game (Wang et al. 2020) needs a ground-truth mask of the object, which
Penn-Fudan has for every pedestrian. Deletion and insertion (Petsiuk et al. 2018) need only the detector: they
are the classification half's curves (:mod:`cnn_explorer.interpret.attribution.faithfulness`) with the target
class's probability replaced by the target's box score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.attribution.faithfulness import PerturbationCurves, deletion_insertion, random_order_curves
from cnn_explorer.interpret.detection.matching import Detector, box_scores, check_target


def energy_share(maps: Tensor, masks: Tensor) -> Tensor:
    """The share of each map's positive energy that lies inside its mask.

    Wang et al. (2020), "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
    section 5.2 (the energy-based pointing game): ``sum(relu(map) * mask) / sum(relu(map))``. 1 when all positive
    attribution is on the object; :func:`chance_share` is what a map spread evenly over the image gets. Only the
    positive part counts, so evidence against the target (negative values, e.g. of D-RISE's centered map) is
    neither credited nor charged.

    Args:
        maps: ``[..., H, W]`` float, one map or a batch ``[N, H, W]``.
        masks: ``[..., H, W]`` bool or {0, 1}, the object's pixels, same shape.

    Returns:
        ``[...]`` float in [0, 1] (a 0-d tensor for one map); NaN for a map with no positive value (no energy to
        place), so one degenerate map does not hide the others of a batch.

    Raises:
        BadArgument: if the shapes differ or have fewer than 2 dimensions.
    """
    _check_masks(maps, masks)
    energy = maps.detach().float().clamp_min(0)
    inside = (energy * masks.to(energy)).sum(dim=(-2, -1))
    total = energy.sum(dim=(-2, -1))
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.nan)


def chance_share(masks: Tensor) -> Tensor:
    """``[...]`` the share :func:`energy_share` gives a uniform map: the mask's area over the image's area.

    Args:
        masks: ``[..., H, W]`` bool or {0, 1}.
    """
    if masks.ndim < 2:
        raise BadArgument(f"masks must be [..., H, W], got shape {tuple(masks.shape)}")
    return masks.detach().float().mean(dim=(-2, -1))


def box_deletion_insertion(
    detector: Detector,
    image: Tensor,
    box: Tensor,
    label: int,
    saliency: Tensor,
    *,
    steps: int = 32,
    baseline: str = "blur",
    blur_sigma: float = 2.0,
    batch_size: int = 16,
) -> PerturbationCurves:
    """Deletion and insertion curves of the target's box score, pixels taken in the map's order (one image).

    Petsiuk, Das, Saenko (2018), section 4.1, as :func:`~cnn_explorer.interpret.attribution.faithfulness.
    deletion_insertion` computes it for a class (same pixel order, ties, steps, baselines and batching), with the
    class probability replaced by :func:`~cnn_explorer.interpret.detection.matching.box_score`: the score of the
    detection of the target label that overlaps the target box most, times that IoU, 0 when none does. A good map
    makes the deletion curve fall fast (low :attr:`~PerturbationCurves.deletion_auc`) and the insertion curve rise
    fast (high :attr:`~PerturbationCurves.insertion_auc`); compare with :func:`box_random_order_curves`.

    The classification code takes a model returning logits; it is reused through :class:`_BoxScoreModel`, which
    returns ``log([s, 1 - s])`` so that its softmax is ``[s, 1 - s]`` and the tracked "probability" of class 0 is
    the box score ``s`` itself (exactly: softmax of log-probabilities that sum to 1 returns them).

    ``blur_sigma`` is in pixels: the default 2 suits 32 px images; for a detector's few-hundred-pixel images a
    larger one (~1 % of the image side) removes comparable detail.

    Args:
        detector: a :class:`~cnn_explorer.interpret.detection.matching.Detector`; an ``nn.Module`` is run in eval
            mode without gradients and left as found.
        image: ``[C, H, W]`` float, as the detector takes it.
        box: ``[4]`` target box, xyxy pixels.
        label: target class index.
        saliency: ``[H, W]`` the map whose order is checked.
        steps, baseline, blur_sigma: as the classification function.
        batch_size: perturbed images per detector call, >= 2.

    Returns:
        :class:`~cnn_explorer.interpret.attribution.faithfulness.PerturbationCurves` with one row (``N = 1``); stack
        the AUCs of several images to compare methods.

    Raises:
        BadArgument: on a malformed image, box, label or map.
        ValueError: on steps, baseline, blur_sigma or batch_size outside their ranges (from the classification code).
    """
    model, images, targets = _as_classifier(detector, image, box, label, saliency)
    return deletion_insertion(
        model,
        images,
        targets,
        saliency.detach()[None],
        steps=steps,
        baseline=baseline,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
    )


def box_random_order_curves(
    detector: Detector,
    image: Tensor,
    box: Tensor,
    label: int,
    *,
    seed: int = 0,
    steps: int = 32,
    baseline: str = "blur",
    blur_sigma: float = 2.0,
    batch_size: int = 16,
) -> PerturbationCurves:
    """:func:`box_deletion_insertion` for a uniformly random pixel order (seeded CPU generator): the chance level."""
    model, images, targets = _as_classifier(detector, image, box, label, None)
    return random_order_curves(
        model, images, targets, seed=seed, steps=steps, baseline=baseline, blur_sigma=blur_sigma, batch_size=batch_size
    )


class _BoxScoreModel(nn.Module):
    """``[B, C, H, W]`` -> ``[B, 2]`` log-probabilities ``log(s), log(1 - s)`` of the target's box score ``s``.

    The adapter that lets the classification half's deletion/insertion code (which tracks a softmax probability)
    track a detection's box score. ``log(0) = -inf`` is fine there: softmax of ``[-inf, 0]`` is ``[0, 1]``.
    """

    def __init__(self, detector: Detector, box: Tensor, label: int) -> None:
        super().__init__()
        # An nn.Module detector becomes a child: eval mode, the state guard and the device reach it.
        self.detector = detector
        self.box = box
        self.label = label

    def forward(self, images: Tensor) -> Tensor:
        score = box_scores(self.detector, list(images), self.box, self.label).float().clamp(0, 1)  # [B]
        return torch.stack([score.log(), torch.log1p(-score)], dim=1)  # [B, 2]


def _as_classifier(
    detector: Detector, image: Tensor, box: Tensor, label: int, saliency: Tensor | None
) -> tuple[nn.Module, Tensor, Tensor]:
    """Check the arguments; the box-score model, the image as a batch ``[1, C, H, W]`` and the target ``[1]`` = 0."""
    if image.ndim != 3 or not image.is_floating_point():
        raise BadArgument(f"image must be float [C, H, W], got {image.dtype} {tuple(image.shape)}")
    target_box = check_target(box, label)
    if saliency is not None and saliency.shape != image.shape[-2:]:
        raise BadArgument(f"saliency must be [H, W] = {list(image.shape[-2:])}, got {tuple(saliency.shape)}")
    model = _BoxScoreModel(detector, target_box, label)
    return model, image.detach()[None], torch.zeros(1, dtype=torch.long)


def _check_masks(maps: Tensor, masks: Tensor) -> None:
    if maps.shape != masks.shape or maps.ndim < 2:
        raise BadArgument(
            f"maps and masks must have the same shape [..., H, W], got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
