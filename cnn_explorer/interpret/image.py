"""Image helpers shared by the grid makers: unit-range RGB, zero-safe maxima, colormaps as tensors."""

from __future__ import annotations

from functools import lru_cache

import torch
from matplotlib import colormaps
from torch import Tensor

_LUT_SIZE = 256


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 ``[N, 3, H, W]`` (0-255) or float in ``[0, 1]`` -> float32 CPU ``[N, 3, H, W]`` in ``[0, 1]``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got shape {tuple(images.shape)}")
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        return images.float() / 255
    return images.float().clamp(0, 1)


def safe_max(values: Tensor) -> Tensor:
    """Row-wise max of ``[N, D]`` as ``[N]``, with 1 for rows whose max is 0 so dividing by it is safe."""
    peak = values.amax(dim=1)
    return torch.where(peak > 0, peak, torch.ones_like(peak))


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> Tensor:
    """Matplotlib colormap ``name`` sampled at 256 points: float ``[256, 3]`` RGB in ``[0, 1]``."""
    cmap = colormaps[name].resampled(_LUT_SIZE)
    return torch.tensor(cmap(range(_LUT_SIZE))[:, :3], dtype=torch.float32)


def apply_colormap(values: Tensor, name: str) -> Tensor:
    """Values in ``[0, 1]`` of shape ``[..., H, W]`` -> RGB float ``[..., 3, H, W]`` through colormap ``name``."""
    index = (values.clamp(0, 1) * (_LUT_SIZE - 1)).round().long()
    return colormap_lut(name)[index].movedim(-1, -3)
