"""Image grids of the views: first-layer filters, feature maps and attribution maps as one picture each.

Each grid is float ``[3, H, W]`` in ``[0, 1]``, ready for TensorBoard's ``add_image`` or for
:func:`cnn_explorer.render.figures.labeled_grid_figure`. Tiles are laid out by ``torchvision.utils.make_grid``
with white padding. Inputs may hold NaN or infinity (a diverged model): they are drawn, not raised on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from cnn_explorer.errors import check_positive
from cnn_explorer.render.image import apply_colormap, safe_max, to_display_rgb

ATTRIBUTION_UPSCALE = 2  # a 32 px CIFAR image is too small to read next to its heatmap
OVERLAY_ALPHA = 0.5  # weight of the heatmap over the image in an overlay tile
FEATURE_COLORMAP = "viridis"
FEATURE_CHANNELS = 8  # channels shown per layer by default, in TensorBoard and in the report
ATTRIBUTION_COLORMAP = "inferno"


def normalize_per_filter(weight: Tensor) -> Tensor:
    """Min-max scale each filter to ``[0, 1]`` on its own.

    Per filter, not over the whole layer: filters differ in scale by orders of magnitude, and one global
    range would leave most of them a flat grey. Scaled on its own, every filter shows its colour contrasts
    and edge orientation whatever its norm. Only the pattern survives, not the magnitude.

    Args:
        weight: conv weights ``[C_out, C_in, k, k]``.

    Returns:
        float ``[C_out, C_in, k, k]`` in ``[0, 1]``; a constant filter becomes ``0.5`` everywhere, a filter
        with a non-finite weight NaN everywhere (drawn in the invalid colour).

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
    scaled = torch.where(flat.isfinite().all(dim=1, keepdim=True), scaled, torch.nan)
    return scaled.view_as(weight)


def filter_grid(weight: Tensor, nrow: int = 8, upscale: int = 8, padding: int = 1) -> Tensor:
    """Lay out first-layer filters as one image, each filter normalized by :func:`normalize_per_filter`.

    RGB filters become colour tiles, single-channel (grayscale input) filters gray tiles. Tile ``i`` sits at
    row ``i // nrow``, column ``i % nrow`` (``torchvision.utils.make_grid`` layout); with tile side
    ``s = k * upscale`` its top-left pixel is ``(padding + row * (s + padding), padding + col * (s + padding))``.
    Padding is white so that dark filters stay separated.

    Args:
        weight: first-layer conv weights ``[C_out, C_in, k, k]``, ``C_in`` 1 or 3.
        nrow: filters per grid row.
        upscale: nearest-neighbour magnification of each ``k x k`` filter.
        padding: white pixels between tiles and around the grid.

    Returns:
        float ``[3, H, W]`` in ``[0, 1]``.

    Raises:
        ValueError: if ``weight`` is not ``[C_out, 1 or 3, k, k]``, or ``nrow``, ``upscale`` < 1, or ``padding`` < 0.
    """
    if weight.ndim != 4 or weight.shape[1] not in (1, 3):
        raise ValueError(
            f"filter_grid shows first-layer filters over 1 or 3 input channels [C_out, 1|3, k, k], got shape "
            f"{tuple(weight.shape)}; deeper layers' filters have no colour meaning, look at their feature maps"
        )
    check_positive(nrow=nrow, upscale=upscale)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    normalized = normalize_per_filter(weight).cpu()
    tiles = F.interpolate(normalized.nan_to_num(0.0), scale_factor=upscale, mode="nearest")
    tiles = tiles.expand(-1, 3, -1, -1).clone()  # grayscale filters as gray tiles
    broken = ~normalized.flatten(1).isfinite().all(dim=1)
    tiles[broken] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)  # non-finite filters: the invalid colour
    if tiles.shape[0] == 1:
        # make_grid returns a lone image without its border; pad it so the layout above still holds.
        return F.pad(tiles[0], (padding, padding, padding, padding), value=1.0)
    return make_grid(tiles, nrow=nrow, padding=padding, pad_value=1.0)


