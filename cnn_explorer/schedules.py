"""Learning-rate schedules of the model options that torch does not have as one class."""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(epoch: int, T_max: int, warmup: int) -> float:  # noqa: N803 (torch's name for it)
    """The learning-rate multiplier of epoch ``epoch`` (0-based): linear warmup over the first ``warmup`` epochs
    (``1/warmup, 2/warmup, ..., 1``; Goyal et al. 2017, "Accurate, Large Minibatch SGD"), then cosine annealing
    from 1 towards 0 over the remaining ``T_max - warmup`` epochs (Loshchilov & Hutter 2017, "SGDR"), as torch's
    ``CosineAnnealingLR`` with ``eta_min=0`` does; 0 from ``T_max`` on."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - warmup) / (T_max - warmup))))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    T_max: int,  # noqa: N803 (the key of CosineAnnealingLR, so a config swaps one for the other and keeps it)
    warmup: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine_factor` as a schedule stepped once per epoch, as this framework steps every schedule.
    With ``warmup=0`` it is torch's ``CosineAnnealingLR(optimizer, T_max)``.

    Raises:
        ValueError: if ``T_max`` is not positive or ``warmup`` is not in [0, T_max).
    """
    if T_max < 1:
        raise ValueError(f"T_max must be a positive number of epochs, got {T_max}")
    if not 0 <= warmup < T_max:
        raise ValueError(f"warmup must be a number of epochs in [0, T_max={T_max}), got {warmup}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: warmup_cosine_factor(epoch, T_max, warmup))
