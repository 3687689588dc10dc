"""The warmup-cosine schedule: hand-derived factors, torch's cosine without warmup, and the config that uses it."""

from __future__ import annotations

import pytest
import torch

from cnn_explorer.schedules import warmup_cosine


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    lrs = []
    for _ in range(epochs):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_two_warmup_epochs_then_cosine_over_the_other_three() -> None:
    # warmup 1/2, 2/2; then 0.5 (1 + cos(pi k / 3)) for k = 0, 1, 2: 1, 3/4, 1/4.
    expected = [0.05, 0.1, 0.1, 0.075, 0.025]
    assert _lrs(warmup_cosine(_optimizer(0.1), T_max=5, warmup=2), 5) == pytest.approx(expected)


def test_without_warmup_it_is_torchs_cosine_annealing() -> None:
    ours = _lrs(warmup_cosine(_optimizer(), T_max=7), 7)
    torchs = _lrs(torch.optim.lr_scheduler.CosineAnnealingLR(_optimizer(), T_max=7), 7)
    assert ours == pytest.approx(torchs)


@pytest.mark.parametrize("T_max, warmup", [(0, 0), (5, 5), (5, -1)])
def test_a_warmup_that_leaves_no_epoch_to_anneal_is_refused(T_max: int, warmup: int) -> None:  # noqa: N803
    with pytest.raises(ValueError, match="T_max|warmup"):
        warmup_cosine(_optimizer(), T_max=T_max, warmup=warmup)
