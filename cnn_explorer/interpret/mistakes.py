"""The model's most confident wrong predictions: where it is sure and wrong is where it learned a shortcut."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


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
