"""The checks of a detection's explanations (localization vs chance, faithfulness, randomization), on hand-built
detectors whose answers are known."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.detection.checks import (
    MATCH_IOU,
    ExplanationChecks,
    checks_markdown,
    explanation_checks,
    randomization_steps,
)

SIZE = 32
# The two detections' boxes (xyxy, multiples of the 4 px cells); each image holds one object, in one of them.
BOXES = ((4, 4, 12, 20), (20, 8, 28, 28))
# What the "looking elsewhere" detector reads for each box: bright patches of channel 1, one cell (4 px) or more
# away from both boxes.
ELSEWHERE = ((20, 0, 32, 4), (0, 24, 12, 32))


class ReadingDetector(nn.Module):
    """Two detections of label 1, boxes ``BOXES``; detection ``k``'s score is ``sigmoid(head([a_k, b_k]))``, where
    ``a_k`` is the mean of backbone channel 0 over ``BOXES[k]`` (the object) and ``b_k`` the mean of channel 1 over
    ``ELSEWHERE[k]`` (off the object).

    ``backbone`` averages each image channel over 4 x 4 cells (stride 4); ``head`` is a 2 -> 1 linear layer whose
    weights say what the detection reads: ``(4, 0)`` the object only, ``(0, 4)`` elsewhere only (bias -2).
    """

    def __init__(self, weights: tuple[float, float]) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 3, kernel_size=4, stride=4, groups=3, bias=False)
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.backbone.weight.fill_(1 / 16)
            self.head.weight.copy_(torch.tensor([weights]))
            self.head.bias.fill_(-2.0)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        features = self.backbone(torch.stack(images))  # [B, 3, 8, 8]
        scores = []
        for (x1, y1, x2, y2), (u1, v1, u2, v2) in zip(BOXES, ELSEWHERE, strict=True):
            inside = features[:, 0, y1 // 4 : y2 // 4, x1 // 4 : x2 // 4].mean(dim=(1, 2))  # [B]
            outside = features[:, 1, v1 // 4 : v2 // 4, u1 // 4 : u2 // 4].mean(dim=(1, 2))  # [B]
            scores.append(torch.sigmoid(self.head(torch.stack([inside, outside], dim=1)))[:, 0])
        score = torch.stack(scores, dim=1)  # [B, 2]
        boxes = torch.tensor(BOXES, dtype=torch.float)
        return [{"boxes": boxes, "scores": s, "labels": torch.ones(len(BOXES), dtype=torch.long)} for s in score]


def looking() -> ReadingDetector:
    """Reads channel 0 inside each box: the object itself."""
    return ReadingDetector((4.0, 0.0))


def elsewhere() -> ReadingDetector:
    """Reads channel 1 in the ``ELSEWHERE`` patches: never the object."""
    return ReadingDetector((0.0, 4.0))


def synthetic_images(count: int) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Image ``i`` holds one object in ``BOXES[i % 2]``: channel 0 is 0.8 there and 0 elsewhere; channel 1 is 0.9 in
    the ``ELSEWHERE`` patches and 0 elsewhere; channel 2 is noise, which neither detector reads."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for i in range(count):
        image = torch.zeros(3, SIZE, SIZE)
        image[2] = torch.rand(SIZE, SIZE, generator=generator)
        x1, y1, x2, y2 = BOXES[i % 2]
        image[0, y1:y2, x1:x2] = 0.8
        for a1, b1, a2, b2 in ELSEWHERE:
            image[1, b1:b2, a1:a2] = 0.9
        mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
        mask[0, y1:y2, x1:x2] = 1
        images.append(image)
        targets.append(
            {
                "boxes": torch.tensor([BOXES[i % 2]], dtype=torch.float),
                "labels": torch.ones(1, dtype=torch.long),
                "masks": mask,
            }
        )
    return images, targets


@pytest.fixture(scope="module")
def checked() -> tuple[ExplanationChecks, ExplanationChecks]:
    """The checks of the looking and the elsewhere detector on 4 images (4 objects): ~4 s each."""
    images, targets = synthetic_images(4)
    return explanation_checks(looking(), images, targets, **OPTIONS), explanation_checks(
        elsewhere(), images, targets, **OPTIONS
    )


OPTIONS = {"masks_per_image": 300, "cells": 4, "layer": "backbone", "steps": 8, "baseline": "zero", "batch_size": 100}


def test_a_detector_reading_the_object_localizes_one_reading_elsewhere_does_not(checked) -> None:
    """Chance is the mask's area: 8 x 16 / 32^2 = 0.125 and 8 x 20 / 32^2 = 0.156.

    Reading the object: box Grad-CAM's channel weights are (alpha_0 > 0, alpha_1 = 0), so its map is channel 0's
    activation, non-zero on the object's cells only; bilinear upsampling (x4) spreads each edge cell 2 px outside
    the box, so the share is below 1 (0.82 and 0.83, measured). D-RISE's centered map covaries with the score on
    the object and within one cell around it. Reading elsewhere: box Grad-CAM's map is channel 1's activation, non-zero
    only on the patches, at least one cell from the objects: share exactly 0; D-RISE's energy sits on the patches.
    """
    on, off = checked
    assert len(on.objects) == 4 and on.unmatched == 0
    torch.testing.assert_close(on.methods["box_grad_cam"].chance, torch.tensor([0.125, 0.15625] * 2))
    assert (on.methods["box_grad_cam"].share > 0.8).all()
    assert on.methods["box_grad_cam"].localizes and on.methods["drise"].localizes
    assert on.methods["drise"].share.mean() > 0.3  # > 2 x chance

    torch.testing.assert_close(off.methods["box_grad_cam"].share, torch.zeros(4))
    assert not off.methods["box_grad_cam"].localizes and not off.methods["drise"].localizes
    assert off.methods["box_grad_cam"].localization.below_zero and off.methods["drise"].localization.below_zero

    # Faithfulness: deleting the read pixels first kills the score faster than a random order, for both detectors
    # (the maps point at what the detector reads, whether or not that is the object).
    for checks in (on, off):
        for method in ("drise", "box_grad_cam"):
            assert checks.methods[method].deletion.below_zero, method
            assert checks.methods[method].insertion.above_zero, method

    # The markdown carries the numbers and the verdicts.
    text = checks_markdown(on)
    grad = on.methods["box_grad_cam"]
    loc = grad.localization
    row = (
        f"| box Grad-CAM | {grad.share.mean():.3f} | 0.141 | {loc.mean:+.3f} [{loc.low:+.3f}, {loc.high:+.3f}] | yes |"
    )
    assert row in text
    assert "box Grad-CAM localizes better than chance" in text
    assert "4 ground-truth objects" in text and "0 not found" in text
    assert "D-RISE localizes worse than chance" in checks_markdown(off)


def test_randomizing_the_head_moves_the_maps_off_the_object(checked) -> None:
    """The cascade's first step re-initializes the head: with seed 0, its weights are drawn as (-0.005, 0.379)
    (PyTorch's U(-1/sqrt(2), 1/sqrt(2))): the randomized detector reads the patches, not the object. The looking
    detector's maps move from the object to the patches (rank correlation < 0: pass); the elsewhere detector read
    the patches already, so its maps stay (correlation ~1: fail, rightly: this redraw did not change what it reads).
    D-RISE's cascade stops after the heads step; box Grad-CAM's goes on to the backbone."""
    on, off = checked
    for method in ("drise", "box_grad_cam"):
        result = on.methods[method].randomization
        assert result is not None and result.layers[0] == "heads" and result.classifier_steps == 1
        assert on.methods[method].verdict.verdict == "pass" and on.methods[method].verdict.mean < 0
        assert off.methods[method].verdict.verdict == "fail" and off.methods[method].verdict.mean > 0.9
    assert on.methods["drise"].randomization.layers == ("heads",)
    assert on.methods["box_grad_cam"].randomization.layers == ("heads", "backbone")
    # D-RISE's seed-to-seed noise at 300 masks on the first object: shares 0.39 vs 0.36 (measured).
    assert on.drise_noise is not None and on.drise_noise.share_spread < 0.1 and on.drise_noise.spearman > 0.8
    assert "| D-RISE | heads | -0." in checks_markdown(on) and "| pass |" in checks_markdown(on)


def test_objects_without_a_detection_are_counted_not_explained() -> None:
    images, targets = synthetic_images(1)
    shifted = {**targets[0], "boxes": torch.tensor([[0.0, 24.0, 8.0, 32.0]])}  # IoU 0 with both detections
    detector = looking().train()
    weights = {k: v.clone() for k, v in detector.state_dict().items()}
    checks = explanation_checks(detector, images * 2, [targets[0], shifted], methods=("box_grad_cam",), **OPTIONS)
    assert MATCH_IOU == 0.5 and len(checks.objects) == 1 and checks.unmatched == 1
    # The caller's detector is left as found: training mode, weights (the cascade re-initializes a copy), no grads.
    assert detector.training and all(torch.equal(v, weights[k]) for k, v in detector.state_dict().items())
    assert all(p.grad is None for p in detector.parameters())
    assert checks.drise_noise is None and set(checks.methods) == {"box_grad_cam"}


def test_bad_arguments_say_what_is_wrong() -> None:
    images, targets = synthetic_images(1)
    with pytest.raises(BadArgument, match="methods must be"):
        explanation_checks(looking(), images, targets, methods=("lime",))
    with pytest.raises(BadArgument, match="no `masks`"):
        explanation_checks(looking(), images, [{"boxes": targets[0]["boxes"], "labels": targets[0]["labels"]}])
    far = {**targets[0], "boxes": torch.tensor([[0.0, 24.0, 8.0, 32.0]])}
    with pytest.raises(BadArgument, match="finds none of the 1"):
        explanation_checks(looking(), images, [far], **OPTIONS)


def test_faster_rcnn_lite0_cascade_starts_with_its_heads() -> None:
    from cnn_explorer.detection.models import FasterRCNNLite0

    net = FasterRCNNLite0(pretrained=False, min_size=64, max_size=96)
    steps = randomization_steps(net)
    assert steps == [
        ("heads", ("roi_heads", "rpn")),
        ("backbone.fpn", ("backbone.fpn",)),
        ("backbone.body.blocks.6", ("backbone.body.blocks.6",)),
        ("backbone.body.blocks.5", ("backbone.body.blocks.5",)),
    ]
    assert [name for name, _ in randomization_steps(net, backbone_stages=0)] == ["heads", "backbone.fpn"]


def test_figure_draws_each_object_with_each_methods_map(checked, tmp_path) -> None:
    from cnn_explorer.render.detection_maps import checks_figure
    from cnn_explorer.render.figures import save_png

    on, _ = checked
    fig = checks_figure(on, max_rows=3)
    assert len(fig.axes) == 3 * 3  # 3 objects x (image, D-RISE, box Grad-CAM)
    titles = [ax.get_title() for ax in fig.axes]
    share = on.methods["box_grad_cam"].share[0]
    assert titles[2] == f"box Grad-CAM: share {share:.2f}\n(chance 0.12)"
    save_png(fig, tmp_path / "maps.png")
    assert (tmp_path / "maps.png").stat().st_size > 0


def test_figure_draws_two_objects_of_one_image_each_with_its_own_numbers(checked) -> None:
    # Penn-Fudan has several pedestrians per photo: rows must not be found by comparing objects (their tensors).
    from cnn_explorer.render.detection_maps import checks_figure

    on, _ = checked
    first, second = on.objects[:2]
    one_image = dataclasses.replace(on, objects=[first, dataclasses.replace(second, image_index=first.image_index)])
    titles = [ax.get_title() for ax in checks_figure(one_image, max_rows=2).axes]
    drise = on.methods["drise"]
    assert titles[1] == f"D-RISE: share {drise.share[0]:.2f}\n(chance {drise.chance[0]:.2f})"
    assert titles[4] == f"D-RISE: share {drise.share[1]:.2f}\n(chance {drise.chance[1]:.2f})"


@pytest.mark.slow  # 60-180 s on two loaded cores: ~20 Faster R-CNN passes (curves, masks, cascade)
def test_checks_run_on_an_untrained_faster_rcnn_lite0_at_its_default_layer() -> None:
    """The real detector end to end on a tiny image: the object is its own top detection (so it is found), both
    methods run at the defaults' layer, and the cascade starts with the heads."""
    from cnn_explorer.detection.models import FasterRCNNLite0

    torch.manual_seed(0)
    net = FasterRCNNLite0(pretrained=False, min_size=64, max_size=96).eval()
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (detections,) = net([image])
    box = detections["boxes"][0]
    x1, y1, x2, y2 = box.round().int().tolist()
    mask = torch.zeros(1, 64, 80, dtype=torch.uint8)
    mask[0, y1:y2, x1:x2] = 1
    target = {"boxes": box[None], "labels": detections["labels"][:1], "masks": mask}
    checks = explanation_checks(
        net, [image], [target], masks_per_image=4, cells=4, steps=2, backbone_stages=1, batch_size=4
    )
    assert len(checks.objects) == 1
    assert checks.settings["randomization_steps"] == ["heads", "backbone.fpn", "backbone.body.blocks.6"]
    assert checks.methods["box_grad_cam"].randomization.layers == ("heads", "backbone.fpn", "backbone.body.blocks.6")
    assert checks.methods["drise"].randomization.layers == ("heads",)
    assert checks.methods["box_grad_cam"].maps[0].shape == (64, 80)
    assert "box Grad-CAM" in checks_markdown(checks)
