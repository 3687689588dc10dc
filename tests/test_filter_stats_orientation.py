"""Oriented structure of first-layer filters (issue 18, item 9): the measure behind "filters learn edge detectors",
checked on filters whose spectrum is known by hand, on i.i.d. noise against its distribution, and the verdict's
interval on a hand-built before/after pair."""

from __future__ import annotations

import math

import pytest
import torch

from cnn_explorer.interpret.features.filter_stats import (
    filter_statistics,
    orientation_share,
    oriented_structure_change,
)
from cnn_explorer.report.sections.filters import edge_detector_numbers, edge_detector_text

HORIZONTAL_EDGE = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
LAPLACIAN_4 = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
CENTRE_SURROUND = torch.tensor([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])  # the 8-neighbour Laplacian


def one(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.view(1, 1, *kernel.shape)


def test_an_edge_puts_all_its_energy_in_one_band() -> None:
    # The horizontal edge is constant along x: its DFT is 0 wherever f_x != 0, so all its energy sits at
    # (f_y, f_x) = (+-1/3, 0), orientation atan2(+-1/3, 0) = 90 degrees: one band, share 1. Its transpose: 0 degrees.
    assert orientation_share(one(HORIZONTAL_EDGE)).tolist() == pytest.approx([1.0])
    assert orientation_share(one(HORIZONTAL_EDGE.T)).tolist() == pytest.approx([1.0])
    # The same edge in every colour channel, or scaled, or with a DC offset added: the same share.
    assert orientation_share((3 * HORIZONTAL_EDGE + 5).expand(1, 3, 3, 3)).tolist() == pytest.approx([1.0])


def test_an_isotropic_filter_spreads_its_energy() -> None:
    # 8-neighbour Laplacian = ones - 9 delta: its DFT at every non-DC bin is -9, energy 81 at each of the 8 bins,
    # two per band: share 2 * 81 / (8 * 81) = 1/4, the least any filter can have with 4 bands.
    assert orientation_share(one(CENTRE_SURROUND)).tolist() == pytest.approx([0.25])
    # 4-neighbour Laplacian: F = -4 + 2 cos(2 pi u / 3) + 2 cos(2 pi v / 3); with cos(2 pi / 3) = -1/2, the axis bins
    # hold -3 (energy 9, bands 0 and 90: 18 each) and the diagonal bins -6 (energy 36, bands 45 and 135: 72 each).
    # Share 72 / 180 = 0.4: on a 3x3 grid it is not quite isotropic, but far from an edge's 1.
    assert orientation_share(one(LAPLACIAN_4)).tolist() == pytest.approx([0.4])


def test_flat_and_small_kernels_have_no_share() -> None:
    assert orientation_share(one(torch.ones(3, 3))).isnan().all()  # DC only
    assert orientation_share(torch.randn(4, 3, 1, 1)).isnan().all()  # 1x1: no orientation
    assert orientation_share(torch.randn(4, 3, 2, 2)).isnan().all()  # under 3x3
    with pytest.raises(ValueError, match="conv weights"):
        orientation_share(HORIZONTAL_EDGE)


def test_iid_noise_matches_its_dirichlet_distribution() -> None:
    # i.i.d. Gaussian 3x3 filters: each band holds one independent complex bin per channel (the other bin is its
    # conjugate), whose energy is exponential; summed over C_in channels, the 4 band energies are i.i.d.
    # Gamma(C_in), and the share is the largest part of a Dirichlet(C_in, ..., C_in) split. Its median, drawn
    # directly: about 0.39 for C_in = 3 and 0.50 for C_in = 1 (the module docstring's numbers).
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(1)  # torch.distributions draws from the global generator
    for channels, stated in ((3, 0.39), (1, 0.50)):
        shares = orientation_share(torch.randn(20_000, channels, 3, 3, generator=generator))
        dirichlet = torch.distributions.Dirichlet(torch.full((4,), float(channels))).sample((200_000,))
        expected = float(dirichlet.max(dim=1).values.median())
        assert float(shares.median()) == pytest.approx(expected, abs=0.01)
        assert expected == pytest.approx(stated, abs=0.01)


def test_filter_statistics_summary_has_the_orientation_share() -> None:
    stats = filter_statistics(torch.stack([HORIZONTAL_EDGE.expand(3, 3, 3), CENTRE_SURROUND.expand(3, 3, 3)]))
    assert stats.orientation_share.tolist() == pytest.approx([1.0, 0.25])
    assert stats.summary()["orientation_share"] == pytest.approx(0.625)  # the usual median of two values


def test_the_verdict_needs_the_trained_median_above_the_initial_one_beyond_its_interval() -> None:
    initial = torch.randn(32, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    # Every filter made an edge: median share 1 against noise's ~0.4, an interval far above 0.
    edges = HORIZONTAL_EDGE.expand(32, 3, 3, 3)
    change = oriented_structure_change(edges, initial)
    assert change.trained == pytest.approx(1.0) and change.low > 0.4 and change.holds
    # Unchanged: the difference is exactly 0 in every resample, so the interval [0, 0] does not lie above 0.
    same = oriented_structure_change(initial, initial)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0) and not same.holds
    # Scaled (weight decay): the share is scale-free, so no change either.
    assert not oriented_structure_change(0.5 * initial, initial).holds
    # Only 2 of 32 filters become edges: the median barely moves, and the verdict is no.
    few = initial.clone()
    few[:2] = HORIZONTAL_EDGE
    assert not oriented_structure_change(few, initial).holds


def test_the_report_states_the_bands_and_what_makes_it_no() -> None:
    initial = torch.randn(16, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    numbers = edge_detector_numbers(HORIZONTAL_EDGE.expand(16, 3, 3, 3), {"conv1.weight": initial}, "conv1.weight")
    assert numbers is not None and numbers["holds"] and numbers["bands"] == 4
    text = edge_detector_text(numbers)
    assert '"Filters learn edge detectors": **yes**' in text
    assert "4 orientation bands (45 degrees wide, centred on 0, 45, 90, 135 degrees)" in text
    assert "it is no when the trained median is not above the initial one by more than its bootstrap interval" in text
    assert "**no**" in edge_detector_text(numbers | {"holds": False})
    assert edge_detector_numbers(initial, None, "conv1.weight") is None
    assert "not judged" in edge_detector_text(None)
    assert math.isnan(oriented_structure_change(torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1)).trained)
