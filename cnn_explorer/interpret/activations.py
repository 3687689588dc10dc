"""What each layer outputs for a batch: capture by forward hooks, show as colour-mapped feature maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from cnn_explorer.interpret.image import apply_colormap, safe_max, to_unit_float
from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state


def layer_activations(model: nn.Module, images: Tensor, layer_names: Sequence[str]) -> dict[str, Tensor]:
    """Outputs of the named submodules for one forward pass in eval mode, without gradients.

    Args:
        model: the network; its train/eval modes, grads and hooks are left as they were.
        images: model input ``[N, C, H, W]`` float, already normalized; moved to the model's device.
        layer_names: dotted submodule names, e.g. ``["features.conv1", "features.conv2"]``
            (:func:`cnn_explorer.models.conv_block_names` lists a ConvNet's conv blocks).

    Returns:
        ``{name: output}``, each output detached, on CPU, shaped as the layer emits it
        (``[N, C_l, H_l, W_l]`` for a conv block).

    Raises:
        ValueError: on an unknown layer name; the message lists the available names.
        TypeError: if a named layer's output is not a tensor.
    """
    captured: dict[str, Tensor] = {}

    def keep(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a Tensor")
        # A copy, not a view: a later in-place op (ReLU(inplace=True)) would otherwise rewrite it.
        captured[name] = output.detach().to("cpu", copy=True)

    with preserved_model_state(model), forward_hooks(model, layer_names, keep), torch.no_grad():
        model.eval()
        model(images.to(model_device(model)))
    return captured


def feature_map_grid(images: Tensor, activations: Tensor, max_channels: int = 16) -> Tensor:
    """One row per image: the image, then its first ``max_channels`` feature maps in the viridis colormap.

    Maps are upsampled (nearest) to the image size, so each pixel block shows the receptive field
    position it came from. Each row is divided by that image's largest activation over the shown
    channels: within an image, weak and strong channels stay comparable; across images, each row uses
    its full colour range. Activations are assumed to be ReLU outputs (>= 0); negative values, from a
    layer before its ReLU, show as 0. An all-zero row shows as the colormap's lowest colour, not NaN.

    Args:
        images: the inputs ``[N, 3, H, W]``, uint8 or float in ``[0, 1]`` (not normalized).
        activations: ``[N, C, h, w]`` outputs of one layer for those images.
        max_channels: how many channels (the first ones) to show.

    Returns:
        float ``[3, H', W']`` in ``[0, 1]``: ``N`` rows of ``1 + min(C, max_channels)`` tiles of
        ``H x W`` pixels, 1 px white padding.

    Raises:
        ValueError: on mismatched batch sizes, non-RGB images, non-4-D activations, or ``max_channels < 1``.
    """
    rgb = to_unit_float(images)
    if activations.ndim != 4 or activations.shape[0] != rgb.shape[0]:
        raise ValueError(
            f"activations must be [N, C, h, w] with N = {rgb.shape[0]} images, got {tuple(activations.shape)}"
        )
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    n, _, height, width = rgb.shape
    maps = activations[:, :max_channels].detach().float().cpu().clamp_min(0)  # [N, c, h, w]
    maps = F.interpolate(maps, size=(height, width), mode="nearest")  # [N, c, H, W]
    maps = maps / safe_max(maps.flatten(1)).view(n, 1, 1, 1)
    colored = apply_colormap(maps, "viridis")  # [N, c, 3, H, W]
    tiles = torch.cat([rgb.unsqueeze(1), colored], dim=1)  # [N, 1 + c, 3, H, W]
    return make_grid(tiles.flatten(0, 1), nrow=tiles.shape[1], padding=1, pad_value=1.0)
