"""The model's most confident wrong predictions: where it is sure and wrong is where it learned a shortcut."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

MISTAKES_SHOWN = 8  # mistakes shown by default, in TensorBoard and in the report


class Mistakes(NamedTuple):
    """Wrong predictions, most confident first; unpacks as ``indices, predictions, confidences``.

    Attributes:
        indices: int64 ``[M]``, rows of the logits these mistakes come from.
        predictions: int64 ``[M]``, the (wrong) predicted classes.
        confidences: float ``[M]``, softmax probability of the predicted class.
    """

    indices: Tensor
    predictions: Tensor
    confidences: Tensor


def confident_mistakes(logits: Tensor, targets: Tensor, k: int) -> Mistakes:
    """The at most ``k`` wrong predictions with the highest softmax confidence.

    Args:
        logits: ``[N, C]`` model outputs.
        targets: ``[N]`` true class indices.
        k: at most how many mistakes to return.

    Returns:
        :class:`Mistakes` with ``M = min(k, number of mistakes)`` entries (possibly 0), by descending
        confidence; equal confidences keep the order of their rows. Tensors are on the logits' device.

    Raises:
        ValueError: if ``logits`` is not ``[N, C]``, ``targets`` is not ``[N]``, or ``k < 0``.
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    confidence, prediction = logits.detach().float().softmax(dim=1).max(dim=1)  # [N], [N]
    wrong = (prediction != targets.to(prediction.device)).nonzero().squeeze(1)  # [M_all], ascending rows
    # stable=True: ties keep ascending row order, so the result does not depend on the sort backend.
    order = confidence[wrong].argsort(descending=True, stable=True)[:k]
    chosen = wrong[order]
    return Mistakes(indices=chosen, predictions=prediction[chosen], confidences=confidence[chosen])


class RunningMistakes:
    """The ``k`` most confident mistakes over a stream of batches, keeping ``k`` images, not every logit.

    Gives what :func:`confident_mistakes` gives on the concatenated batches (ties keep the earlier image),
    so a callback can follow a validation pass on the device without copying its logits anywhere.

    Args:
        k: how many mistakes to keep, >= 1.

    Example::

        running = RunningMistakes(16)
        for images, labels in batches:
            running.update(model(images), labels, images)
        images, labels, predictions, confidences = running.result()
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.images: Tensor | None = None  # [m, C, H, W], m <= k, most confident first
        self.labels = self.predictions = self.confidences = None

    def update(self, logits: Tensor, targets: Tensor, images: Tensor) -> None:
        """Merge one batch: ``logits [B, C]``, ``targets [B]``, the ``images [B, ...]`` to show for its mistakes."""
        wrong = confident_mistakes(logits, targets, self.k)
        batch = (images[wrong.indices].detach(), targets[wrong.indices], wrong.predictions, wrong.confidences)
        if self.images is not None:
            kept = (self.images, self.labels, self.predictions, self.confidences)
            batch = tuple(torch.cat([old, new.to(old.device)]) for old, new in zip(kept, batch, strict=True))
        # Kept entries first, then a stable sort: ties keep the earlier image, as confident_mistakes does.
        order = batch[3].argsort(descending=True, stable=True)[: self.k]
        self.images, self.labels, self.predictions, self.confidences = (t[order] for t in batch)

    def result(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(images, labels, predictions, confidences)`` of the kept mistakes, most confident first; ``m = 0``
        rows (empty tensors) if :meth:`update` was never called or saw no mistake."""
        if self.images is None:
            empty = torch.zeros(0, dtype=torch.int64)
            return torch.zeros(0, 3, 1, 1), empty, empty, torch.zeros(0)
        return self.images, self.labels, self.predictions, self.confidences
