"""The model-state contract every interpretability method keeps, as test helpers: a model with state
that a careless method would disturb, a snapshot of that state, and the assertion that it is intact."""

from __future__ import annotations

import torch
from torch import nn

from cnn_explorer.models import ConvNet

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def small_convnet() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet([4, "M", 6, "M"], hidden=8, num_classes=5, batch_norm=True, dropout=0.5, image_size=8)


def disturbable_model() -> ConvNet:
    """Train mode with one BatchNorm frozen, one frozen parameter, and a .grad on another: all must survive."""
    model = small_convnet()
    model.train()
    model.features.conv2.bn.eval()
    model.features.conv1.conv.weight.requires_grad_(False)
    model.classifier.fc2.weight.grad = torch.full_like(model.classifier.fc2.weight, 7.0)
    return model


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad_ids": {name: None if p.grad is None else id(p.grad) for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
    }


def assert_intact(model: nn.Module, before: dict[str, object]) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad_ids"] == before["grad_ids"]
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(after["grads"][name], grad), name
    for name, param in before["params"].items():
        assert torch.equal(after["params"][name], param), name
    # BatchNorm running statistics only move in train mode: unchanged buffers mean the work ran in eval mode.
    for name, buffer in before["buffers"].items():
        assert torch.equal(after["buffers"][name], buffer), name
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr), f"{attr} left on {name or 'model'}"
