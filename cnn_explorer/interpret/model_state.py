"""The one place that saves and restores what an interpretability method may disturb on a model.

Every method in :mod:`cnn_explorer.interpret` runs inside :func:`preserved_model_state` and registers
hooks only through :func:`forward_hooks`, so a callback can call them mid-training and get the model
back exactly as it handed it over: same train/eval mode per submodule, same ``requires_grad`` flags,
same ``.grad`` tensors and values, no hooks left behind, whether the method returns or raises.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

HookFn = Callable[[str, nn.Module, tuple[Any, ...], Any], None]
"""``fn(layer_name, module, inputs, output)``, called after each hooked module's forward."""


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's ``training`` flag and every parameter's ``requires_grad`` and ``.grad`` on exit.

    The body may call ``model.eval()``, toggle ``requires_grad`` or even run a backward pass; on exit,
    normal or by exception, the model is as it was on entry.

    Args:
        model: the model to protect.

    Yields:
        ``model`` itself, for ``with preserved_model_state(net) as net:``.

    Example::

        with preserved_model_state(model):
            model.eval()
            logits = model(x)
    """
    # Per module, not model.training alone: a caller may have frozen BatchNorm (bn.eval()) inside a
    # model in train mode, and a blanket model.train() on exit would silently unfreeze it.
    modes = [(module, module.training) for module in model.modules()]
    # Keep the .grad object itself (others may hold a reference to it) and a copy of its values
    # (a backward pass in the body would accumulate into that same object in place).
    saved = [
        (p, p.requires_grad, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()
    ]
    try:
        yield model
    finally:
        for module, training in modes:
            # Set the flag directly: Module.train() recurses and would overwrite the children's own flags.
            module.training = training
        with torch.no_grad():
            for p, requires_grad, grad, values in saved:
                p.requires_grad_(requires_grad)
                p.grad = grad
                if grad is not None and values is not None:
                    grad.copy_(values)


@contextmanager
def forward_hooks(model: nn.Module, layer_names: Sequence[str], fn: HookFn) -> Iterator[None]:
    """Call ``fn(name, module, inputs, output)`` after the forward of each named submodule; remove the hooks on exit.

    Names are dotted paths from ``model.named_modules()`` (``"features.conv1"``). All names are checked
    before any hook is registered, and the hooks are removed on exit even if the body raises.

    Args:
        model: the model whose submodules get hooked.
        layer_names: dotted submodule names, e.g. from :func:`cnn_explorer.interpret.layers.stages`.
        fn: called with the layer name, the module, its positional inputs and its output.

    Raises:
        ValueError: if a name is not a submodule of ``model``; the message lists the available names.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in layer_names if name not in modules]
    if unknown:
        available = [name for name in modules if name]
        raise ValueError(f"unknown layer name(s) {unknown}; available layers of {type(model).__name__}: {available}")
    handles = []
    try:
        for name in layer_names:
            handles.append(modules[name].register_forward_hook(_bind(fn, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _bind(fn: HookFn, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
    # A closure per name, not a lambda in the loop: a loop lambda would see only the last name.
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        fn(name, module, inputs, output)

    return hook


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; CPU for a model with neither."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device