def feature_map_grid(images: Tensor, activations: Tensor, max_channels: int = FEATURE_CHANNELS) -> Tensor:
    """One row per image: the image, then its first ``max_channels`` feature maps in the viridis colormap.

    Maps are upsampled (nearest) to the image size, so each pixel block shows the receptive field
    position it came from. Each row is divided by that image's largest finite activation over the shown
    channels: within an image, weak and strong channels stay comparable; across images, each row uses
    its full colour range. Activations are assumed to be ReLU outputs (>= 0); negative values, from a
    layer before its ReLU, show as 0. An all-zero row shows as the colormap's lowest colour; NaN in the
    invalid colour.

    Args:
        images: the inputs ``[N, C, H, W]``, C = 1 or 3, uint8 or float in ``[0, 1]`` (not normalized).
        activations: ``[N, C_l, h, w]`` outputs of one layer for those images.
        max_channels: how many channels (the first ones) to show.

    Returns:
        float ``[3, H', W']`` in ``[0, 1]``: ``N`` rows of ``1 + min(C_l, max_channels)`` tiles of
        ``H x W`` pixels, 1 px white padding.

    Raises:
        ValueError: on mismatched batch sizes, images that are not 1 or 3 channels, non-4-D activations,
            or ``max_channels < 1``.
    """
    rgb = to_display_rgb(images)
    if activations.ndim != 4 or activations.shape[0] != rgb.shape[0]:
        raise ValueError(
            f"activations must be [N, C, h, w] with N = {rgb.shape[0]} images, got {tuple(activations.shape)}"
        )
    check_positive(max_channels=max_channels)
    n, _, height, width = rgb.shape
    maps = activations[:, :max_channels].detach().float().cpu().clamp_min(0)  # [N, c, h, w]; NaN stays NaN
    maps = F.interpolate(maps, size=(height, width), mode="nearest")  # [N, c, H, W]
    maps = maps / safe_max(maps.flatten(1)).view(n, 1, 1, 1)
    colored = apply_colormap(maps, FEATURE_COLORMAP)  # [N, c, 3, H, W]
    tiles = torch.cat([rgb.unsqueeze(1), colored], dim=1)  # [N, 1 + c, 3, H, W]
    return make_grid(tiles.flatten(0, 1), nrow=tiles.shape[1], padding=1, pad_value=1.0)


def attribution_grid(images: Tensor, maps: Sequence[Tensor], overlay: bool = True) -> Tensor:
    """One row per image: the image, then for each map its heatmap (inferno) and, if ``overlay``, the blend.

    Every map is shown by its magnitude, divided by its own largest finite value: the colours say where
    within an image a method puts its attribution, not how large it is compared with other images or
    methods (``|attribution| / image max``, the one colour convention of every attribution view).
    An all-zero map stays black. Tiles are upscaled 2x (nearest) so that 32 px images stay readable.

    Args:
        images: ``[N, C, H, W]``, C = 1 or 3, uint8, or float in ``[0, 1]`` (not normalized).
        maps: one ``[N, H, W]`` attribution map per method (any sign).
        overlay: add a tile blending each heatmap over the image.

    Returns:
        float ``[3, H', W']`` in ``[0, 1]``: ``N`` rows of ``1 + len(maps) * (2 if overlay else 1)`` tiles of
        ``2H x 2W`` pixels, 1 px white padding.

    Raises:
        ValueError: if images are not ``[N, 1|3, H, W]``, there is no map, or a map is not ``[N, H, W]``.
    """
    rgb = to_display_rgb(images)
    n, _, height, width = rgb.shape
    if not maps:
        raise ValueError("need at least one attribution map")
    columns = [rgb]
    for m in maps:
        if m.shape != (n, height, width):
            raise ValueError(f"attribution maps must be [N, H, W] = {[n, height, width]}, got {tuple(m.shape)}")
        magnitude = m.detach().float().cpu().abs()
        heat = apply_colormap(magnitude / safe_max(magnitude.flatten(1)).view(n, 1, 1), ATTRIBUTION_COLORMAP)
        columns.append(heat)  # [N, 3, H, W]
        if overlay:
            columns.append((1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * heat)
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # [N * columns, 3, H, W]
    tiles = F.interpolate(tiles, scale_factor=ATTRIBUTION_UPSCALE, mode="nearest")
    return make_grid(tiles, nrow=len(columns), padding=1, pad_value=1.0)
