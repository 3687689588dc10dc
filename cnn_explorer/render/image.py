"""Pixels for people: images in display range, colormaps as tensors, non-finite values made visible.

Everything a grid or figure needs to turn a tensor into colours lives here, so every view shows 1- and
3-channel images, NaN and infinity the same way.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from matplotlib import colormaps
from torch import Tensor

_LUT_SIZE = 256
INVALID_COLOR = (1.0, 0.0, 1.0)  # magenta: NaN in a map, a colour no colormap used here produces


def to_display_rgb(images: Tensor) -> Tensor:
    """uint8 (0-255) or float (in ``[0, 1]``) images ``[N, C, H, W]``, C = 1 or 3 -> float32 CPU RGB in ``[0, 1]``.

    Grayscale images are repeated over three channels; NaN pixels of a float image show as 0.

    Raises:
        ValueError: if ``images`` is not ``[N, 1, H, W]`` or ``[N, 3, H, W]``.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    images = images.detach().cpu()
    rgb = images.float() / 255 if images.dtype == torch.uint8 else images.float().nan_to_num(0.0).clamp(0, 1)
    return rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb


def safe_max(values: Tensor) -> Tensor:
    """Row-wise largest finite value of ``[N, D]`` as ``[N]``, 1 where there is none above 0, so dividing is safe."""
    finite = torch.where(values.isfinite(), values, torch.zeros_like(values))
    peak = finite.amax(dim=1)
    return torch.where(peak > 0, peak, torch.ones_like(peak))


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> Tensor:
    """Matplotlib colormap ``name`` sampled at 256 points: float ``[256, 3]`` RGB in ``[0, 1]``."""
    cmap = colormaps[name].resampled(_LUT_SIZE)
    return torch.tensor(cmap(range(_LUT_SIZE))[:, :3], dtype=torch.float32)


def apply_colormap(values: Tensor, name: str) -> Tensor:
    """Values in ``[0, 1]`` of shape ``[..., H, W]`` -> RGB float ``[..., 3, H, W]`` through colormap ``name``.

    Out-of-range values are clamped (+inf shows as the top colour, -inf as the bottom one); NaN shows as
    :data:`INVALID_COLOR`, so a diverged model's maps are visibly broken rather than a crash or a plausible picture.
    """
    invalid = values.isnan()
    index = (values.nan_to_num(0.0).clamp(0, 1) * (_LUT_SIZE - 1)).round().long()
    rgb = colormap_lut(name)[index]  # [..., H, W, 3]
    rgb[invalid] = torch.tensor(INVALID_COLOR)
    return rgb.movedim(-1, -3)


def to_hwc_uint8(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` uint8 or float in ``[0, 1]``, C = 1 or 3 -> numpy uint8 ``[N, H, W, 3]`` for imshow."""
    if images.dtype != torch.uint8:
        images = (to_display_rgb(images) * 255).round().to(torch.uint8)
    elif images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.detach().cpu().permute(0, 2, 3, 1).numpy()


def clip_to_percentile(maps: Tensor, percentile: float = 99.0) -> tuple[Tensor, Tensor]:
    """Scale each map by a high percentile of its magnitude and clip, so a few outlier pixels do not set the
    colour scale of the whole map (the idea of Captum's visualizers' ``outlier_perc``, Kokhlikyan et al. 2020,
    with a plain percentile of ``|map|`` in place of their cumulative-sum threshold).

    Args:
        maps: float ``[N, H, W]``, signed or not; NaN is kept (coloured as invalid), infinity clipped.
        percentile: in ``(0, 100]``; 100 is the maximum (no clipping).

    Returns:
        ``(scaled, scale)``: ``scaled`` ``[N, H, W]`` is ``map / scale`` clipped to ``[-1, 1]`` (``[0, 1]`` for a
        non-negative map), ``scale`` ``[N]`` the ``percentile``-th percentile of each finite ``|map|``, or its
        largest value when that percentile is 0 (a map that is zero almost everywhere), or 1 for an all-zero map.

    Raises:
        ValueError: if ``percentile`` is not in ``(0, 100]``.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    maps = maps.detach().float().cpu()
    magnitude = maps.abs().flatten(1)  # [N, H*W]
    finite = torch.where(magnitude.isfinite(), magnitude, torch.zeros_like(magnitude))
    scale = torch.quantile(finite, percentile / 100, dim=1)  # [N], linear interpolation between order statistics
    scale = torch.where(scale > 0, scale, safe_max(finite))
    return (maps / scale.view(-1, 1, 1)).clamp(-1, 1), scale
