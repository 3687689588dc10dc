"""Are a detector's explanations right? Localization against ground-truth masks, faithfulness, randomization.

The classification half checks its maps by faithfulness (deletion/insertion, :mod:`~cnn_explorer.interpret.
attribution.faithfulness`) and by the randomization cascade (:mod:`~cnn_explorer.interpret.attribution.sanity`).
Here the same checks explain one detection at a time (the detection matched to each ground-truth object of a few
images), and a third one is possible because the data has instance masks: the share of each map's positive energy
inside the object's mask (Wang et al. 2020's energy-based pointing game) against the share a map spread evenly over
the image gets (the mask's area over the image's). Every comparison is paired over the explained objects, with a
bootstrap interval, and a verdict is given only where the interval excludes the chance level.

Cost, the reason the defaults are small and only a few objects are explained: every map, curve point and D-RISE
mask is a detector pass. Measured on the 2-core CPU shared with other jobs (load ~16), FasterRCNNLite0 (ImageNet
backbone, untrained heads: 100 detections), one 320 x 430 image: 4.8 s for one pass, 14 s for a batch of 8
(~1.75 s per image); one object checked with box Grad-CAM alone (8 curve steps, 4-step cascade) took 201 s, with
D-RISE alone at 16 masks (plus 16 for the heads step and 16 for the noise check) 323 s. So per object, at 100 masks
and 16 steps, both methods: ~100 passes for D-RISE, ~100 for its heads step, ~100 for the three maps' curves, ~10 for
box Grad-CAM's cascade: ~10 minutes. Hence D-RISE's cascade stops after the heads step by default
(``drise_randomization_steps``); box Grad-CAM (one forward and backward per map) runs the whole cascade.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torchvision.ops import box_iou

from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.attribution.faithfulness import PairedDifference, paired_difference
from cnn_explorer.interpret.attribution.sanity import (
    DEFAULT_THRESHOLD,
    RandomizationResult,
    RandomizationVerdict,
    randomization_verdict,
    reinitialize,
    spearman_rank_correlation,
    structural_similarity,
    unit_range,
)
from cnn_explorer.interpret.detection.box_cam import box_grad_cam
from cnn_explorer.interpret.detection.drise import drise
from cnn_explorer.interpret.detection.localization import (
    box_deletion_insertion,
    box_random_order_curves,
    chance_share,
    energy_share,
)
from cnn_explorer.interpret.detection.matching import matched_detection
from cnn_explorer.interpret.model_state import model_device, preserved_model_state

METHODS = ("drise", "box_grad_cam")
"""The explanation methods :func:`explanation_checks` knows: D-RISE (black-box) and box Grad-CAM (gradient)."""

METHOD_TITLES = {"drise": "D-RISE", "box_grad_cam": "box Grad-CAM"}

DEFAULT_LAYER = "backbone.body.blocks.4"
"""Box Grad-CAM's layer for :class:`~cnn_explorer.detection.models.FasterRCNNLite0`: EfficientNet-Lite0's stage 3
(112 channels, stride 16), the middle level of the pyramid: a 320 px image gives a 20 x 27 map, fine enough for a
pedestrian (stride 32, the top stage, leaves a narrow pedestrian one or two cells wide)."""

MATCH_IOU = 0.5
"""IoU at which a detection counts as finding a ground-truth object (the PASCAL VOC / mAP@.5 criterion)."""


@dataclass(frozen=True)
class ExplainedObject:
    """One ground-truth object and the detection that found it, the target of both explanations.

    Attributes:
        image_index: which of the images.
        gt_box: ``[4]`` the ground-truth box, xyxy pixels.
        box: ``[4]`` the detection's box: the explained target.
        label: the class index.
        score: the detection's score.
        mask: ``[H, W]`` bool, the object's ground-truth pixels.
    """

    image_index: int
    gt_box: Tensor
    box: Tensor
    label: int
    score: float
    mask: Tensor


@dataclass(frozen=True)
class MethodChecks:
    """One method's checks over the ``P`` explained objects.

    Attributes:
        method: a key of :data:`METHODS`.
        maps: ``P`` maps ``[H_i, W_i]`` (D-RISE: its centered map), the trained detector's.
        share: ``[P]`` energy share inside the object's mask; 0 for a map without positive energy (nothing placed
            on the object), counted in ``empty_maps``.
        chance: ``[P]`` the mask's area over the image's.
        localization: paired bootstrap of ``share - chance`` over objects.
        deletion_auc: ``[P]`` area under the deletion curve of the box score (lower is better).
        insertion_auc: ``[P]`` same for insertion (higher is better).
        deletion: paired bootstrap of ``deletion_auc`` minus the random order's (good: below 0).
        insertion: paired bootstrap of ``insertion_auc`` minus the random order's (good: above 0).
        randomization: the cascade's correlations (its ``layers`` are the step names), or ``None`` if not run.
        verdict: :func:`~cnn_explorer.interpret.attribution.sanity.randomization_verdict` at the heads step.
        empty_maps: how many maps had no positive value.
        seconds: wall time of the maps, curves and cascade of this method.
    """

    method: str
    maps: tuple[Tensor, ...]
    share: Tensor
    chance: Tensor
    localization: PairedDifference
    deletion_auc: Tensor
    insertion_auc: Tensor
    deletion: PairedDifference
    insertion: PairedDifference
    randomization: RandomizationResult | None
    verdict: RandomizationVerdict | None
    empty_maps: int
    seconds: float

    @property
    def localizes(self) -> bool:
        """Whether the energy share is reliably above chance (the whole interval of share - chance above 0)."""
        return self.localization.above_zero


@dataclass(frozen=True)
class DriseNoise:
    """D-RISE's Monte-Carlo noise at the chosen mask count, on one object: two seeds, same everything else.

    Attributes:
        share: the energy shares of the two maps.
        spearman: rank correlation of the two maps (1: the seed does not matter).
    """

    share: tuple[float, float]
    spearman: float

    @property
    def share_spread(self) -> float:
        """``|share(seed) - share(seed + 1)|``: how far one object's energy share moves with the masks drawn."""
        return abs(self.share[0] - self.share[1])


