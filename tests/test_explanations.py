"""Every registered attribution method scored the one way the report and the callback use: faithfulness against
a random order, the randomization check, completeness where a method claims it, cost; and their options."""

from __future__ import annotations

import pytest
import torch

from cnn_explorer.interpret.attribution import METHODS, check_methods, method_options
from cnn_explorer.interpret.attribution.scores import score_methods
from cnn_explorer.interpret.features import analyze_layers
from cnn_explorer.interpret.layers import stages
from cnn_explorer.models import ConvNet
from tests.model_checks import assert_intact, disturbable_model, snapshot


def tiny_data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.arange(n) % 5


def test_score_methods_scores_every_method_on_the_same_images_and_leaves_the_model_intact():
    model = disturbable_model()
    before = snapshot(model)
    images, targets = tiny_data()
    options = {
        name: method_options(name, None, {"smoothgrad": {"samples": 4}, "integrated_gradients": {"steps": 8}})
        for name in METHODS
    }
    scores, chance = score_methods(model, images, targets, images[:5], targets[:5], list(METHODS), options, steps=4)
    assert list(scores) == list(METHODS)
    assert chance.deletion.shape == chance.insertion.shape == (12, 5)
    for name, s in scores.items():
        assert s.curves.deletion.shape == (12, 5) and s.seconds_per_image > 0, name
        assert ((s.curves.deletion_auc >= 0) & (s.curves.deletion_auc <= 1)).all(), name
        assert s.randomization.spearman.shape[1] == 5, name  # one correlation per sanity image and step
        assert (s.completeness is not None) == METHODS[name].complete, name
    # Both curves start or end at the unperturbed image: the same probability for every method.
    unperturbed = chance.deletion[:, 0]
    for s in scores.values():
        torch.testing.assert_close(s.curves.deletion[:, 0], unperturbed)
        torch.testing.assert_close(s.curves.insertion[:, -1], unperturbed)
    assert_intact(model, before)


def test_method_options_reach_the_methods_that_take_them_and_nothing_else():
    assert method_options("grad_cam", "features.conv1", None) == {"layer": "features.conv1"}
    assert method_options("gradient", "features.conv1", None) == {}  # the layer is for CAM methods only
    assert method_options("integrated_gradients", None, {"integrated_gradients": {"steps": 8}}) == {"steps": 8}
    with pytest.raises(ValueError, match=r"grad_cam takes the options \['layer'\], got \['steps'\]"):
        method_options("grad_cam", None, {"grad_cam": {"steps": 8}})
    with pytest.raises(ValueError, match="methods must be a non-empty list of"):
        method_options("gradient", None, {"no_such_method": {}})
    assert METHODS["guided_backprop"].negative_control and check_methods(["guided_backprop"]) == ["guided_backprop"]


def test_the_cam_layer_option_changes_the_map():
    model = ConvNet([4, "M", 6, "M"], hidden=8, num_classes=5, image_size=8)
    images, targets = tiny_data(3)
    last = METHODS["grad_cam"].fn(model, images, targets)
    first = METHODS["grad_cam"].fn(model, images, targets, **method_options("grad_cam", "features.conv1", None))
    assert last.shape == first.shape == (3, 8, 8) and not torch.allclose(first, last)


def test_analyze_layers_measures_every_block_in_one_pass_each():
    torch.manual_seed(0)
    model = ConvNet([4, "M", 6, "M"], hidden=8, num_classes=5, image_size=8)
    images, labels = tiny_data(40)
    batches = [(images[i : i + 10], labels[i : i + 10], torch.arange(i, i + 10)) for i in range(0, 40, 10)]
    layers = stages(model, (3, 8, 8))
    analysis = analyze_layers(model, batches, batches, layers, num_classes=5, k=3, cka_images=20)
    assert list(analysis.layers) == layers
    conv1, conv2 = analysis.layers.values()
    assert (conv1.field.size, conv2.field.size) == (3, 8)  # conv 3; pool -> 4; conv at stride 2 -> 4 + 2*2 = 8
    assert conv1.examples.indices.shape == (4, 3) and conv2.examples.indices.shape == (6, 3)
    assert 0 <= conv1.stats.sparsity <= 1 and 0 <= conv2.probe.val_accuracy <= 1
    torch.testing.assert_close(analysis.cka.diagonal(), torch.ones(2, dtype=analysis.cka.dtype))
    assert conv1.sample.shape[0] == 20
