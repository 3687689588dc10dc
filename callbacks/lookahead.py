"""Lookahead as airbench uses it: every few steps the net's weights are averaged into slow weights and reset to them;
at the end of training the net keeps the slow weights."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from callbacks.base import lightning_net
from cnn_explorer.airbench import floating_state, lookahead_step
from cnn_explorer.errors import BadArgument, UserError, check_positive


class Lookahead(L.Callback):
    """Every ``every`` optimizer steps: ``slow = d * slow + (1 - d) * fast``, then ``fast = slow``, with
    ``d = decay ** every * (step / total) ** power`` (:func:`~cnn_explorer.airbench.lookahead_decay`); after the last
    step, ``fast = slow``. ``slow`` covers every floating-point entry of the net's state dict, BatchNorm statistics
    included. Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back", with airbench's growing decay
    (Jordan 2024, arXiv:2404.00498).

    The slow weights are in every checkpoint (:meth:`state_dict`), so a resumed run averages exactly as an
    uninterrupted one. ``total`` is the trainer's ``estimated_stepping_batches`` (``max_epochs`` times the batches
    trained per epoch).

    Args:
        every: optimizer steps between two updates (airbench: 5).
        decay: per-step decay of the average (airbench: 0.95).
        power: how late the decay grows (airbench: 3).

    Raises:
        BadArgument: on a non-positive ``every`` or ``power``, or a ``decay`` outside [0, 1].
        UserError: when training starts without a finite number of steps (``max_epochs=-1`` and no ``max_steps``).

    Example::

        Trainer(callbacks=[Lookahead(every=5, decay=0.95)], max_epochs=10)
    """

    def __init__(self, every: int = 5, decay: float = 0.95, power: float = 3.0) -> None:
        check_positive(every=every)
        if not 0.0 <= decay <= 1.0:
            raise BadArgument(f"callbacks.lookahead.decay must be in [0, 1], got {decay}")
        if power <= 0:
            raise BadArgument(f"callbacks.lookahead.power must be positive, got {power}")
        self.every, self.decay, self.power = every, decay, power
        self.slow: dict[str, torch.Tensor] | None = None  # set from the net as training starts, or restored
        self.total = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise UserError("callbacks.lookahead needs a training length: set trainer.max_epochs or trainer.max_steps")
        self.total = int(total)
        net = lightning_net(pl_module)
        if self.slow is None:
            self.slow = floating_state(net)
        else:  # restored from a checkpoint, on the CPU
            state = net.state_dict()
            self.slow = {k: v.to(state[k].device, state[k].dtype) for k, v in self.slow.items()}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step: the optimizer steps done, this batch's included.
        net = lightning_net(pl_module)
        lookahead_step(self.slow, net, trainer.global_step, self.total, self.every, self.decay, self.power)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow} if self.slow is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "slow" in state_dict:
            self.slow = dict(state_dict["slow"])
