"""Interpretability methods: pure torch functions, tensors in, tensors out.

Each one leaves the model's train/eval modes, ``requires_grad`` flags, ``.grad`` tensors and hooks as
it found them (see :mod:`cnn_explorer.interpret.model_state`), so callbacks can call them mid-training.
Grids come back as float ``[3, H, W]`` in ``[0, 1]``, ready for TensorBoard's ``add_image``.
"""

from __future__ import annotations

from cnn_explorer.interpret.activations import feature_map_grid, layer_activations
from cnn_explorer.interpret.confusion import confusion_matrix, most_confused_pairs, per_class_accuracy, row_normalize
from cnn_explorer.interpret.filters import filter_grid, normalize_per_filter
from cnn_explorer.interpret.mistakes import Mistakes, confident_mistakes
from cnn_explorer.interpret.model_state import forward_hooks, preserved_model_state
from cnn_explorer.interpret.saliency import saliency, saliency_grid

__all__ = [
    "Mistakes",
    "confident_mistakes",
    "confusion_matrix",
    "feature_map_grid",
    "filter_grid",
    "forward_hooks",
    "layer_activations",
    "most_confused_pairs",
    "normalize_per_filter",
    "per_class_accuracy",
    "preserved_model_state",
    "row_normalize",
    "saliency",
    "saliency_grid",
]
