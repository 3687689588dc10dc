"""First-layer convolution filters as colour tiles."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid


def normalize_per_filter(weight: Tensor) -> Tensor:
    """Min-max scale each filter to ``[0, 1]`` on its own.

    Per filter, not over the whole layer: filters differ in scale by orders of magnitude, and one global
    range would leave most of them a flat grey. Scaled on its own, every filter shows its colour contrasts
    and edge orientation whatever its norm. Only the pattern survives, not the magnitude.

    Args:
        weight: conv weights ``[C_out, C_in, k, k]``.

    Returns:
        float ``[C_out, C_in, k, k]`` in ``[0, 1]``; a constant filter becomes ``0.5`` everywhere.

    Raises:
        ValueError: if ``weight`` is not 4-D.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected conv weights [C_out, C_in, k, k], got shape {tuple(weight.shape)}")
    flat = weight.detach().float().flatten(1)  # [C_out, C_in*k*k]
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    # clamp_min keeps the unused branch of where() finite for constant filters.
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.5)
    return scaled.view_as(weight)


def filter_grid(weight: Tensor, nrow: int = 8, upscale: int = 4, padding: int = 1) -> Tensor:
    """Lay out first-layer RGB filters as one colour image, each filter normalized by :func:`normalize_per_filter`.

    Tile ``i`` sits at row ``i // nrow``, column ``i % nrow`` (``torchvision.utils.make_grid`` layout);
    with tile side ``s = k * upscale`` its top-left pixel is ``(padding + row * (s + padding),
    padding + col * (s + padding))``. Padding is white so that dark filters stay separated.

    Args:
        weight: first-layer conv weights ``[C_out, 3, k, k]``.
        nrow: filters per grid row.
        upscale: nearest-neighbour magnification of each ``k x k`` filter.
        padding: white pixels between tiles and around the grid.

    Returns:
        float ``[3, H, W]`` in ``[0, 1]``.

    Raises:
        ValueError: if ``weight`` is not ``[C_out, 3, k, k]``, or ``nrow``, ``upscale`` < 1, or ``padding`` < 0.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(
            f"filter_grid shows only first-layer RGB filters [C_out, 3, k, k] as colour tiles, got shape "
            f"{tuple(weight.shape)}; deeper layers' filters have no colour meaning, look at their feature maps"
        )
    if nrow < 1 or upscale < 1 or padding < 0:
        raise ValueError(f"need nrow >= 1, upscale >= 1, padding >= 0; got {nrow=}, {upscale=}, {padding=}")
    tiles = F.interpolate(normalize_per_filter(weight).cpu(), scale_factor=upscale, mode="nearest")
    if tiles.shape[0] == 1:
        # make_grid returns a lone image without its border; pad it so the layout above still holds.
        return F.pad(tiles[0], (padding, padding, padding, padding), value=1.0)
    return make_grid(tiles, nrow=nrow, padding=padding, pad_value=1.0)
