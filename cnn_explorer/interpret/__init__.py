"""Interpretability methods: pure torch functions, tensors in, tensors out (no drawing: see cnn_explorer.render).

Each one leaves the model's train/eval modes, ``requires_grad`` flags, ``.grad`` tensors and hooks as
it found them (see :mod:`cnn_explorer.interpret.model_state`), so callbacks can call them mid-training.
Attribution methods live in :mod:`cnn_explorer.interpret.attribution`, with their registry.
"""

from __future__ import annotations

from cnn_explorer.interpret.activations import layer_activations
from cnn_explorer.interpret.confusion import confusion_matrix, most_confused_pairs, per_class_accuracy, row_normalize
from cnn_explorer.interpret.mistakes import Mistakes, RunningMistakes, confident_mistakes
from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state

__all__ = [
    "Mistakes",
    "RunningMistakes",
    "confident_mistakes",
    "confusion_matrix",
    "forward_hooks",
    "layer_activations",
    "model_device",
    "most_confused_pairs",
    "per_class_accuracy",
    "preserved_model_state",
    "row_normalize",
]
