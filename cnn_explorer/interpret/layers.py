"""Which layers of any CNN the views show, found from its module graph and one traced forward pass.

Not from one class's names: the same rules find a ConvNet's conv blocks, a torchvision ResNet's stem and
``layer1..layer4``, MobileNet's and EfficientNet's ``features.N`` and timm's ``blocks.N``. The rules:

1. The spine: descend from the model into the one child that holds every ``nn.Conv2d`` in blocks of its own
   (``features`` of a ConvNet, MobileNet or EfficientNet; a ResNet or timm net stays at its root), then open any
   ``nn.Sequential`` all of whose children holding a conv are themselves ``nn.Sequential`` (timm's
   ``blocks`` of stages). The spine's children, in forward order, are the candidates.
2. A dummy forward pass on an input of the data's size records each candidate's output. A candidate qualifies
   if it ran once, returned an ``[N, C, h, w]`` tensor, and nothing modified that tensor in place later (a
   torchvision ResNet's inner ReLU fails both; whole blocks and stages pass).
3. Blocks: each candidate holding a conv starts one. A block's output is its own, or, where the block is a
   bare ``nn.Conv2d`` (a stem of loose layers), that of the last layer before the next conv-holding one (a
   ResNet's stem conv1 -> bn1 -> relu -> maxpool: the maxpool). A ConvNet's block before its max-pool is the
   block itself. Layers after a block at its resolution (a head's BatchNorm) extend it. Global poolings and what
   follows them are not spatial.
4. Stages: a block holding several convs (a residual or inverted-residual block, a stage of them) that keeps
   the channels and resolution of such a block before it refines that block's stage and replaces it: one stage
   per change of shape, the last block of each run. A block of one conv is a layer of its own, kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.model_state import model_device, preserved_model_state

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def stages(model: nn.Module, image_shape: Sequence[int]) -> list[str]:
    """Dotted names of the layers whose outputs the views show (feature maps, CAMs, probes, CKA), in forward order.

    The names of :func:`stage_shapes`; see there.
    """
    return list(stage_shapes(model, image_shape))


def stage_shapes(model: nn.Module, image_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The layers whose outputs the views show, in forward order, each with its output shape ``(C, h, w)``.

    Args:
        model: any CNN mapping ``[N, C, H, W]`` images to logits; its modes, grads and hooks are left as found.
        image_shape: ``(C, H, W)`` of the data it sees; the stages depend on the resolution.

    Returns:
        e.g. keys ``features.conv1, features.conv2, features.conv3`` for a ConvNet,
        ``maxpool, layer1, layer2, layer3, layer4`` for a torchvision ResNet.

    Raises:
        ValueError: if the model has no ``nn.Conv2d`` or no layer qualifies (see the module docstring).
    """
    convs = {id(m) for m in model.modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer; name its layers explicitly")
    candidates = _spine(model, convs)
    outputs = _trace(model, [m for _, m in candidates], image_shape)

    blocks: list[tuple[str, int, tuple[int, ...]]] = []  # (name, convs inside, output shape (C, h, w))
    open_block: list[Any] | None = None  # [name, convs inside, shape, starts with a bare conv] being extended
    for name, module in candidates:
        if isinstance(module, _GLOBAL_POOLS):
            break
        shape = outputs.get(id(module))
        if shape is None:
            continue  # ran twice, is modified in place later (its output is the next one's), or is not spatial
        inside = sum(id(m) in convs for m in module.modules())
        moves_on = open_block is not None and (open_block[3] or shape[1:] == open_block[2][1:])
        if inside or not moves_on:
            if open_block is not None:
                blocks.append((open_block[0], open_block[1], open_block[2]))
            open_block = [name, inside, shape, isinstance(module, nn.Conv2d)] if inside else None
        else:
            open_block[0], open_block[2] = name, shape  # the block's output moves on to this layer's
    if open_block is not None:
        blocks.append((open_block[0], open_block[1], open_block[2]))
    if not blocks:
        raise ValueError(f"no layer of {type(model).__name__} outputs an [N, C, h, w] tensor once, unmodified")

    kept: list[tuple[str, int, tuple[int, ...]]] = []
    for block in blocks:
        if kept and block[1] > 1 and kept[-1][1] > 1 and block[2] == kept[-1][2]:
            kept[-1] = block  # refines the stage before: the stage's output is this block's
        else:
            kept.append(block)
    return {name: shape for name, _, shape in kept}


def _spine(model: nn.Module, convs: set[int]) -> list[tuple[str, nn.Module]]:
    """``(dotted name, module)`` of the spine's children (rule 1 of the module docstring)."""
    prefix, root = "", model
    while True:
        holders = [(n, c) for n, c in root.named_children() if any(id(m) in convs for m in c.modules())]
        total = sum(id(m) in convs for m in root.modules())
        if len(holders) == 1 and _opens(holders[0][1], convs, total):
            prefix, root = prefix + holders[0][0] + ".", holders[0][1]
        else:
            break
    spine: list[tuple[str, nn.Module]] = []
    for name, child in root.named_children():
        spine += _opened(prefix + name, child, convs)
    return spine


def _opens(holder: nn.Module, convs: set[int], total: int) -> bool:
    """Whether the spine goes on inside ``holder``: it holds all ``total`` convs in blocks of its own (a ConvBlock,
    whose child is the conv itself, is one block, not a spine)."""
    inside = sum(id(m) in convs for m in holder.modules())
    return inside == total and not any(isinstance(m, nn.Conv2d) for m in (holder, *holder.children()))


def _opened(name: str, module: nn.Module, convs: set[int]) -> list[tuple[str, nn.Module]]:
    """``module`` itself, or, for an ``nn.Sequential`` of stages (its conv-holding children all ``nn.Sequential``),
    its children opened the same way."""
    holders = [c for c in module.children() if any(id(m) in convs for m in c.modules())]
    if not (isinstance(module, nn.Sequential) and holders and all(isinstance(c, nn.Sequential) for c in holders)):
        return [(name, module)]
    opened: list[tuple[str, nn.Module]] = []
    for child_name, child in module.named_children():
        opened += _opened(f"{name}.{child_name}", child, convs)
    return opened


def _trace(model: nn.Module, modules: list[nn.Module], image_shape: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """``{id(module): (C, h, w)}`` for the modules that ran once and returned a 4-D tensor unmodified later."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape is (C, H, W), got {tuple(image_shape)}")
    seen: dict[int, list[tuple[Tensor, int]]] = {}

    def keep(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, Tensor):
            seen.setdefault(id(module), []).append((output, output._version))
        else:
            seen.setdefault(id(module), []).append((torch.empty(0), -1))

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        # Out of inference mode (validation hooks run in it): its tensors keep no version counter to check.
        with preserved_model_state(model), torch.inference_mode(False), torch.no_grad():
            model.eval()
            model(torch.zeros(1, *image_shape, device=model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {
        key: tuple(calls[0][0].shape[1:])
        for key, calls in seen.items()
        if len(calls) == 1 and calls[0][0].ndim == 4 and calls[0][0]._version == calls[0][1]
    }


def short_layer_name(name: str) -> str:
    """A label for a dotted layer name.

    ``features.conv1`` and ``features.conv1.conv`` -> ``conv1``; ``layer4`` -> ``layer4``; a numbered child keeps its
    parent so it stays readable and unique: ``features.3`` -> ``features.3``, ``blocks.5`` -> ``blocks.5``.
    """
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] == "conv":
        return parts[-2]
    if len(parts) > 1 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    return parts[-1]
