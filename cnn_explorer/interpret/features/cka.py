"""Linear centered kernel alignment (CKA): how alike two layers' representations of the same inputs are.

Kornblith, Norouzi, Lee, Hinton (2019), "Similarity of Neural Network Representations Revisited", ICML,
section "Comparing Similarity Structures", linear CKA: with ``X [n, p]`` and ``Y [n, q]`` column-centred,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)                         (feature form)
              = <K, L>_F / (||K||_F * ||L||_F),   K = X X^T,  L = Y Y^T             (Gram form)

the two being equal because ``||Y^T X||_F^2 = tr(X X^T Y Y^T)``. It is invariant to orthogonal
transformations and isotropic scaling of either representation (and to adding a constant, through the
centring), not to arbitrary invertible linear maps. The feature form costs ``O(n (p q + p^2 + q^2))``, the
Gram form ``O(n^2 (p + q))``; each call takes the cheaper one. Sums run in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CKA_IMAGES = 1000
"""Images in CKA's sample: the first ones of the validation split, in the split's order, for the run report and
the comparison alike."""
CKA_POOL = 4
"""Maps are average-pooled to ``CKA_POOL x CKA_POOL`` before CKA (see :class:`ActivationSample`); on the small CNN
this moves CKA by up to 0.09 against full resolution, so reports state it."""


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between two representations of the same ``n`` inputs.

    Kornblith et al. (2019), "Similarity of Neural Network Representations Revisited", linear kernel with
    centring (see the module docstring for both forms; the cheaper one is used).

    Args:
        x: ``[n, p]`` (or ``[n, ...]``, flattened) activations of one layer, e.g. pooled or flattened maps.
        y: ``[n, q]`` (or ``[n, ...]``) activations of another layer, same inputs in the same order.

    Returns:
        CKA in ``[0, 1]``; NaN if either representation is constant over the inputs (0 / 0).

    Raises:
        ValueError: if ``x`` and ``y`` do not have the same number of rows ``n >= 2``.
    """
    a, b = _centered(x, "x"), _centered(y, "y")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must describe the same inputs, got {a.shape[0]} and {b.shape[0]} rows")
    n, p, q = a.shape[0], a.shape[1], b.shape[1]
    if n * (p * q + p * p + q * q) <= n * n * (p + q):
        cross = (b.T @ a).pow(2).sum()
        return _ratio(cross, (a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt())
    gram_a, gram_b = a @ a.T, b @ b.T  # [n, n], centred because the columns are
    return _ratio((gram_a * gram_b).sum(), gram_a.pow(2).sum().sqrt() * gram_b.pow(2).sum().sqrt())


def cka_matrix(xs: Sequence[Tensor], ys: Sequence[Tensor] | None = None) -> Tensor:
    """Linear CKA between every pair of representations, e.g. all layers of one run, or run A's against run B's.

    Kornblith et al. (2019) compare layers this way, as a layer-by-layer similarity map. Each
    representation is centred once; when the Gram form is the cheaper one for a representation, its
    normalized Gram matrix ``K / ||K||_F`` is computed once and reused for every pair it is in.

    Args:
        xs: representations ``[n, p_i]`` (or ``[n, ...]``, flattened) of the same ``n`` inputs.
        ys: a second list over the same inputs; None compares ``xs`` with itself (the result is symmetric).

    Returns:
        float64 ``[len(xs), len(ys or xs)]``; entry ``(i, j)`` is ``linear_cka(xs[i], ys[j])``.

    Raises:
        ValueError: if a list is empty or the representations do not all have the same ``n >= 2`` rows.
    """
    if not xs or (ys is not None and not ys):
        raise ValueError("xs (and ys when given) must hold at least one representation")
    left = [_centered(x, f"xs[{i}]") for i, x in enumerate(xs)]
    right = left if ys is None else [_centered(y, f"ys[{j}]") for j, y in enumerate(ys)]
    if len({t.shape[0] for t in [*left, *right]}) != 1:
        raise ValueError(
            f"all representations must describe the same inputs, got rows {[t.shape[0] for t in left + right]}"
        )
    n = left[0].shape[0]
    # A representation wider than n is cheaper through its n x n Gram matrix; keep it, normalized, once.
    grams: dict[int, Tensor] = {}

    def normalized_gram(t: Tensor) -> Tensor:
        key = id(t)
        if key not in grams:
            gram = t @ t.T
            grams[key] = gram / gram.pow(2).sum().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
        return grams[key]

    result = torch.empty(len(left), len(right), dtype=torch.float64)
    for i, a in enumerate(left):
        for j, b in enumerate(right):
            if ys is None and j < i:
                result[i, j] = result[j, i]
            elif a.shape[1] >= n and b.shape[1] >= n:
                both = (normalized_gram(a) * normalized_gram(b)).sum()
                constant = a.abs().max() == 0 or b.abs().max() == 0
                result[i, j] = float("nan") if constant else float(both)
            else:
                result[i, j] = linear_cka(a, b)
    return result


class ActivationSample:
    """Keeps the first ``count`` images' outputs of every observed layer, for CKA from the shared pass.

    An observer for :func:`.layer_stats.observe_layers`, so that the one forward pass over a split that
    feeds the layer statistics and dataset examples also yields CKA's representations. Maps larger than
    ``pool_to`` are average-pooled to ``pool_to x pool_to`` first (adaptive average pooling): the Gram form
    costs ``n^2 * C * h * w``, and full-resolution early layers dominate it (see :func:`linear_cka`).

    Args:
        count: images kept per layer (the first ones seen).
        pool_to: spatial side the maps are pooled down to; None keeps them at full resolution.

    Raises:
        ValueError: if ``count`` < 2 or ``pool_to`` < 1.
    """

    def __init__(self, count: int = CKA_IMAGES, pool_to: int | None = CKA_POOL) -> None:
        if count < 2 or (pool_to is not None and pool_to < 1):
            raise ValueError(f"need count >= 2 and pool_to >= 1 or None, got {count}, {pool_to}")
        self.count, self.pool_to = count, pool_to
        self._kept: dict[str, list[Tensor]] = {}
        self._seen: dict[str, int] = {}

    def update(self, layer_name: str, activations: Tensor, labels: Tensor | None, indices: Tensor | None) -> None:
        """Keep this batch's rows of ``activations`` ``[B, C, h, w]`` (or ``[B, C]``) until ``count`` are held."""
        seen = self._seen.get(layer_name, 0)
        room = self.count - seen
        if room <= 0:
            return
        rows = activations[:room]
        if rows.ndim == 4 and self.pool_to is not None and rows.shape[-1] * rows.shape[-2] > self.pool_to**2:
            rows = F.adaptive_avg_pool2d(rows, self.pool_to)
        self._kept.setdefault(layer_name, []).append(rows.flatten(1).float().cpu())
        self._seen[layer_name] = seen + rows.shape[0]

    def result(self) -> dict[str, Tensor]:
        """``{layer: float32 [n, features]}`` with ``n = min(count, images seen)``, in the order layers first ran."""
        return {name: torch.cat(parts) for name, parts in self._kept.items()}


def _centered(x: Tensor, name: str) -> Tensor:
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be [n >= 2, ...], got {tuple(x.shape)}")
    flat = x.detach().flatten(1).double()
    return flat - flat.mean(dim=0, keepdim=True)


def _ratio(numerator: Tensor, denominator: Tensor) -> float:
    if denominator <= 0:
        return float("nan")
    return float(numerator / denominator)