@dataclass(frozen=True)
class ExplanationChecks:
    """What :func:`explanation_checks` measured.

    Attributes:
        images: the images, ``[3, H_i, W_i]``.
        objects: the explained objects (ground truth found by a detection), in image order.
        unmatched: ground-truth objects no detection found (IoU >= :data:`MATCH_IOU`): nothing to explain.
        methods: ``{method: MethodChecks}``.
        random_deletion_auc: ``[P]`` the random pixel order's deletion AUC per object.
        random_insertion_auc: ``[P]`` same for insertion.
        drise_noise: D-RISE's seed-to-seed spread on the first object, or ``None`` (D-RISE not run or no object).
        settings: the options used (masks, cells, layer, steps, seed, randomization steps).
    """

    images: tuple[Tensor, ...]
    objects: tuple[ExplainedObject, ...]
    unmatched: int
    methods: dict[str, MethodChecks]
    random_deletion_auc: Tensor
    random_insertion_auc: Tensor
    drise_noise: DriseNoise | None
    settings: dict[str, Any] = field(default_factory=dict)


def randomization_steps(detector: nn.Module, *, backbone_stages: int = 2) -> list[tuple[str, tuple[str, ...]]]:
    """The detector's randomization cascade, top first: ``(step name, dotted names of the modules it re-initializes)``.

    Adebayo et al. (2018) re-initialize a classifier from the logits down. A detector's "classifier steps" are its
    heads: every top-level child other than ``backbone`` and ``transform`` that has weights (Faster R-CNN:
    ``roi_heads`` = box head + box predictor, and ``rpn``'s head; RetinaNet, FCOS, SSD: ``head``), re-initialized
    together in the first step, named ``"heads"``. Then the backbone from the top: its ``fpn`` if it has one, then
    the last ``backbone_stages`` stages of its body (the children of ``backbone.body``, or of ``backbone`` without a
    body, in reverse registration order, a ``Sequential``/``ModuleList`` child such as timm's ``blocks`` or
    torchvision's ``layer4`` split into its items). One step per stage, not per layer as the classification half
    does: each step recomputes every map, and a detector's maps cost seconds each.

    Args:
        detector: a torchvision-style detector (``backbone`` plus heads).
        backbone_stages: how many backbone stages below the heads (and the FPN) to add, >= 0.

    Returns:
        the steps, ``"heads"`` first.

    Raises:
        BadArgument: if the detector has no ``backbone`` or no head with weights.
    """
    if backbone_stages < 0:
        raise BadArgument(f"backbone_stages must be >= 0, got {backbone_stages}")
    children = dict(detector.named_children())
    if "backbone" not in children:
        raise BadArgument(f"{type(detector).__name__} has no `backbone` submodule: not a torchvision-style detector")
    # Reverse registration order: torchvision registers rpn before roi_heads, which run in that order.
    heads = tuple(
        name
        for name, child in reversed(children.items())
        if name not in ("backbone", "transform") and _has_weights(child)
    )
    if not heads:
        raise BadArgument(f"{type(detector).__name__} has no head with weights besides its backbone")
    steps: list[tuple[str, tuple[str, ...]]] = [("heads", heads)]
    backbone = children["backbone"]
    if hasattr(backbone, "fpn") and _has_weights(backbone.fpn):
        steps.append(("backbone.fpn", ("backbone.fpn",)))
    body, prefix = (backbone.body, "backbone.body") if hasattr(backbone, "body") else (backbone, "backbone")
    # A body without children (a single layer) is one stage.
    stages: list[str] = [] if any(True for _ in body.children()) or not _has_weights(body) else [prefix]
    for name, child in body.named_children():
        if prefix == "backbone" and name == "fpn":
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            stages += [
                f"{prefix}.{name}.{item}" for item, grandchild in child.named_children() if _has_weights(grandchild)
            ]
        elif _has_weights(child):
            stages.append(f"{prefix}.{name}")
    steps += [(stage, (stage,)) for stage in stages[::-1][:backbone_stages]]
    return steps


