"""Per-batch image transforms on uint8 tensors, run on whatever device the batch is on.

Decoding once and augmenting whole batches avoids the per-sample PIL transforms that usually bound
CIFAR-10 training on the CPU. The random draws come from an explicit ``torch.Generator`` (on the CPU,
a few numbers per image) so a run's augmentation does not depend on, or disturb, the global RNG and can
be restored exactly from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

AUGMENTATIONS = ("crop_flip", "resized_crop_flip")
"""What ``data.augment`` may name: :func:`random_crop_flip` (CIFAR's pad-crop and flip) or
:func:`random_resized_crop_flip` (ImageNet-style scale augmentation)."""


def random_crop_flip(
    images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, one draw per image.

    Equivalent per image to torchvision's ``RandomCrop(size, padding=padding)`` (fill 0) followed by
    ``RandomHorizontalFlip(0.5)``.

    Args:
        images: ``[N, C, H, W]`` (any dtype; uint8 keeps the copy small).
        padding: pixels of zero padding on each side; 0 disables cropping.
        hflip: flip each image left-right with probability 0.5.
        generator: CPU generator for the random offsets and flips.

    Returns:
        ``[N, C, H, W]``, same dtype and device as ``images``.
    """
    n, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))  # [N, C, H+2p, W+2p]
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # [N, 1, H, 1]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # [N, 1, 1, W]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]  # [N, C, H, W]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(device)[:, None, None, None]
        images = torch.where(flip, images.flip(3), images)
    return images


