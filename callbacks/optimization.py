"""How the optimizer moves the net: the learning rate and each layer's gradient norm, as scalars."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn

from callbacks.base import View, lightning_net
from cnn_explorer.interpret.layers import short_layer_name, stages


class OptimizationView(View):
    """Logs ``optimization/lr`` (the first parameter group's learning rate; ``optimization/lr_<i>`` for the others)
    and ``gradients/<stage>``: the L2 norm of each stage's parameter gradients (weights, biases and norms together;
    a ResNet's ``layer1`` is one stage, see :func:`cnn_explorer.interpret.layers.stages`; parameters outside the
    stages by their module) from the epoch's last training batch, so vanishing or exploding gradients show stage
    by stage.

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
            net, dm = lightning_net(pl_module), trainer.datamodule
            self._norms = gradient_norms(net, stages(net, (dm.channels, dm.image_size, dm.image_size)))

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values: dict[str, float] = {}
        for optimizer in trainer.optimizers[:1]:
            for i, group in enumerate(optimizer.param_groups):
                values["optimization/lr" + (f"_{i}" if i else "")] = float(group["lr"])
        values.update({f"gradients/{layer}": norm for layer, norm in self._norms.items()})
        self.log_scalars(trainer, values)


def gradient_norms(net: nn.Module, stage_names: Sequence[str] = ()) -> dict[str, float]:
    """The L2 norm (``sqrt`` of the sum of squared entries) of the gradients of the parameters in each of
    ``stage_names`` together, labelled by the stage's short name (``features.conv1`` -> ``conv1``, ``layer1``);
    a parameter outside every stage by its module's dotted name (``classifier.fc1``, ``fc``)."""
    squares: dict[str, float] = {}
    for name, parameter in net.named_parameters():
        if parameter.grad is None:
            continue
        module = name.rpartition(".")[0]
        stage = next((s for s in stage_names if module == s or module.startswith(s + ".")), None)
        label = short_layer_name(stage) if stage is not None else module
        squares[label] = squares.get(label, 0.0) + float(parameter.grad.detach().float().pow(2).sum())
    return {label: math.sqrt(total) for label, total in squares.items()}
