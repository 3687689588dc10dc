"""Grad-CAM (Selvaraju et al. 2017) for one detection: the backbone's channels weighted by the box score's gradient.

The classification half's Grad-CAM (:mod:`cnn_explorer.interpret.attribution.cam`) differentiates a class logit of a
batch; a detector returns a variable list of boxes per image, so here the differentiated number is the target's
box score (:func:`~cnn_explorer.interpret.detection.matching.box_score`), one image at a time, as
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` does for torchvision's detectors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.detection.matching import box_score, check_target, matched_detection
from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state


def box_grad_cam(
    detector: nn.Module, image: Tensor, box: Tensor, label: int, *, layer: str, transform: str = "transform"
) -> Tensor:
    """Grad-CAM of the target's box score at a backbone layer, upsampled to the image.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
    eqs. 1-2, with the class score ``y`` replaced by the box score ``y = score_j * IoU(box, box_j)`` of the detection
    ``j`` of the target label that overlaps the target box most (:func:`~cnn_explorer.interpret.detection.matching.
    box_score`, which says why a product and not pytorch-grad-cam's ``score + IoU``): ``alpha_k = mean_ij dy/dA_kij``,
    ``L = ReLU(sum_k alpha_k A_k)``, bilinear upsampling. The gradient flows through both factors: the class score
    (softmax of the box head) and the IoU (the box regression).

    The detector runs once, in eval mode, with gradients enabled (also under ``torch.no_grad()`` or
    ``torch.inference_mode()``), on a copy of the image; a forward hook keeps the layer's output ``A`` and
    ``torch.autograd.grad`` takes ``dy/dA`` (no full backward hooks, no parameter's ``.grad`` touched); modes,
    flags and hooks are left as found.

    torchvision's detectors resize the image and pad the batch to a multiple of 32 inside their ``transform``
    submodule, so the backbone's feature map covers the padded, resized canvas. When the detector has a submodule
    named ``transform`` whose output is torchvision's ``(ImageList, targets)``, the map is upsampled to that canvas,
    cropped to the resized image and resized to the input; otherwise the feature map is taken to cover the image.

    Args:
        detector: an ``nn.Module`` :class:`~cnn_explorer.interpret.detection.matching.Detector`.
        image: ``[C, H, W]`` float, as the detector takes it.
        box: ``[4]`` target box, xyxy pixels.
        label: target class index.
        layer: dotted name of the submodule whose output ``[1, K, h, w]`` is explained, e.g.
            ``"backbone.body.layer4"`` for torchvision's ResNet-FPN Faster R-CNN.
        transform: dotted name of the submodule that resizes and pads (torchvision: ``"transform"``).

    Returns:
        float ``[H, W]``, >= 0, on the image's device.

    Raises:
        BadArgument: on an image that is not ``[C, H, W]`` float, a malformed box or label, an unknown layer, a layer
            that does not output one 4-D tensor used unmodified by the detections, or a detector that finds no
            detection of ``label`` overlapping ``box`` (nothing to explain).
    """
    if image.ndim != 3 or not image.is_floating_point():
        raise BadArgument(f"image must be float [C, H, W], got {image.dtype} {tuple(image.shape)}")
    target_box = check_target(box, label)
    modules = dict(detector.named_modules())
    if layer not in modules:
        raise BadArgument(f"unknown layer {layer!r}; layers of {type(detector).__name__}: {[n for n in modules if n]}")
    captured: list[tuple[Tensor, int]] = []
    canvases: list[tuple[tuple[int, int], tuple[int, int]]] = []  # ((padded h, w), (resized h, w))

    def keep(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if name == transform:
            image_list = output[0] if isinstance(output, tuple) and output else None
            if hasattr(image_list, "tensors") and hasattr(image_list, "image_sizes"):
                canvases.append((tuple(image_list.tensors.shape[-2:]), tuple(image_list.image_sizes[0])))
            return
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise BadArgument(f"layer {name!r} must output a [1, K, h, w] tensor, got {shape}")
        # The version counter now, to notice an in-place op on A later in the forward pass.
        captured.append((output, output._version))

    hooked = [layer, transform] if transform in modules and transform != layer else [layer]
    with (
        preserved_model_state(detector),
        torch.inference_mode(False),
        torch.enable_grad(),
        forward_hooks(detector, hooked, keep),
    ):
        detector.eval()
        pixels = image.detach().to(model_device(detector)).clone()  # [C, H, W]
        (detections,) = detector([pixels])
        if len(captured) != 1:
            raise BadArgument(f"layer {layer!r} ran {len(captured)} times in one forward pass; Grad-CAM needs once")
        ((activation, version),) = captured
        if activation._version != version:
            raise BadArgument(f"layer {layer!r}'s output is modified in place later in the forward pass")
        if matched_detection(detections, target_box, label) is None:
            raise BadArgument(
                f"the detector finds no detection of label {label} overlapping box {box.tolist()}: nothing to explain "
                "(pick a box and label from its detections on this image)"
            )
        score = box_score(detections, target_box, label)
        (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradient is None:
            raise BadArgument(f"the box score does not depend on layer {layer!r}'s output")
    weights = gradient.detach().mean(dim=(2, 3), keepdim=True)  # [1, K, 1, 1]
    cam = (weights * activation.detach()).sum(dim=1, keepdim=True).clamp_min(0)  # [1, 1, h, w]
    if canvases:
        (padded, resized) = canvases[0]
        cam = F.interpolate(cam, size=padded, mode="bilinear", align_corners=False)[..., : resized[0], : resized[1]]
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)  # [1, 1, H, W]
    return cam[0, 0].to(image.device)
