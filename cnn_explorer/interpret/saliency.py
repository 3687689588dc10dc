"""Vanilla gradient saliency (Simonyan, Vedaldi, Zisserman 2014, "Deep Inside Convolutional Networks")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from cnn_explorer.interpret.image import apply_colormap, safe_max, to_unit_float
from cnn_explorer.interpret.model_state import model_device, preserved_model_state

_UPSCALE = 2  # a 32 px CIFAR image is too small to read next to its heatmap
_BLEND_ALPHA = 0.5  # weight of the heatmap over the image in the third tile


def saliency(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Vanilla gradient saliency: ``|d logit[target] / d input|``, max over colour channels.

    Simonyan, Vedaldi, Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", section 3.1: the magnitude of the class score's gradient
    says which pixels would change the score most, to first order. The raw logit, not the softmax,
    is differentiated so that other classes' scores do not enter.

    The model runs in eval mode. Works when called under ``torch.no_grad()`` or
    ``torch.inference_mode()`` (as in Lightning's validation loop): gradients are switched back on
    inside and the input is cloned into a normal tensor. Gradients are taken w.r.t. the input only,
    so no parameter's ``.grad`` is touched; mode, ``requires_grad`` flags and hooks are left as found.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``.
        images: ``[N, C, H, W]`` float, normalized as the model expects.
        targets: ``[N]`` class indices whose logit is explained, one per image.

    Returns:
        float ``[N, H, W]``, >= 0, on the device of ``images``.

    Raises:
        ValueError: if ``images`` is not 4-D float, ``targets`` is not ``[N]``, or a target is not a
            valid class index for the model's logits.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if targets.shape != images.shape[:1]:
        raise ValueError(f"targets must be [N] = [{images.shape[0]}], got {tuple(targets.shape)}")
    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        # clone() outside inference mode turns an inference tensor into a normal one that can require grad.
        pixels = images.detach().clone().requires_grad_(True)
        logits = model(pixels.to(model_device(model)))  # [N, num_classes]
        num_classes = logits.shape[1]
        labels = targets.detach().clone().to(device=logits.device, dtype=torch.long)
        invalid = (labels < 0) | (labels >= num_classes)
        if invalid.any():
            raise ValueError(f"targets must be class indices in [0, {num_classes}), got {labels[invalid].tolist()}")
        # Summing over the batch is exact in eval mode: image n's score depends on image n only.
        score = logits.gather(1, labels[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, pixels)  # [N, C, H, W]
    return gradient.abs().amax(dim=1)  # [N, H, W]


def saliency_grid(images: Tensor, saliency_maps: Tensor) -> Tensor:
    """One row per image: the image, its saliency heatmap (inferno), and the heatmap blended over the image.

    Each map is divided by its own max (an all-zero map stays black, no NaN), so the colours show where
    within an image the gradient is largest, not how large it is compared with other images. Tiles are
    upscaled 2x (nearest) so that 32 px images stay readable.

    Args:
        images: ``[N, 3, H, W]`` uint8, or float in ``[0, 1]`` (not normalized).
        saliency_maps: ``[N, H, W]`` from :func:`saliency`.

    Returns:
        float ``[3, H', W']`` in ``[0, 1]``: ``N`` rows of 3 tiles of ``2H x 2W`` pixels, 1 px white padding.

    Raises:
        ValueError: if images are not ``[N, 3, H, W]`` or the maps are not ``[N, H, W]``.
    """
    rgb = to_unit_float(images)
    n, _, height, width = rgb.shape
    if saliency_maps.shape != (n, height, width):
        raise ValueError(f"saliency_maps must be [N, H, W] = {[n, height, width]}, got {tuple(saliency_maps.shape)}")
    maps = saliency_maps.detach().float().cpu().clamp_min(0)
    maps = maps / safe_max(maps.flatten(1)).view(n, 1, 1)
    heat = apply_colormap(maps, "inferno")  # [N, 3, H, W]
    blend = (1 - _BLEND_ALPHA) * rgb + _BLEND_ALPHA * heat
    tiles = torch.stack([rgb, heat, blend], dim=1).flatten(0, 1)  # [3N, 3, H, W]
    tiles = F.interpolate(tiles, scale_factor=_UPSCALE, mode="nearest")
    return make_grid(tiles, nrow=3, padding=1, pad_value=1.0)
