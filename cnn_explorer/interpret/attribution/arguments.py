"""The argument checks every attribution method shares: images, targets and whether a target is a class."""

from __future__ import annotations

import torch
from torch import Tensor


def check_images_targets(images: Tensor, targets: Tensor) -> None:
    """Check the shapes and dtypes of an attribution method's inputs.

    Args:
        images: should be float ``[N, C, H, W]``.
        targets: should be integer ``[N]``.

    Raises:
        ValueError: if ``images`` is not 4-D float or ``targets`` is not an integer ``[N]`` tensor.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if targets.shape != images.shape[:1]:
        raise ValueError(f"targets must be [N] = [{images.shape[0]}], got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")


def check_target_range(targets: Tensor, num_classes: int) -> None:
    """Check that every target indexes one of ``num_classes`` logits.

    Args:
        targets: integer ``[N]``.
        num_classes: the width of the model's logits.

    Raises:
        ValueError: listing the targets outside ``[0, num_classes)``.
    """
    invalid = (targets < 0) | (targets >= num_classes)
    if invalid.any():
        raise ValueError(f"targets must be class indices in [0, {num_classes}), got {targets[invalid].tolist()}")