def random_resized_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop boxes as torchvision's ``RandomResizedCrop`` draws them, for ``n`` images at once.

    Area a uniform fraction of the image in ``scale``, aspect ratio (width / height) log-uniform in ``ratio``,
    position uniform among the places the box fits; of 10 tries per image the first that fits is kept, and an
    image with none keeps the whole image (torchvision falls back to a centre crop clipped to ``ratio``; with a
    square image and ``scale`` reaching 1, the whole image is that crop). Boxes are continuous, not rounded to
    pixels: :func:`resized_crop` samples them bilinearly. Reference: Szegedy et al., "Going deeper with
    convolutions" (2015), the "Inception" crop; ``scale=(0.35, 1)`` as fast.ai's Imagenette baselines.

    Args:
        n: number of boxes.
        height, width: the image's size in pixels.
        scale: (min, max) fraction of the image's area, ``0 < min <= max <= 1``.
        ratio: (min, max) width / height, ``0 < min <= max``.
        generator: CPU generator of the draws (``3 * 10 * n`` uniforms).

    Returns:
        float32 ``[n, 4]`` boxes ``(x0, y0, x1, y1)`` in pixel coordinates, the image spanning ``[0, width]`` by
        ``[0, height]``.
    """
    tries = 10
    area = height * width * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w, h = (area * aspect).sqrt(), (area / aspect).sqrt()  # [n, tries]
    fits = (w <= width) & (h <= height)
    first = fits.float().argmax(1)  # index of the first try that fits (0 if none, replaced below)
    pick = torch.arange(n)
    w, h = w[pick, first], h[pick, first]
    w = torch.where(fits.any(1), w, torch.full_like(w, width))
    h = torch.where(fits.any(1), h, torch.full_like(h, height))
    where = torch.rand(n, 2, generator=generator)  # position of the box within the free room
    x0, y0 = where[:, 0] * (width - w), where[:, 1] * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box, resized to ``size`` x ``size``, in one batched op (``torchvision.ops.roi_align``).

    Bilinear sampling at the centres of the output pixels (``aligned=True``), averaging ``ceil(box / size)``
    samples per output pixel and axis, so a box larger than ``size`` is antialiased; a box equal to the whole
    image at ``size`` returns the image exactly.

    Args:
        images: ``[N, C, H, W]`` (uint8 or float).
        boxes: float ``[N, 4]`` ``(x0, y0, x1, y1)`` per image, in pixels (the image spans ``[0, W] x [0, H]``).
        size: output height and width.

    Returns:
        ``[N, C, size, size]``, same dtype and device as ``images`` (integers rounded and clamped to 0..255).
    """
    index = torch.arange(len(images), dtype=torch.float32)[:, None]
    rois = torch.cat([index, boxes.float()], 1).to(images.device)  # [N, 5]: batch index, box
    out = roi_align(images.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if images.dtype.is_floating_point:
        return out.to(images.dtype)
    return out.round_().clamp_(0, 255).to(images.dtype)


def random_resized_crop_flip(
    images: torch.Tensor,
    size: int,
    hflip: bool,
    scale: tuple[float, float] = (0.35, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random resized crop, then random horizontal flip, one draw per image, the whole batch in one op.

    Per image like torchvision's ``RandomResizedCrop(size, scale, ratio=(3/4, 4/3))`` followed by
    ``RandomHorizontalFlip(0.5)``; boxes from :func:`random_resized_boxes`, sampled by :func:`resized_crop`.

    Args:
        images: ``[N, C, H, W]``.
        size: output height and width.
        hflip: flip each image left-right with probability 0.5.
        scale: (min, max) fraction of the image's area each crop covers.
        generator: CPU generator for the boxes and flips.

    Returns:
        ``[N, C, size, size]``, same dtype and device as ``images``.
    """
    n, _, h, w = images.shape
    images = resized_crop(images, random_resized_boxes(n, h, w, scale, generator=generator), size)
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)[:, None, None, None]
        images = torch.where(flip, images.flip(3), images)
    return images


def center_crop_resize(images: torch.Tensor, fraction: float, size: int, chunk: int = 500) -> torch.Tensor:
    """The centred square of ``fraction`` of each image's side, resized to ``size`` x ``size``: the evaluation
    view of a net trained on random resized crops.

    Such crops show objects larger than a whole image does (with ``scale=(0.35, 1)`` a crop's side is on average
    0.81 of the image's); evaluating on a centre crop narrows that gap in apparent object size (Touvron et al.,
    "Fixing the train-test resolution discrepancy", NeurIPS 2019). fast.ai's Imagenette leaderboard evaluates on
    such crops (128 of 152 px). ``fraction=1`` and an image already at ``size`` return the images unchanged.

    Args:
        images: ``[N, C, H, W]`` uint8 or float, square.
        fraction: side of the crop over the image's side, in ``(0, 1]``.
        size: output height and width.
        chunk: images resized at once (bounds the float32 copy :func:`resized_crop` makes).

    Returns:
        ``[N, C, size, size]``, dtype and device of ``images``.
    """
    side = images.shape[-1]
    if fraction == 1 and side == size:
        return images
    margin = side * (1 - fraction) / 2
    box = torch.tensor([[margin, margin, side - margin, side - margin]])
    return torch.cat([resized_crop(part, box.expand(len(part), 4), size) for part in images.split(chunk)])


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` in 0..255 -> float32 ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1] float (for display)."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


TTA_MODES = ("none", "flip", "flip_translate")
"""What ``model.tta`` may name; see :func:`tta_logits`."""


def tta_logits(net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: str) -> torch.Tensor:
    """The logits of ``images`` averaged over test-time views, airbench's multi-crop evaluation (Jordan 2024,
    arXiv:2404.00498).

    ``none``: ``net(x)``. ``flip``: the mean of ``net(x)`` and ``net(flip(x))`` (left-right). ``flip_translate``:
    half of that, plus half the ``flip`` mean over the image translated by one pixel along the diagonal, each way
    (the top-left and bottom-right crops of the image reflect-padded by 1), so six views weighted 1/4, 1/4, 1/8,
    1/8, 1/8, 1/8.

    Args:
        net: normalized images ``[N, C, H, W]`` -> logits ``[N, K]``, in eval mode (the views are run one by one).
        images: ``[N, C, H, W]``.
        tta: one of :data:`TTA_MODES`.

    Returns:
        ``[N, K]``.
    """
    if tta == "none":
        return net(images)
    flipped = 0.5 * (net(images) + net(images.flip(3)))
    if tta == "flip":
        return flipped
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")  # [N, C, H+2, W+2]
    up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
    shifted = 0.25 * (net(up_left) + net(up_left.flip(3)) + net(down_right) + net(down_right.flip(3)))
    return 0.5 * flipped + 0.5 * shifted
