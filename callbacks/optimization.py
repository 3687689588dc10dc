"""How the optimizer moves the net: the learning rate and each layer's gradient norm, as scalars."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from callbacks.base import View, lightning_net
from cnn_explorer.models import short_layer_name


class OptimizationView(View):
    """Logs ``optimization/lr`` (the first parameter group's learning rate; ``optimization/lr_<i>`` for the others)
    and ``gradients/<layer>``: the L2 norm of each layer's parameter gradients (weights and bias together) from the
    epoch's last training batch, so vanishing or exploding gradients show layer by layer.

    The gradients are read just before the optimizer step of the epoch's last batch (Lightning clears them after
    it): one pass over the parameters, next to nothing.

    Args:
        every_n_epochs: cadence in epochs.

    Example::

        Trainer(callbacks=[OptimizationView()], logger=TensorBoardLogger("runs"))
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self._norms: dict[str, float] = {}  # the epoch's last batch's, per layer

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.is_last_batch and self.due(trainer):
            self._norms = gradient_norms(lightning_net(pl_module))

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values: dict[str, float] = {}
        for optimizer in trainer.optimizers[:1]:
            for i, group in enumerate(optimizer.param_groups):
                values["optimization/lr" + (f"_{i}" if i else "")] = float(group["lr"])
        values.update({f"gradients/{layer}": norm for layer, norm in self._norms.items()})
        self.log_scalars(trainer, values)


def gradient_norms(net: nn.Module) -> dict[str, float]:
    """Per module that holds parameters with gradients, the L2 norm of all of them together (``sqrt`` of the sum
    of their squared entries); conv blocks by their short name (``features.conv1.conv`` -> ``conv1``)."""
    squares: dict[str, float] = {}
    for name, parameter in net.named_parameters():
        if parameter.grad is None:
            continue
        module = name.rpartition(".")[0]
        label = short_layer_name(module) if module.endswith(".conv") else module
        squares[label] = squares.get(label, 0.0) + float(parameter.grad.detach().float().pow(2).sum())
    return {label: math.sqrt(total) for label, total in squares.items()}
