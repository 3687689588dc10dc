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

Oriented structure, the measure behind "the filters learn edge detectors": an edge or a grating puts its spatial
energy at frequencies along one direction, a blob or noise spreads it. Per filter, the 2-D DFT of each channel of
the zero-mean filter (kernels of 3x3 or more), ``|F|^2`` summed over channels, and the share of the non-DC energy
in the strongest of :data:`ORIENTATION_BANDS` orientation bands: the frequency ``(f_y, f_x)`` (``torch.fft.fftfreq``)
has the orientation ``atan2(f_y, f_x)`` in ``[0, 180)`` degrees, and the bands are 45 degrees wide, centred on
0 (changes along x: vertical edges), 45, 90 (changes along y: horizontal edges) and 135 degrees. A 3x3 kernel's 8
non-DC frequencies lie on exactly these four directions, two (a conjugate pair) per band. The share is 1 for a
pure edge or grating, 1/4 (its least) for energy spread evenly (the 8-neighbour Laplacian); for i.i.d. Gaussian
3x3 filters each band's energy is a Gamma(C_in) variate (one complex bin per channel), so the share is the
largest part of a Dirichlet(C_in, C_in, C_in, C_in) split: median about 0.39 for ``C_in = 3``, 0.50 for 1.

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
        orientation_share: ``[C_out]`` in ``[1 / bands, 1]``, the share of the non-DC spectral energy in the
            strongest orientation band (:func:`orientation_share`); NaN for kernels under 3x3 or no structure.
    """

    norm: Tensor
    achromatic_share: Tensor
    dc_share: Tensor
    orientation: Tensor
    coherence: Tensor
    orientation_share: Tensor

    def summary(self) -> dict[str, float]:
        """Medians over the filters (NaN-skipping): ``norm``, ``achromatic_share``, ``dc_share``, ``coherence``,
        ``orientation_share``."""
        return {
            "norm": median(self.norm),
            "achromatic_share": median(self.achromatic_share),
            "dc_share": median(self.dc_share),
            "coherence": median(self.coherence),
            "orientation_share": median(self.orientation_share),
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
        orientation_share=orientation_share(weight),
    )


ORIENTATION_BANDS = 4
"""Orientation bands of :func:`orientation_share`: 45 degrees each, the directions a 3x3 kernel can tell apart."""


def orientation_share(weight: Tensor, bands: int = ORIENTATION_BANDS) -> Tensor:
    """Per filter, the share of its non-DC spectral energy in the strongest orientation band (module docstring).

    Args:
        weight: conv weights ``[C_out, C_in, k_h, k_w]``.
        bands: orientation bands over ``[0, 180)`` degrees, each ``180 / bands`` wide, the first centred on 0.

    Returns:
        float32 ``[C_out]`` in ``[1 / bands, 1]``; NaN where the kernel is smaller than 3x3 (one row or column
        has no orientation to measure) or the filter is flat (no non-DC energy).

    Raises:
        ValueError: if ``weight`` is not 4-D or ``bands < 1``.
    """
    if weight.ndim != 4:
        raise ValueError(f"weight must be conv weights [C_out, C_in, k, k], got shape {tuple(weight.shape)}")
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    out, _, height, width = weight.shape
    if height < 3 or width < 3:
        return torch.full((out,), math.nan)
    w = weight.detach().cpu().double()
    structure = w - w.mean(dim=(2, 3), keepdim=True)  # the DC bin is 0 now
    energy = torch.fft.fft2(structure).abs().pow(2).sum(dim=1).flatten(1)  # [C_out, k_h * k_w]
    f_y = torch.fft.fftfreq(height, dtype=torch.float64)[:, None].expand(height, width)
    f_x = torch.fft.fftfreq(width, dtype=torch.float64)[None, :].expand(height, width)
    angle = torch.rad2deg(torch.atan2(f_y, f_x)).remainder(180.0)  # [k_h, k_w], the orientation of each bin
    width_deg = 180.0 / bands
    band = torch.floor((angle + width_deg / 2) / width_deg).long().remainder(bands).flatten()  # centred bands
    band[0] = bands  # the DC bin, in a band of its own that is dropped
    per_band = torch.zeros(out, bands + 1, dtype=torch.float64).index_add_(1, band, energy)[:, :bands]
    total = per_band.sum(dim=1)
    flat = total <= 1e-12 * w.pow(2).sum(dim=(1, 2, 3)).clamp_min(torch.finfo(torch.float64).tiny)
    share = per_band.max(dim=1).values / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(flat, math.nan, share).float()


@dataclass(frozen=True)
class OrientedStructureChange:
    """Whether training concentrated the filters' energy in one orientation: trained vs initial weights.

    Attributes:
        trained: median :func:`orientation_share` of the trained filters.
        initial: the same of the initial filters.
        difference: ``trained - initial``.
        low: lower end of the bootstrap interval of ``difference``.
        high: upper end.
        bands: the orientation bands of the measure.
    """

    trained: float
    initial: float
    difference: float
    low: float
    high: float
    bands: int

    @property
    def holds(self) -> bool:
        """More oriented than at initialization beyond the resampling noise: the interval lies above 0."""
        return self.low > 0


def oriented_structure_change(
    weight: Tensor,
    initial: Tensor,
    *,
    bands: int = ORIENTATION_BANDS,
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> OrientedStructureChange:
    """The median orientation share of the trained filters minus that of their initialization, with a paired
    percentile bootstrap interval over filters (Efron and Tibshirani 1993, chapter 13: resample filter indices with
    replacement, ``n`` times, the same indices for both; a CPU generator seeded with ``seed``).

    Args:
        weight: trained conv weights ``[C_out, C_in, k, k]`` (kernels of 3x3 or more).
        initial: the same layer at initialization, same shape.
        bands: see :func:`orientation_share`.
        n: bootstrap resamples.
        seed: seeds the resampling.
        confidence: of the interval, in ``(0, 1)``.

    Returns:
        :class:`OrientedStructureChange`; NaN numbers where no filter has a share (kernels under 3x3).

    Raises:
        ValueError: if the shapes differ or are not 4-D, ``n < 1`` or ``confidence`` is outside ``(0, 1)``.
    """
    if weight.ndim != 4 or weight.shape != initial.shape:
        raise ValueError(
            f"weight and initial must be conv weights of one shape, got {tuple(weight.shape)}, {tuple(initial.shape)}"
        )
    if n < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n >= 1 and confidence in (0, 1), got n={n}, confidence={confidence}")
    trained, start = orientation_share(weight, bands).double(), orientation_share(initial, bands).double()
    kept = ~(trained.isnan() | start.isnan())  # both measured: a flat filter has no orientation
    trained, start = trained[kept], start[kept]
    if trained.numel() == 0:
        return OrientedStructureChange(math.nan, math.nan, math.nan, math.nan, math.nan, bands)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    index = torch.randint(len(trained), (n, len(trained)), generator=generator)  # [n, filters], paired
    resampled = _row_medians(trained[index]) - _row_medians(start[index])  # [n]
    tail = (1 - confidence) / 2
    low, high = torch.quantile(resampled, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    first, second = median(trained), median(start)
    return OrientedStructureChange(first, second, first - second, low, high, bands)


def _row_medians(values: Tensor) -> Tensor:
    """The usual median of each row of ``[R, M]`` (the mean of the two middle values for an even ``M``)."""
    ordered = values.sort(dim=1).values
    count = values.shape[1]
    return (ordered[:, (count - 1) // 2] + ordered[:, count // 2]) / 2


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
