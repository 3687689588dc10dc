"""Explanations of a detection (D-RISE, box Grad-CAM) and their checks, on hand-built detectors with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from cnn_explorer.interpret.detection import (
    box_deletion_insertion,
    box_grad_cam,
    box_random_order_curves,
    box_score,
    chance_share,
    detection_similarity,
    drise,
    energy_share,
    matched_detection,
    rise_masks,
)

# --- hand-built detectors -------------------------------------------------------------------------------------


def region_mask(size: int, box: tuple[int, int, int, int]) -> Tensor:
    """``[size, size]`` bool, True inside the xyxy box."""
    x1, y1, x2, y2 = box
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


class BrightnessDetector:
    """One detection of label 1, box R, whose score is the image's mean brightness inside R: only R matters."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        self.box = torch.tensor(box, dtype=torch.float)
        self.calls = 0

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self.calls += 1
        x1, y1, x2, y2 = (int(v) for v in self.box)
        return [
            {"boxes": self.box[None], "scores": image[:, y1:y2, x1:x2].mean()[None], "labels": torch.tensor([1])}
            for image in images
        ]


class PaddingTransform(nn.Module):
    """Pads each image on the right to twice its width, as torchvision's transform pads a batch (ImageList)."""

    def forward(self, images: list[Tensor]) -> tuple[ImageList, None]:
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        padded = torch.stack([nn.functional.pad(image, (0, image.shape[-1])) for image in images])  # [B, C, H, 2W]
        return ImageList(padded, sizes), None


class CellDetector(nn.Module):
    """A tiny detector: ``backbone`` averages each channel over 4 x 4 cells (stride 4); the head's only detection
    (label 1, box R) has score ``sigmoid(mean of channel 0 over R's cells)``: it reads channel 0 inside R only."""

    def __init__(self, box: tuple[int, int, int, int], *, pad: bool = False) -> None:
        super().__init__()
        if pad:
            self.transform = PaddingTransform()
        self.backbone = nn.Conv2d(2, 2, kernel_size=4, stride=4, groups=2, bias=False)
        with torch.no_grad():
            self.backbone.weight.fill_(1 / 16)
        self.box = box

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        batch = self.transform(images)[0].tensors if hasattr(self, "transform") else torch.stack(images)
        features = self.backbone(batch)  # [B, 2, h, w]
        x1, y1, x2, y2 = (v // 4 for v in self.box)
        score = torch.sigmoid(features[:, 0, y1:y2, x1:x2].mean(dim=(1, 2)))  # [B]
        box = torch.tensor(self.box, dtype=torch.float)
        return [{"boxes": box[None], "scores": s[None], "labels": torch.tensor([1])} for s in score]


# --- matching --------------------------------------------------------------------------------------------------

TARGET = torch.tensor([0.0, 0.0, 10.0, 10.0])
# A: same label, IoU 50/100 = 0.5, score 0.9; B: same label, IoU 80/100 = 0.8, score 0.3; C: label 2, IoU 1, score 1.
DETECTIONS = {
    "boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 10.0]]),
    "scores": torch.tensor([0.9, 0.3, 1.0]),
    "labels": torch.tensor([1, 1, 2]),
}


def test_matching_picks_the_best_overlap_of_the_target_label() -> None:
    assert matched_detection(DETECTIONS, TARGET, 1) == 1  # B, not A (higher score) nor C (other label)
    assert box_score(DETECTIONS, TARGET, 1).item() == pytest.approx(0.3 * 0.8)
    assert matched_detection(DETECTIONS, TARGET, 2) == 2
    assert matched_detection(DETECTIONS, TARGET, 7) is None
    assert box_score(DETECTIONS, TARGET, 7).item() == 0
    far = torch.tensor([20.0, 20.0, 30.0, 30.0])  # IoU 0 with every detection: nothing matches
    assert matched_detection(DETECTIONS, far, 1) is None
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert box_score(empty, TARGET, 1).item() == 0


def test_drise_similarity_is_iou_times_class_term() -> None:
    # Labels and scores only: IoU x (score if the label is the target's, else 0).
    similarity = detection_similarity(DETECTIONS, TARGET, 1)
    torch.testing.assert_close(similarity, torch.tensor([0.5 * 0.9, 0.8 * 0.3, 0.0]))
    # Class probabilities: IoU x cosine with the one-hot target, x objectness. Row 0: (0.6, 0.8) has norm 1 -> cos
    # with e1 is 0.8; row 1: (1, 0) -> cos 0 with e1.
    detections = {
        **DETECTIONS,
        "class_probs": torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]),
        "objectness": torch.tensor([0.5, 1.0, 1.0]),
    }
    torch.testing.assert_close(
        detection_similarity(detections, TARGET, 1), torch.tensor([0.5 * 0.8 * 0.5, 0.0, 1.0 * 1.0 * 1.0])
    )