def explanation_checks(
    detector: nn.Module,
    images: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    methods: Sequence[str] = METHODS,
    *,
    masks_per_image: int = 100,
    cells: int = 8,
    layer: str = DEFAULT_LAYER,
    steps: int = 16,
    baseline: str = "blur",
    backbone_stages: int = 2,
    drise_randomization_steps: int = 1,
    max_objects: int | None = None,
    batch_size: int = 8,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
) -> ExplanationChecks:
    """Explain the detection of each ground-truth object with each method; check the maps three ways.

    For every ground-truth object of ``images``, the detection explained is the highest-scoring one of its label
    overlapping it at IoU >= :data:`MATCH_IOU` (COCO's match, without exclusivity); objects without one are counted
    in :attr:`ExplanationChecks.unmatched`. Each method maps that detection (its box and label):
    :func:`~cnn_explorer.interpret.detection.drise.drise` (``masks_per_image`` masks of ``cells x cells``; its
    centered map, see :class:`~cnn_explorer.interpret.detection.drise.DRiseMap`) and
    :func:`~cnn_explorer.interpret.detection.box_cam.box_grad_cam` at ``layer``. Then, per method:

    - localization: :func:`~cnn_explorer.interpret.detection.localization.energy_share` inside the object's mask
      vs :func:`~cnn_explorer.interpret.detection.localization.chance_share`, paired over objects
      (:func:`~cnn_explorer.interpret.attribution.faithfulness.paired_difference`): the method "localizes better
      than chance" only where the 95% interval of ``share - chance`` lies above 0;
    - faithfulness: deletion and insertion AUC of the box score (Petsiuk et al. 2018) in the map's pixel order vs
      a random order, paired likewise;
    - randomization (Adebayo et al. 2018): the maps of a copy of the detector after each step of
      :func:`randomization_steps` (heads first), the Spearman correlation of the absolute maps with the trained
      ones, judged at the heads step by :func:`~cnn_explorer.interpret.attribution.sanity.randomization_verdict`.
      D-RISE is black-box but measures the model, so it must change too; its cascade stops after
      ``drise_randomization_steps`` steps (each costs ``masks_per_image`` passes per object). A randomized
      detector that no longer finds the object gives an all-zero map (it has nothing there to explain).

    D-RISE's Monte-Carlo noise is measured on the first object: its map again with ``seed + 1``.

    The deletion/insertion blur baseline has a sigma of 1% of the image's shorter side, at least 2 px (the note in
    :func:`~cnn_explorer.interpret.detection.localization.box_deletion_insertion`).

    Args:
        detector: a torchvision-style detector in [0, 1] image space; left in the state it was found in.
        images: ``[3, H_i, W_i]`` float images.
        targets: one dict per image with ``boxes [K, 4]`` xyxy, ``labels [K]`` and ``masks [K, H_i, W_i]``.
        methods: keys of :data:`METHODS`.
        masks_per_image: D-RISE masks per object, >= 1.
        cells: D-RISE's grid cells per side.
        layer: box Grad-CAM's layer (see :data:`DEFAULT_LAYER`).
        steps: deletion/insertion steps per curve.
        baseline: what deleted pixels become (``"blur"``, ``"zero"``, ``"mean"``: see
            :func:`~cnn_explorer.interpret.attribution.faithfulness.baseline_images`).
        backbone_stages: backbone stages of the cascade below the heads (:func:`randomization_steps`).
        drise_randomization_steps: how many cascade steps D-RISE runs, >= 0 (0: none).
        max_objects: explain at most this many objects (the first ones, image order); ``None``: all.
        batch_size: images per detector call for D-RISE and the curves, >= 2.
        threshold: the randomization pass line (a rank correlation).
        seed: seeds D-RISE's masks, the random order, the re-initialization and the bootstraps.

    Returns:
        :class:`ExplanationChecks`.

    Raises:
        BadArgument: on an unknown method, images and targets of different lengths, a target without masks or
            with masks of another size than its image, or when no object is found by the detector.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BadArgument(f"methods must be a non-empty subset of {list(METHODS)}, got {list(methods)}")
    if len(images) != len(targets):
        raise BadArgument(f"got {len(images)} images but {len(targets)} targets")
    if masks_per_image < 1 or drise_randomization_steps < 0:
        raise BadArgument(
            f"masks_per_image must be >= 1 and drise_randomization_steps >= 0, got {masks_per_image} and "
            f"{drise_randomization_steps}"
        )
    images = tuple(image.detach() for image in images)
    objects, unmatched = _explained_objects(detector, images, targets, max_objects)
    if not objects:
        raise BadArgument(
            f"the detector finds none of the {unmatched} ground-truth objects (IoU >= {MATCH_IOU}): nothing to explain"
        )
    options = {"masks": masks_per_image, "cells": cells, "layer": layer, "batch_size": batch_size, "seed": seed}
    curve_options = {"steps": steps, "baseline": baseline, "batch_size": max(batch_size, 2)}
    random_curves = [
        box_random_order_curves(
            detector,
            images[o.image_index],
            o.box,
            o.label,
            seed=seed,
            blur_sigma=_blur(images[o.image_index]),
            **curve_options,
        )
        for o in objects
    ]
    random_deletion = torch.cat([c.deletion_auc for c in random_curves]).cpu()  # [P]
    random_insertion = torch.cat([c.insertion_auc for c in random_curves]).cpu()
    cascade = randomization_steps(detector, backbone_stages=backbone_stages)
    results = {}
    for method in methods:
        start = time.perf_counter()
        maps = tuple(_explain(method, detector, images[o.image_index], o, **options) for o in objects)
        masks = [o.mask for o in objects]
        share = torch.stack([energy_share(m, k) for m, k in zip(maps, masks, strict=True)]).cpu()
        empty = int(share.isnan().sum())
        share = share.nan_to_num(0.0)  # no positive energy: nothing placed on the object
        chance = torch.stack([chance_share(k) for k in masks]).cpu()
        curves = [
            box_deletion_insertion(
                detector,
                images[o.image_index],
                o.box,
                o.label,
                m,
                blur_sigma=_blur(images[o.image_index]),
                **curve_options,
            )
            for o, m in zip(objects, maps, strict=True)
        ]
        deletion = torch.cat([c.deletion_auc for c in curves]).cpu()
        insertion = torch.cat([c.insertion_auc for c in curves]).cpu()
        run = cascade if method == "box_grad_cam" else cascade[:drise_randomization_steps]
        randomization = _cascade(detector, images, objects, maps, method, run, options, seed) if run else None
        results[method] = MethodChecks(
            method=method,
            maps=tuple(m.cpu() for m in maps),
            share=share,
            chance=chance,
            localization=paired_difference(share, chance, seed=seed),
            deletion_auc=deletion,
            insertion_auc=insertion,
            deletion=paired_difference(deletion, random_deletion, seed=seed),
            insertion=paired_difference(insertion, random_insertion, seed=seed),
            randomization=randomization,
            verdict=None
            if randomization is None
            else randomization_verdict(randomization, threshold=threshold, seed=seed),
            empty_maps=empty,
            seconds=time.perf_counter() - start,
        )
    noise = None
    if "drise" in methods:
        first = objects[0]
        again = _explain("drise", detector, images[first.image_index], first, **{**options, "seed": seed + 1})
        trained = results["drise"].maps[0]
        noise = DriseNoise(
            share=(float(results["drise"].share[0]), float(energy_share(again, first.mask).nan_to_num(0.0))),
            spearman=float(spearman_rank_correlation(trained[None], again.cpu()[None])[0]),
        )
    settings = {
        "masks_per_image": masks_per_image,
        "cells": cells,
        "layer": layer,
        "steps": steps,
        "baseline": baseline,
        "seed": seed,
        "randomization_steps": [name for name, _ in cascade],
        "drise_randomization_steps": min(drise_randomization_steps, len(cascade)),
        "threshold": threshold,
    }
    return ExplanationChecks(
        images=images,
        objects=tuple(objects),
        unmatched=unmatched,
        methods=results,
        random_deletion_auc=random_deletion,
        random_insertion_auc=random_insertion,
        drise_noise=noise,
        settings=settings,
    )


def checks_markdown(checks: ExplanationChecks) -> str:
    """The checks as a Markdown table per measure and sentences computed from the numbers."""
    settings = checks.settings
    count = len(checks.objects)
    lines = [
        f"Explained: {count} ground-truth objects found by a detection (IoU >= {MATCH_IOU}); "
        f"{checks.unmatched} not found (nothing to explain). D-RISE: {settings['masks_per_image']} masks of "
        f"{settings['cells']} x {settings['cells']} cells per object; box Grad-CAM at `{settings['layer']}`. "
        "Intervals are 95% paired bootstrap intervals over the objects.",
        "",
        "| method | energy share in mask | chance (mask area) | share - chance [95% CI] | better than chance? "
        "| deletion AUC (random) | deletion - random [95% CI] | insertion AUC (random) | insertion - random [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    random_del = float(checks.random_deletion_auc.mean())
    random_ins = float(checks.random_insertion_auc.mean())
    for method, result in checks.methods.items():
        loc, dele, ins = result.localization, result.deletion, result.insertion
        lines.append(
            f"| {METHOD_TITLES[method]} | {result.share.mean():.3f} | {result.chance.mean():.3f} | "
            f"{loc.mean:+.3f} [{loc.low:+.3f}, {loc.high:+.3f}] | {'yes' if result.localizes else 'no'} | "
            f"{result.deletion_auc.mean():.3f} ({random_del:.3f}) | {_interval(dele)} | "
            f"{result.insertion_auc.mean():.3f} ({random_ins:.3f}) | {_interval(ins)} |"
        )
    lines += ["", "| method | steps run | rank correlation at the heads step [95% CI] | verdict |", "|---|---|---|---|"]
    for method, result in checks.methods.items():
        if result.randomization is None or result.verdict is None:
            lines.append(f"| {METHOD_TITLES[method]} | none | - | not run |")
            continue
        verdict = result.verdict
        lines.append(
            f"| {METHOD_TITLES[method]} | {', '.join(result.randomization.layers)} | "
            f"{verdict.mean:.3f} [{verdict.low:.3f}, {verdict.high:.3f}] | {verdict.verdict} |"
        )
    lines.append("")
    for method, result in checks.methods.items():
        title = METHOD_TITLES[method]
        loc = result.localization
        where = (
            f"puts {result.share.mean():.0%} of its positive energy inside the object's mask, where chance "
            f"(the mask's share of the image) is {result.chance.mean():.0%}: a difference of "
            # One decimal: a bound just above 0 must not read "+0" beside a "better than chance".
            f"{100 * loc.mean:+.1f} points, interval [{100 * loc.low:+.1f}, {100 * loc.high:+.1f}]"
        )
        if result.localizes:
            sentence = f"{title} localizes better than chance: it {where}."
        elif loc.below_zero:
            sentence = f"{title} localizes worse than chance: it {where}, below 0."
        else:
            sentence = f"{title} does not localize reliably better than chance: it {where}, which includes 0."
        faithful = []
        if result.deletion.below_zero:
            faithful.append("deleting its top pixels lowers the box score faster than a random order")
        if result.insertion.above_zero:
            faithful.append("inserting them raises it faster")
        sentence += (
            " Faithfulness: " + " and ".join(faithful) + "."
            if faithful
            else " Faithfulness: neither deletion nor insertion differs reliably from a random pixel order."
        )
        if result.verdict is not None:
            verdict = result.verdict
            meaning = {
                "pass": "its maps change when the heads are re-initialized (they depend on what the detector learned)",
                "fail": "its maps survive the re-initialization of the heads (they do not explain what was learned)",
                "unclear": "the interval straddles the pass line: more objects would decide",
            }[verdict.verdict]
            sentence += (
                f" Randomization: {verdict.verdict} (rank correlation {verdict.mean:.2f} against a pass line of "
                f"{verdict.threshold}): {meaning}."
            )
        if result.empty_maps:
            sentence += f" {result.empty_maps} of its maps had no positive value (share counted as 0)."
        lines.append(sentence)
        lines.append("")
    if checks.drise_noise is not None:
        noise = checks.drise_noise
        lines.append(
            f"D-RISE noise at {settings['masks_per_image']} masks, measured on the first object with a second seed: "
            f"energy share {noise.share[0]:.3f} vs {noise.share[1]:.3f} (spread {noise.share_spread:.3f}), rank "
            f"correlation of the two maps {noise.spearman:.2f}. The noise falls as 1 / sqrt(masks)."
        )
        lines.append("")
    drise = checks.methods.get("drise")
    if drise is not None and drise.randomization is not None:
        lines.append(
            f"D-RISE's cascade stops after {len(drise.randomization.layers)} step(s) for CPU cost "
            f"({settings['masks_per_image']} detector passes per object per step); box Grad-CAM runs all "
            f"{len(settings['randomization_steps'])}."
        )
    timings = ", ".join(
        f"{METHOD_TITLES[m]} {r.seconds:.0f} s ({r.seconds / count:.0f} s per object)"
        for m, r in checks.methods.items()
    )
    lines.append(
        f"Wall time of the maps, curves and cascade for the {count} objects: {timings}; the random order's curves "
        "come on top."
    )
    return "\n".join(lines).rstrip() + "\n"


def _interval(difference: PairedDifference) -> str:
    return f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]"


def _has_weights(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Linear, _ConvNd)) for m in module.modules())


def _blur(image: Tensor) -> float:
    """1% of the image's shorter side, at least 2 px (see box_deletion_insertion's note on blur_sigma)."""
    return max(2.0, 0.01 * min(image.shape[-2:]))


def _explained_objects(
    detector: nn.Module, images: tuple[Tensor, ...], targets: Sequence[dict[str, Tensor]], max_objects: int | None
) -> tuple[list[ExplainedObject], int]:
    """The highest-scoring same-label detection at IoU >= MATCH_IOU for each ground-truth object; the unmatched."""
    objects: list[ExplainedObject] = []
    unmatched = 0
    with preserved_model_state(detector), torch.no_grad():
        detector.eval()
        for index, (image, target) in enumerate(zip(images, targets, strict=True)):
            if image.ndim != 3 or not image.is_floating_point():
                raise BadArgument(f"image {index} must be float [C, H, W], got {image.dtype} {tuple(image.shape)}")
            if "masks" not in target:
                raise BadArgument(f"target {index} has no `masks`: localization needs each object's pixels")
            boxes, labels, masks = target["boxes"].float().cpu(), target["labels"].cpu(), target["masks"].cpu()
            if masks.shape != (len(boxes), *image.shape[-2:]):
                raise BadArgument(
                    f"target {index}'s masks must be [K, H, W] = {[len(boxes), *image.shape[-2:]]}, got "
                    f"{tuple(masks.shape)}"
                )
            if max_objects is not None and len(objects) >= max_objects:
                break
            (detections,) = detector([image.to(model_device(detector))])
            found = {k: v.detach().cpu() for k, v in detections.items()}
            iou = box_iou(boxes, found["boxes"].float()) if len(found["boxes"]) else torch.zeros(len(boxes), 0)
            for k in range(len(boxes)):
                if max_objects is not None and len(objects) >= max_objects:
                    break
                candidates = (iou[k] >= MATCH_IOU) & (found["labels"] == labels[k])
                if not candidates.any():
                    unmatched += 1
                    continue
                best = int(torch.where(candidates, found["scores"], -1.0).argmax())
                objects.append(
                    ExplainedObject(
                        image_index=index,
                        gt_box=boxes[k],
                        box=found["boxes"][best].float(),
                        label=int(labels[k]),
                        score=float(found["scores"][best]),
                        mask=masks[k].bool(),
                    )
                )
    return objects, unmatched


def _explain(
    method: str,
    detector: nn.Module,
    image: Tensor,
    target: ExplainedObject,
    *,
    masks: int,
    cells: int,
    layer: str,
    batch_size: int,
    seed: int,
) -> Tensor:
    """``[H, W]`` one method's map of one detection on CPU; all zeros if the detector no longer finds it."""
    if method == "drise":
        explained = drise(
            detector, image, target.box, target.label, masks=masks, cells=cells, batch_size=batch_size, seed=seed
        )
        return explained.centered.detach().float().cpu()
    if not _still_found(detector, image, target):
        return torch.zeros(image.shape[-2:])
    return box_grad_cam(detector, image, target.box, target.label, layer=layer).detach().float().cpu()


