"""The penultimate layer's embedding of images: the features the classifier's last linear layer separates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state


def last_linear(model: nn.Module) -> str:
    """Dotted name of the last ``nn.Linear`` of ``model`` (the classifier's output layer).

    Raises:
        ValueError: if the model has none.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take the penultimate features from")
    return names[-1]


def penultimate_embeddings(model: nn.Module, batches: Iterable[tuple[Tensor, ...]]) -> Tensor:
    """What the last linear layer receives, for every image of ``batches``: the space the classes are separated in
    (TensorBoard's projector shows it).

    Args:
        model: the network; run in eval mode without gradients, left as it was found.
        batches: tuples whose first element is a normalized image batch ``[B, C, H, W]``.

    Returns:
        float32 CPU ``[N, D]``, ``D`` the last linear layer's input width, in batch order.
    """
    name = last_linear(model)
    captured: list[Tensor] = []

    def keep(_: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        captured.append(inputs[0].detach().flatten(1).float().cpu())

    with preserved_model_state(model), forward_hooks(model, [name], keep), torch.no_grad():
        model.eval()
        device = model_device(model)
        for batch in batches:
            model(batch[0].to(device))
    return torch.cat(captured)
