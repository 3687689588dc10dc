"""Linear probes: how linearly decodable the class is from each layer's pooled features.

Alain, Bengio (2016), "Understanding intermediate layers using linear classifier probes": a
linear classifier (multinomial logistic regression) trained on a frozen layer's features, whose accuracy
measures how linearly separable the classes are at that depth. Here the features are the globally
average-pooled activations ``[N, C_l]`` (from :mod:`.layer_stats`), standardized with the training
features' mean and standard deviation, and the classifier is fitted full-batch with L-BFGS on the cross
entropy plus a small L2 penalty: a strictly convex problem started from zero, so the result is
deterministic and does not depend on a learning rate schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ProbeResult:
    """One layer's probe.

    Attributes:
        train_accuracy: accuracy on the (possibly subsampled) training features it was fitted on.
        val_accuracy: accuracy on the validation features.
        train_size: number of training rows used.
    """

    train_accuracy: float
    val_accuracy: float
    train_size: int


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    l2: float = 1e-3,
    max_train: int | None = 10_000,
    max_iter: int = 100,
    seed: int = 0,
) -> ProbeResult:
    """Fit a multinomial logistic regression on training features and score it on validation features.

    Alain, Bengio (2016), "Understanding intermediate layers using linear classifier probes".
    Minimizes ``mean cross-entropy(x W + b, y) + l2 / 2 * ||W||^2`` in float64 with full-batch L-BFGS
    (strong Wolfe line search) from ``W = 0, b = 0``. Features are standardized per column with the training
    rows' mean and standard deviation (a constant column becomes 0), so ``l2`` means the same for every layer.

    Cost: about ``max_iter * 2`` passes of ``[n, D] x [D, K]`` matmuls; 10k x 128 features take well under a
    second on two cores.

    Args:
        train_features: float ``[N, D]`` training-split features (e.g. ``LayerStats.pooled``).
        train_labels: ``[N]`` class indices.
        val_features: float ``[M, D]`` validation-split features, same columns.
        val_labels: ``[M]`` class indices.
        num_classes: number of classes ``K``.
        l2: weight of the L2 penalty on ``W`` (not on ``b``).
        max_train: fit on at most this many training rows, drawn without replacement by a generator seeded
            with ``seed``; None uses them all.
        max_iter: L-BFGS iterations.
        seed: seeds the subsampling.

    Returns:
        :class:`ProbeResult` with training and validation accuracy in ``[0, 1]``.

    Raises:
        ValueError: on mismatched shapes, labels outside ``[0, num_classes)``, ``num_classes`` < 2, empty
            splits, ``l2`` < 0, ``max_train`` < 1 or ``max_iter`` < 1.
    """
    _check(train_features, train_labels, "train", num_classes)
    _check(val_features, val_labels, "val", num_classes)
    if train_features.shape[1] != val_features.shape[1]:
        raise ValueError(
            f"train and val features need the same columns, got {train_features.shape[1]} and {val_features.shape[1]}"
        )
    if l2 < 0 or max_iter < 1 or (max_train is not None and max_train < 1):
        raise ValueError(f"need l2 >= 0, max_iter >= 1, max_train >= 1 or None; got {l2}, {max_iter}, {max_train}")
    features = train_features.detach().cpu().double()
    labels = train_labels.detach().cpu().long()
    if max_train is not None and features.shape[0] > max_train:
        keep = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed))[:max_train]
        features, labels = features[keep], labels[keep]
    center = features.mean(dim=0)
    spread = features.std(dim=0, correction=0)
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    features = (features - center) / spread
    val = (val_features.detach().cpu().double() - center) / spread

    # A plain tensor optimization, nothing of a model: gradients on even under inference_mode or no_grad.
    with torch.inference_mode(False), torch.enable_grad():
        features, labels, val = features.clone(), labels.clone(), val.clone()
        weight = torch.zeros(features.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(features @ weight + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            train_accuracy = _accuracy(features @ weight + bias, labels)
            val_accuracy = _accuracy(val @ weight + bias, val_labels.detach().cpu().long())
    return ProbeResult(train_accuracy=train_accuracy, val_accuracy=val_accuracy, train_size=int(features.shape[0]))


def linear_probes(
    train_features: Mapping[str, Tensor],
    train_labels: Tensor,
    val_features: Mapping[str, Tensor],
    val_labels: Tensor,
    num_classes: int,
    l2: float = 1e-3,
    max_train: int | None = 10_000,
    max_iter: int = 100,
    seed: int = 0,
) -> dict[str, ProbeResult]:
    """:func:`linear_probe` for every layer present in both feature maps, with the same rows subsampled for each.

    Args:
        train_features: ``{layer: [N, D_l]}`` training features.
        train_labels: ``[N]``.
        val_features: ``{layer: [M, D_l]}`` validation features.
        val_labels: ``[M]``.
        num_classes, l2, max_train, max_iter, seed: as in :func:`linear_probe`.

    Returns:
        ``{layer: ProbeResult}`` in ``train_features``' order.

    Raises:
        ValueError: if a layer is missing from ``val_features``, or as :func:`linear_probe`.
    """
    missing = [name for name in train_features if name not in val_features]
    if missing:
        raise ValueError(f"val_features lacks layer(s) {missing}")
    return {
        name: linear_probe(
            features, train_labels, val_features[name], val_labels, num_classes, l2, max_train, max_iter, seed
        )
        for name, features in train_features.items()
    }


def _check(features: Tensor, labels: Tensor, split: str, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if features.ndim != 2 or not features.is_floating_point() or features.shape[0] == 0:
        raise ValueError(
            f"{split}_features must be non-empty float [N, D], got {features.dtype} {tuple(features.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"{split}_labels must be [N] = [{features.shape[0]}], got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"{split}_labels must be in [0, {num_classes}), got {labels.unique().tolist()}")


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean())