def _still_found(detector: nn.Module, image: Tensor, target: ExplainedObject) -> bool:
    """Whether a detection of the target's label overlaps its box (else box Grad-CAM has nothing to explain)."""
    with preserved_model_state(detector), torch.no_grad():
        detector.eval()
        (detections,) = detector([image.to(model_device(detector))])
    return matched_detection(detections, target.box, target.label) is not None


def _cascade(
    detector: nn.Module,
    images: tuple[Tensor, ...],
    objects: Sequence[ExplainedObject],
    trained: tuple[Tensor, ...],
    method: str,
    steps: Sequence[tuple[str, tuple[str, ...]]],
    options: dict[str, Any],
    seed: int,
) -> RandomizationResult:
    """Re-initialize a copy of the detector step by step; per step and object, the maps' Spearman and SSIM."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode(False):
        network = copy.deepcopy(detector)
        modules = dict(network.named_modules())
        spearman, ssim = [], []
        for _, names in steps:
            for name in names:
                for module in modules[name].modules():
                    if isinstance(module, (nn.Linear, _ConvNd, _BatchNorm)):
                        reinitialize(module, generator)
            rho, similarity = [], []
            for target, before in zip(objects, trained, strict=True):
                after = _explain(method, network, images[target.image_index], target, **options)
                rho.append(spearman_rank_correlation(before.abs()[None], after.abs()[None])[0])
                similarity.append(
                    structural_similarity(unit_range(before.abs()[None]), unit_range(after.abs()[None]))[0]
                )
            spearman.append(torch.stack(rho))
            ssim.append(torch.stack(similarity))
    return RandomizationResult(
        layers=tuple(name for name, _ in steps),
        spearman=torch.stack(spearman),  # [S, P]
        ssim=torch.stack(ssim),
        classifier_steps=1,  # the heads step: a detector's classifier
    )


__all__ = [
    "DEFAULT_LAYER",
    "METHODS",
    "DriseNoise",
    "ExplainedObject",
    "ExplanationChecks",
    "MethodChecks",
    "checks_markdown",
    "explanation_checks",
    "randomization_steps",
]
