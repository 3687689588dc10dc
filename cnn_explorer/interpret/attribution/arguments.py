"""What every attribution method does before its mathematics: check the arguments, then run the model in eval
mode with gradients on, on copies of the inputs, leaving the model as it was found (:func:`explaining`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.model_state import model_device, preserved_model_state


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


@contextmanager
def explaining(model: nn.Module, images: Tensor, targets: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """The prelude of a gradient-based attribution method: yields ``(pixels, labels)`` to differentiate.

    Checks ``images`` and ``targets`` (:func:`check_images_targets`) and that every target is one of the model's
    classes (one forward pass of the first image, without gradients); then, inside
    :func:`~cnn_explorer.interpret.model_state.preserved_model_state`, puts the model in eval mode with
    gradients enabled, also when called under ``torch.no_grad()`` or ``torch.inference_mode()`` (as in
    Lightning's validation loop). The copies are made outside inference mode, so they are normal tensors that
    can require grad; the caller's tensors, the parameters' ``.grad``, modes and flags are left as found.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``.
        images: ``[N, C, H, W]`` float, normalized as the model expects.
        targets: ``[N]`` integer class indices.

    Yields:
        ``pixels`` float ``[N, C, H, W]`` and ``labels`` long ``[N]``, copies on the model's device.

    Raises:
        ValueError: on malformed images/targets or a target outside the model's classes.

    Example::

        with explaining(model, images, targets) as (pixels, labels):
            pixels.requires_grad_(True)
            score = model(pixels).gather(1, labels[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, pixels)
    """
    check_images_targets(images, targets)
    device = model_device(model)
    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        pixels = images.detach().to(device).clone()  # [N, C, H, W]
        labels = targets.detach().to(device=device, dtype=torch.long).clone()  # [N]
        with torch.no_grad():
            check_target_range(labels, model(pixels[:1]).shape[1])
        yield pixels, labels
