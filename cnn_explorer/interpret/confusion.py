"""Confusion matrix and the numbers read off it: per-class accuracy and the most confused class pairs."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Count how often each true class was predicted as each class.

    Args:
        preds: predicted class indices ``[N]``, or logits / probabilities ``[N, num_classes]`` (argmax is taken).
        targets: true class indices ``[N]``.
        num_classes: number of classes ``C``.

    Returns:
        int64 ``[C, C]``: entry ``[i, j]`` counts samples of true class ``i`` predicted as ``j``
        (rows = true, columns = predicted); row sums are the class supports.

    Raises:
        ValueError: if shapes or values do not fit ``num_classes`` (raised by torchmetrics' argument checks).
    """
    return multiclass_confusion_matrix(preds.detach(), targets.detach(), num_classes).long()


def row_normalize(cm: Tensor) -> Tensor:
    """Divide each row by its sum, turning counts into "fraction of true class ``i`` predicted as ``j``".

    Args:
        cm: counts ``[C, C]`` (rows = true class).

    Returns:
        float ``[C, C]``; each row sums to 1, except rows of classes with no samples, which stay all 0.
    """
    counts = cm.detach().float()
    totals = counts.sum(dim=1, keepdim=True)  # [C, 1]
    return torch.where(totals > 0, counts / totals.clamp_min(1), 0.0)


def most_confused_pairs(cm: Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The ``k`` largest off-diagonal rates of the row-normalized confusion matrix.

    Rates, not counts, so that a small class's systematic confusion is not hidden by a big class's
    noise. Pairs that never occur (rate 0) are left out, so fewer than ``k`` may come back.

    Args:
        cm: counts ``[C, C]`` (rows = true class, columns = predicted).
        k: at most how many pairs to return.

    Returns:
        ``[(true_class, predicted_class, rate), ...]``, by descending rate, ties in ``(true, predicted)`` order.

    Raises:
        ValueError: if ``cm`` is not square 2-D or ``k < 0``.
    """
    _check_square(cm)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rates = row_normalize(cm).tolist()
    pairs = [
        (true, pred, rate)
        for true, row in enumerate(rates)
        for pred, rate in enumerate(row)
        if true != pred and rate > 0
    ]
    pairs.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return pairs[:k]


def per_class_accuracy(cm: Tensor) -> Tensor:
    """Recall of each class: correct predictions of class ``i`` over samples of class ``i``.

    Args:
        cm: counts ``[C, C]`` (rows = true class).

    Returns:
        float ``[C]`` in ``[0, 1]``; 0 for classes with no samples.

    Raises:
        ValueError: if ``cm`` is not square 2-D.
    """
    _check_square(cm)
    return row_normalize(cm).diagonal().clone()


def _check_square(cm: Tensor) -> None:
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {tuple(cm.shape)}")
