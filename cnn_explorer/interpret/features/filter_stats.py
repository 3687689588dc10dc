"""First-layer filters in numbers: colour vs luminance, flat vs structured, orientation, and drift from init.

Each filter ``w [C_in, k, k]`` is split into orthogonal parts, so that their energies (squared Frobenius
norms) add up to ``||w||^2`` and their shares to 1:

* achromatic ``a = mean_c w`` broadcast over the ``C_in`` channels, and colour-opponent ``w - a`` (sums to
  zero over channels at every pixel). Krizhevsky, Sutskever, Hinton (2012), "ImageNet Classification with
  Deep Convolutional Neural Networks", section 6.1 (Fig. 3), describe first-layer kernels as
  colour-agnostic or colour-specific; this is a number for that split.
* DC ``d = mean_{x,y} w[c]`` per channel (how the filter responds to flat colour fields) and the spatial
  structure ``w - d`` (sums to zero over positions in every channel: edges, bars, blobs).

The structure's dominant orientation comes from its structure tensor (gradients from ``torch.gradient``,
summed over channels and positions), ``theta = atan2(2 J_xy, J_xx - J_yy) / 2``: the direction along
which the filter's values change most, with ``coherence = (l1 - l2) / (l1 + l2)`` saying how strongly one
direction dominates (1: a perfect edge or grating, 0: no preferred direction). Averaging the gradient
itself would cancel on symmetric patterns (a bar has opposite gradients on its two sides); the structure
tensor works with doubled angles and does not.

Run the same functions on the initial weights for the baseline: at initialization, i.i.d. weights with
``C_in = 3`` and ``k = 3`` put about ``1/3`` of a filter's energy achromatic and ``1/9`` in DC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cnn_explorer.interpret.features.layer_stats import median


@dataclass(frozen=True)
class FilterStats:
    """Per-filter shape numbers of a conv layer with ``C_out`` filters.

    Attributes:
        norm: ``[C_out]`` Frobenius norm of each filter.
        achromatic_share: ``[C_out]`` share of the energy in the channel-mean (grey) part; NaN for
            ``C_in = 1`` (colour undefined) and for an all-zero filter.
        dc_share: ``[C_out]`` share of the energy in the per-channel spatial means; NaN for an all-zero filter.
        orientation: ``[C_out]`` degrees in ``[0, 180)`` of the direction along which the structure changes
            most: 0 = along x (columns, responds to vertical edges), 90 = along y (rows, downward; responds to
            horizontal edges); NaN where the filter has no structure.
        coherence: ``[C_out]`` in ``[0, 1]``, how dominant that orientation is; NaN where no structure.
    """

    norm: Tensor
    achromatic_share: Tensor
    dc_share: Tensor
    orientation: Tensor
    coherence: Tensor

    def summary(self) -> dict[str, float]:
        """Medians over the filters (NaN-skipping): ``norm``, ``achromatic_share``, ``dc_share``, ``coherence``."""
        return {
            "norm": median(self.norm),
            "achromatic_share": median(self.achromatic_share),
            "dc_share": median(self.dc_share),
            "coherence": median(self.coherence),
        }


@dataclass(frozen=True)
class FilterDrift:
    """How far each filter moved from its initialization.

    Attributes:
        relative_change: ``[C_out]`` ``||W - W0|| / ||W0||`` (inf where ``W0`` is zero, NaN if ``W`` is too).
        norm_ratio: ``[C_out]`` ``||W|| / ||W0||``: above 1 the filter grew, below 1 it shrank (weight decay).
    """

    relative_change: Tensor
    norm_ratio: Tensor

    def summary(self) -> dict[str, float]:
        """Medians over the filters: ``relative_change``, ``norm_ratio``."""
        return {"relative_change": median(self.relative_change), "norm_ratio": median(self.norm_ratio)}


def filter_statistics(weight: Tensor) -> FilterStats:
    """Colour, DC and orientation numbers of each filter of a conv layer (see the module docstring).

    Args:
        weight: conv weights ``[C_out, C_in, k_h, k_w]``, e.g. ``first_conv(model)[1].weight`` or its
            initial value.

    Returns:
        :class:`FilterStats`, float32 per-filter vectors.

    Raises:
        ValueError: if ``weight`` is not 4-D.
    """
    if weight.ndim != 4:
        raise ValueError(f"weight must be conv weights [C_out, C_in, k, k], got shape {tuple(weight.shape)}")
    w = weight.detach().cpu().double()
    energy = w.pow(2).sum(dim=(1, 2, 3))  # [C_out]
    nothing = energy == 0
    grey = w.mean(dim=1, keepdim=True).expand_as(w)  # [C_out, C_in, k, k]
    if w.shape[1] == 1:
        achromatic = torch.full_like(energy, float("nan"))
    else:
        achromatic = _share(grey.pow(2).sum(dim=(1, 2, 3)), energy, nothing)
    flat = w.mean(dim=(2, 3), keepdim=True).expand_as(w)
    dc = _share(flat.pow(2).sum(dim=(1, 2, 3)), energy, nothing)
    structure = w - flat
    if w.shape[2] > 1 and w.shape[3] > 1:
        grad_y, grad_x = torch.gradient(structure, dim=(2, 3))
    else:
        grad_y = grad_x = torch.zeros_like(structure)
    j_xx = grad_x.pow(2).sum(dim=(1, 2, 3))
    j_yy = grad_y.pow(2).sum(dim=(1, 2, 3))
    j_xy = (grad_x * grad_y).sum(dim=(1, 2, 3))
    trace = j_xx + j_yy
    # Eigenvalue gap of the 2x2 structure tensor [[j_xx, j_xy], [j_xy, j_yy]].
    gap = ((j_xx - j_yy).pow(2) + 4 * j_xy.pow(2)).sqrt()
    flatland = trace <= 1e-12 * energy.clamp_min(torch.finfo(torch.float64).tiny)
    angle = torch.rad2deg(0.5 * torch.atan2(2 * j_xy, j_xx - j_yy)).remainder(180.0)
    orientation = torch.where(flatland, math.nan, angle)
    coherence = torch.where(flatland, math.nan, gap / trace.clamp_min(torch.finfo(torch.float64).tiny))
    return FilterStats(
        norm=energy.sqrt().float(),
        achromatic_share=achromatic.float(),
        dc_share=dc.float(),
        orientation=orientation.float(),
        coherence=coherence.float(),
    )


def filter_drift(weight: Tensor, initial: Tensor) -> FilterDrift:
    """How far each filter moved from its initial value, relative to the initial norm.

    Args:
        weight: current conv weights ``[C_out, C_in, k, k]``.
        initial: the same layer's weights at initialization, same shape.

    Returns:
        :class:`FilterDrift`, float32 per-filter vectors.

    Raises:
        ValueError: if the shapes differ or are not 4-D.
    """
    if weight.ndim != 4 or weight.shape != initial.shape:
        raise ValueError(
            f"weight and initial must be conv weights of one shape, got {tuple(weight.shape)}, {tuple(initial.shape)}"
        )
    w, w0 = weight.detach().cpu().double(), initial.detach().cpu().double()
    start = w0.flatten(1).norm(dim=1)
    return FilterDrift(
        relative_change=((w - w0).flatten(1).norm(dim=1) / start).float(),
        norm_ratio=(w.flatten(1).norm(dim=1) / start).float(),
    )


def _share(part: Tensor, energy: Tensor, nothing: Tensor) -> Tensor:
    return torch.where(nothing, math.nan, part / energy.clamp_min(torch.finfo(torch.float64).tiny))
