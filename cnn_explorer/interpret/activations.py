"""What each layer outputs for a batch, captured by forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state


def layer_activations(model: nn.Module, images: Tensor, layer_names: Sequence[str]) -> dict[str, Tensor]:
    """Outputs of the named submodules for one forward pass in eval mode, without gradients.

    Args:
        model: the network; its train/eval modes, grads and hooks are left as they were.
        images: model input ``[N, C, H, W]`` float, already normalized; moved to the model's device.
        layer_names: dotted submodule names, e.g. ``["features.conv1", "features.conv2"]``
            (:func:`cnn_explorer.interpret.layers.stages` lists those the views show).

    Returns:
        ``{name: output}``, each output detached, on CPU, shaped as the layer emits it
        (``[N, C_l, H_l, W_l]`` for a conv block).

    Raises:
        ValueError: on an unknown layer name (the message lists the available names), or a layer that runs more
            than once per forward pass.
        TypeError: if a named layer's output is not a tensor.
    """
    captured: dict[str, Tensor] = {}

    def keep(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if name in captured:
            # A module called twice (a torchvision ResNet block's one ReLU): which call is "the layer" is ambiguous.
            raise ValueError(
                f"layer {name!r} ran more than once in one forward pass; name a layer that runs once, such as a "
                "whole block or stage (cnn_explorer.interpret.layers.stages lists them)"
            )
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a Tensor")
        # A copy, not a view: a later in-place op (ReLU(inplace=True)) would otherwise rewrite it.
        captured[name] = output.detach().to("cpu", copy=True)

    with preserved_model_state(model), forward_hooks(model, layer_names, keep), torch.no_grad():
        model.eval()
        model(images.to(model_device(model)))
    return captured
