"""Per-batch image transforms on uint8 tensors, run on whatever device the batch is on.

Decoding once and augmenting whole batches avoids the per-sample PIL transforms that usually bound
CIFAR-10 training on the CPU. The random draws come from an explicit ``torch.Generator`` (on the CPU,
a few numbers per image) so a run's augmentation does not depend on, or disturb, the global RNG and can
be restored exactly from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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