# --- D-RISE -----------------------------------------------------------------------------------------------------


def test_rise_masks_are_smooth_shifted_grids_kept_with_probability_p() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = rise_masks(2000, (16, 24), cells=4, p=0.25, generator=generator)
    assert masks.shape == (2000, 16, 24)
    assert masks.min() >= 0 and masks.max() <= 1
    # Each pixel is a convex combination of Bernoulli(p) cells: mean p (std of the mean here < 0.01).
    assert masks.mean().item() == pytest.approx(0.25, abs=0.02)
    # Bilinear upsampling makes values between 0 and 1 (smooth masks), not a binary grid.
    assert ((masks > 0.05) & (masks < 0.95)).float().mean() > 0.2
    again = rise_masks(2000, (16, 24), cells=4, p=0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_drise_puts_the_energy_on_the_region_the_score_reads() -> None:
    """Score = mean brightness of R (8 x 8 px of a 32 x 32 image, 2 x 2 cells of 4 px): only R matters.

    Expected: the centered map (covariance of score and mask) is ~0 away from R and positive on it; bilinear masks
    spread each cell's value over +-1 cell, so pixels within one cell of R covary too and share the energy: inside R
    itself ~0.45-0.5 of it (7x chance, 0.0625), inside R grown by one cell (4 px) ~0.8-0.87 (measured, seeds 0-3,
    1000 masks: 0.46-0.48 and 0.81-0.87). The paper's map carries the floor mean(w) = E[mean of a mask over R] = p
    everywhere, so its energy share is near chance: why localization uses the centered map.
    """
    box = (8, 8, 16, 16)
    detector = BrightnessDetector(box)
    image = torch.ones(3, 32, 32)
    explained = drise(detector, image, torch.tensor(box, dtype=torch.float), 1, masks=1000, cells=8, batch_size=250)
    assert detector.calls == 4  # 1000 masks, 250 per call
    inside = region_mask(32, box)
    grown = region_mask(32, (4, 4, 20, 20))
    share = energy_share(explained.centered, inside).item()
    assert share > 0.4 and share > 6 * chance_share(inside).item()
    assert energy_share(explained.centered, grown).item() > 0.75
    row, column = divmod(int(explained.centered.argmax()), 32)
    assert inside[row, column]
    assert explained.weights.mean().item() == pytest.approx(0.5, abs=0.03)  # E[w] = p
    far = region_mask(32, (24, 24, 32, 32))  # > 1 cell from R: saliency = E[w] E[M] / p = p
    assert explained.saliency[far].mean().item() == pytest.approx(0.5, abs=0.05)
    assert energy_share(explained.saliency, inside).item() == pytest.approx(chance_share(inside).item(), abs=0.03)


def test_drise_of_a_score_that_ignores_the_image_is_flat() -> None:
    """Every mask gets the same weight c: the centered map is 0 and the paper's map is c x coverage / p."""

    def constant(images: list[Tensor]) -> list[dict[str, Tensor]]:
        box = TARGET[None]
        return [{"boxes": box, "scores": torch.tensor([0.7]), "labels": torch.tensor([1])} for _ in images]

    explained = drise(constant, torch.rand(3, 20, 20), TARGET, 1, masks=64, cells=4, p=0.5, batch_size=10)
    torch.testing.assert_close(explained.weights, torch.full((64,), 0.7))
    torch.testing.assert_close(explained.centered, torch.zeros(20, 20), atol=1e-6, rtol=0)
    coverage = rise_masks(64, (20, 20), cells=4, p=0.5, generator=torch.Generator().manual_seed(0)).mean(dim=0)
    torch.testing.assert_close(explained.saliency, 0.7 * coverage / 0.5)
    # Not found at all (another label): every weight 0, both maps 0.
    missed = drise(constant, torch.rand(3, 20, 20), TARGET, 3, masks=8, cells=4)
    assert missed.weights.abs().sum() == 0 and missed.saliency.abs().sum() == 0


def test_drise_depends_on_the_seed_not_the_batch_size() -> None:
    detector = BrightnessDetector((4, 4, 12, 12))
    image, box = torch.rand(3, 16, 16), torch.tensor([4.0, 4.0, 12.0, 12.0])
    one = drise(detector, image, box, 1, masks=30, cells=4, batch_size=7)
    other = drise(detector, image, box, 1, masks=30, cells=4, batch_size=30)
    torch.testing.assert_close(one.saliency, other.saliency)
    assert not torch.equal(one.saliency, drise(detector, image, box, 1, masks=30, cells=4, seed=1).saliency)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"p": 1.0}, "p "), ({"cells": 17}, "cells"), ({"masks": 0}, "masks"), ({"batch_size": 0}, "batch_size")],
)
def test_drise_rejects_bad_options(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        drise(BrightnessDetector((0, 0, 4, 4)), torch.ones(3, 16, 16), torch.tensor([0.0, 0.0, 4.0, 4.0]), 1, **options)


def test_drise_rejects_a_malformed_box() -> None:
    with pytest.raises(ValueError, match="x1 < x2"):
        drise(BrightnessDetector((0, 0, 4, 4)), torch.ones(3, 16, 16), torch.tensor([4.0, 0.0, 4.0, 4.0]), 1)


# --- box Grad-CAM ---------------------------------------------------------------------------------------------


def cell_scene() -> Tensor:
    """Channel 0 lit on R = [8, 16) x [8, 16) (cells 2-3), channel 1 lit on a distractor [16, 32) x [16, 32)."""
    image = torch.zeros(2, 32, 32)
    image[0, 8:16, 8:16] = 1
    image[1, 16:32, 16:32] = 1
    return image


def test_box_grad_cam_concentrates_on_the_region_the_score_reads() -> None:
    """Hand-derived: A_0 = 1 on R's 2 x 2 cells, 0 elsewhere; the score sigmoid(mean of A_0 over R) has
    dy/dA_0 = sigmoid'(1) / 4 on those 4 cells, so alpha_0 = sigmoid'(1) / 64 (mean over 8 x 8), alpha_1 = 0: the
    cell map is alpha_0 on R, 0 elsewhere (the distractor channel gets no weight). Upsampled x4 bilinearly
    (align_corners=False), a 2-cell step has the 1-D profile .125 .375 | .625 .875 1 1 1 1 .875 .625 | .375 .125:
    7 of its 8 units inside R, so the share inside R is (7/8)^2 = 49/64."""
    box = (8, 8, 16, 16)
    detector = CellDetector(box)
    cam = box_grad_cam(detector, cell_scene(), torch.tensor(box, dtype=torch.float), 1, layer="backbone")
    assert cam.shape == (32, 32)
    sigmoid = 1 / (1 + math.exp(-1))
    assert cam.max().item() == pytest.approx(sigmoid * (1 - sigmoid) / 64, rel=1e-5)
    assert energy_share(cam, region_mask(32, box)).item() == pytest.approx(49 / 64, abs=1e-6)
    # Zero from 2 px past R on (pixel 18 interpolates cells 4 and 5, both 0): the distractor gets nothing.
    assert cam[18:].abs().sum() == 0 and cam[:, 18:].abs().sum() == 0


def test_box_grad_cam_crops_the_padded_canvas_of_a_resizing_transform() -> None:
    """With a transform that pads the image to twice its width, the feature map covers the canvas (8 x 16 cells);
    the map cropped to the image has the unpadded detector's shape and place, at half its height: alpha is the
    gradient's mean over 128 cells instead of 64."""
    box = (8, 8, 16, 16)
    target = torch.tensor(box, dtype=torch.float)
    plain = box_grad_cam(CellDetector(box), cell_scene(), target, 1, layer="backbone")
    padded = box_grad_cam(CellDetector(box, pad=True), cell_scene(), target, 1, layer="backbone")
    torch.testing.assert_close(padded, plain / 2)


def test_explanations_leave_the_detector_as_found_and_grad_cam_refuses_a_missing_target() -> None:
    box = (8, 8, 16, 16)
    detector = CellDetector(box).train()
    grad = torch.full_like(detector.backbone.weight, 3.0)
    detector.backbone.weight.grad = grad
    with torch.inference_mode():
        box_grad_cam(detector, cell_scene(), torch.tensor(box, dtype=torch.float), 1, layer="backbone")
    assert detector.training and detector.backbone.training
    assert detector.backbone.weight.grad is grad and torch.equal(grad, torch.full_like(grad, 3.0))
    assert not detector.backbone._forward_hooks
    # The black-box methods too: eval mode inside, the caller's modes after.
    drise(detector, cell_scene(), torch.tensor(box, dtype=torch.float), 1, masks=4, cells=4)
    box_random_order_curves(detector, cell_scene(), torch.tensor(box, dtype=torch.float), 1, steps=2)
    assert detector.training and detector.backbone.training
    with pytest.raises(ValueError, match="no detection of label 2"):
        box_grad_cam(detector, cell_scene(), torch.tensor(box, dtype=torch.float), 2, layer="backbone")
    with pytest.raises(ValueError, match="unknown layer"):
        box_grad_cam(detector, cell_scene(), torch.tensor(box, dtype=torch.float), 1, layer="head")
    assert not detector.backbone._forward_hooks


# --- localization: the energy-based pointing game ------------------------------------------------------------


def test_energy_share_counts_positive_energy_inside_the_mask() -> None:
    saliency = torch.tensor([[2.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, -5.0]])
    mask = region_mask(4, (0, 0, 2, 2))  # the top-left 2 x 2
    # Positive energy 2 + 1 + 3 = 6, of which 2 + 1 inside (the -1 is not counted): 3 / 6.
    assert energy_share(saliency, mask).item() == pytest.approx(0.5)
    assert chance_share(mask).item() == pytest.approx(4 / 16)
    # Batched: the same map, a map with no positive energy (NaN), a map all inside.
    maps = torch.stack([saliency, -saliency.abs(), mask.float()])
    shares = energy_share(maps, mask.expand(3, 4, 4))
    assert shares[0].item() == pytest.approx(0.5) and math.isnan(shares[1].item()) and shares[2].item() == 1
    torch.testing.assert_close(chance_share(mask.expand(3, 4, 4)), torch.full((3,), 0.25))
    with pytest.raises(ValueError, match="same shape"):
        energy_share(saliency, mask[:2])


# --- localization: deletion and insertion of the box score ----------------------------------------------------


def test_deletion_of_the_region_first_drops_the_box_score_faster_than_random() -> None:
    """Score = mean brightness of R (4 x 4 px of 16 x 16 = 1/16 of the pixels) on a white image, baseline 0.

    The map ranks R's 16 pixels first; with 16 steps of 16 px the first step deletes all of R: the curve is
    1, 0, 0, ... and its AUC is the first trapezoid, (1 + 0) / 2 x 1/16 = 1/32. Insertion is the mirror image
    (0, 1, 1, ...: AUC 1 - 1/32). A random order removes R's pixels at the rate of all others: the score falls
    linearly on average, AUC ~ 1/2.
    """
    box = (4, 4, 8, 8)
    detector = BrightnessDetector(box)
    image = torch.ones(3, 16, 16)
    target = torch.tensor(box, dtype=torch.float)
    saliency = region_mask(16, box).float()
    curves = box_deletion_insertion(detector, image, target, 1, saliency, steps=16, baseline="zero", batch_size=34)
    assert curves.deletion.shape == (1, 17)
    assert curves.deletion[0, 0].item() == pytest.approx(1.0) and curves.deletion[0, 1].item() == 0
    assert curves.deletion_auc.item() == pytest.approx(1 / 32)
    assert curves.insertion_auc.item() == pytest.approx(1 - 1 / 32)
    chance = box_random_order_curves(detector, image, target, 1, steps=16, baseline="zero", batch_size=34)
    assert chance.deletion_auc.item() == pytest.approx(0.5, abs=0.15)
    assert curves.deletion_auc.item() < chance.deletion_auc.item()
    assert curves.insertion_auc.item() > chance.insertion_auc.item()
    with pytest.raises(ValueError, match="saliency must be"):
        box_deletion_insertion(detector, image, target, 1, saliency[:8])
