"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhyay et al. 2018), written here.

Not torchcam or pytorch-grad-cam: torchcam 0.5.0 never applies Grad-CAM++'s division by the alpha
denominator, and pytorch-grad-cam adds 1e-6 to that denominator, which turns a zero denominator
(possible when the activations' sum is negative) into a weight of ``g^2 / 1e-6`` instead of eq. 19's
undefined term. Both variants share one pass (:func:`_activation_and_gradient`) and differ only in how
they weight the channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.arguments import explaining
from cnn_explorer.interpret.layers import stage_shapes
from cnn_explorer.interpret.model_state import forward_hooks


def default_cam_layer(model: nn.Module, image_shape: Sequence[int]) -> str:
    """The layer CAMs explain by default: the last of :func:`cnn_explorer.interpret.layers.stages` whose maps are
    larger than 1x1 (the last stage when none is).

    Selvaraju et al. (2017), section 3: the last convolutional layer has both high-level semantics and
    spatial detail. A whole stage, not a conv inside it: a stage's output is used once and not modified in
    place later (a torchvision ResNet's ``layer4``, not its inner ReLU, which runs twice per block). A 1x1 map
    has no spatial detail left (a ResNet's ``layer4`` on 32 px images): its CAM is one value spread over the
    image, so the stage before it is taken.

    Args:
        model: the network.
        image_shape: ``(C, H, W)`` of its input; the stages are found by one forward pass at this size.

    Returns:
        a dotted submodule name, e.g. ``"features.conv3"`` for a ConvNet, ``"layer4"`` for a ResNet.

    Raises:
        ValueError: if the model has no ``nn.Conv2d`` or no stage qualifies; pass ``layer=`` explicitly then.
    """
    shapes = stage_shapes(model, image_shape)
    spatial = [name for name, (_, height, width) in shapes.items() if height * width > 1]
    return spatial[-1] if spatial else list(shapes)[-1]


def grad_cam(model: nn.Module, images: Tensor, targets: Tensor, *, layer: str | None = None) -> Tensor:
    """Grad-CAM: the layer's channels weighted by their spatially averaged gradient, ReLU, upsampled.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", section 3, eqs. 1-2: ``alpha_k = 1/(h w) sum_ij dy/dA_kij`` with ``y`` the target's
    logit (pre-softmax), ``L = ReLU(sum_k alpha_k A_k)``; then bilinear upsampling to the input size.
    For a net whose last conv feeds global average pooling and one linear layer this is Zhou et al.'s
    (2016) CAM divided by ``h w``, after the ReLU.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``.
        images: ``[N, C, H, W]`` float, normalized as the model expects; moved to the model's device.
        targets: ``[N]`` integer class indices whose logit is explained.
        layer: dotted name of the submodule whose output ``[N, K, h, w]`` is explained; default
            :func:`default_cam_layer`.

    Returns:
        float ``[N, H, W]``, >= 0, on the device of ``images``.

    Raises:
        ValueError: on malformed images/targets, a target outside the model's classes, an unknown layer,
            or a layer whose output is not a 4-D tensor used once, unmodified, by the logits.
    """
    activation, gradient = _activation_and_gradient(model, images, targets, layer)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # [N, K, 1, 1]
    return _upsampled_map(weights, activation, images)


def grad_cam_plus_plus(model: nn.Module, images: Tensor, targets: Tensor, *, layer: str | None = None) -> Tensor:
    """Grad-CAM++: channels weighted by positive gradients times eq. 19's pixel weights, ReLU, upsampled.

    Chattopadhyay et al. (2018), "Grad-CAM++: Improved Visual Explanations for Deep Convolutional
    Networks", section 3: channel weights ``w_k = sum_ij alpha_kij relu(dY/dA_kij)``, alpha from eq. 19.
    With ``Y = exp(S)`` (``S`` the target logit) and ``S`` piecewise linear in ``A`` (ReLU nets), the
    higher derivatives of ``Y`` are ``exp(S) g^2`` and ``exp(S) g^3`` with ``g = dS/dA``, and ``exp(S)``
    cancels from eq. 19::

        alpha_kij = g_kij^2 / (2 g_kij^2 + (sum_ab A_kab) g_kij^3)     # 0 where the denominator is 0
        w_k       = sum_ij alpha_kij relu(g_kij)
        L         = ReLU(sum_k w_k A_k), upsampled bilinearly

    The weights take ``relu(dY/dA) = exp(S) relu(g)``; the positive factor ``exp(S)`` per image is left
    out (it scales each map as a whole and overflows for logits above ~88). Where the denominator is 0,
    eq. 19 is undefined: alpha is set to 0 there, not computed with an epsilon. Where it is negative
    (activation sums below 0, e.g. a conv layer before its ReLU) alpha is negative, as eq. 19 says.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``.
        images: ``[N, C, H, W]`` float, normalized as the model expects; moved to the model's device.
        targets: ``[N]`` integer class indices whose logit is explained.
        layer: dotted name of the submodule whose output ``[N, K, h, w]`` is explained; default
            :func:`default_cam_layer`.

    Returns:
        float ``[N, H, W]``, >= 0, on the device of ``images``.

    Raises:
        ValueError: on malformed images/targets, a target outside the model's classes, an unknown layer,
            or a layer whose output is not a 4-D tensor used once, unmodified, by the logits.
    """
    activation, gradient = _activation_and_gradient(model, images, targets, layer)
    squared = gradient.pow(2)  # [N, K, h, w]
    activation_sum = activation.sum(dim=(2, 3), keepdim=True)  # [N, K, 1, 1]
    denominator = 2 * squared + activation_sum * gradient.pow(3)
    defined = denominator != 0
    alpha = torch.where(defined, squared / torch.where(defined, denominator, torch.ones_like(denominator)), 0.0)
    weights = (alpha * gradient.clamp_min(0)).sum(dim=(2, 3), keepdim=True)  # [N, K, 1, 1]
    return _upsampled_map(weights, activation, images)


def _activation_and_gradient(
    model: nn.Module, images: Tensor, targets: Tensor, layer: str | None
) -> tuple[Tensor, Tensor]:
    """The layer's output ``A`` and ``dS/dA`` of the target logit ``S``, both detached ``[N, K, h, w]``."""
    layer_name = default_cam_layer(model, images.shape[1:]) if layer is None else layer
    captured: list[tuple[Tensor, int]] = []

    def keep(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"layer {name!r} must output a [N, K, h, w] tensor, got {shape}")
        # The version counter now, to notice an in-place op on A later in the forward pass.
        captured.append((output, output._version))

    with explaining(model, images, targets) as (pixels, labels), forward_hooks(model, [layer_name], keep):
        logits = model(pixels)  # [N, num_classes]
        if len(captured) != 1:
            raise ValueError(f"layer {layer_name!r} ran {len(captured)} times in one forward pass; CAMs need once")
        ((activation, version),) = captured
        if activation._version != version:
            # An in-place op after the layer (ReLU(inplace=True)) rewrote A: its gradient would be the next op's.
            raise ValueError(f"layer {layer_name!r}'s output is modified in place later in the forward pass")
        # Summing over the batch is exact in eval mode: image n's score depends on image n only.
        score = logits.gather(1, labels[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradient is None:
            raise ValueError(f"the logits do not depend on layer {layer_name!r}'s output")
    return activation.detach(), gradient.detach()


def _upsampled_map(weights: Tensor, activation: Tensor, images: Tensor) -> Tensor:
    """``ReLU(sum_k weights_k A_k)`` ``[N, h, w]`` upsampled bilinearly to the images' ``[N, H, W]``."""
    cam = (weights * activation).sum(dim=1, keepdim=True).clamp_min(0)  # [N, 1, h, w]
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)  # [N, 1, H, W]
    return cam[:, 0].to(images.device)
