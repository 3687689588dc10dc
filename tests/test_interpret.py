"""Interpretability functions against hand-derived answers, and the model-state contract they share."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib import colormaps
from torch import nn

from cnn_explorer.interpret import (
    confident_mistakes,
    confusion_matrix,
    feature_map_grid,
    filter_grid,
    forward_hooks,
    layer_activations,
    most_confused_pairs,
    normalize_per_filter,
    per_class_accuracy,
    preserved_model_state,
    row_normalize,
    saliency,
    saliency_grid,
)
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
    # BatchNorm running statistics only move in train mode: unchanged buffers mean the work ran in eval mode.
    for name, buffer in before["buffers"].items():
        assert torch.equal(after["buffers"][name], buffer), name
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr), f"{attr} left on {name or 'model'}"


# --- model_state -------------------------------------------------------------------------------------------


def test_preserved_model_state_undoes_mode_flags_and_backward_even_when_raising() -> None:
    model = disturbable_model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), preserved_model_state(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        model(torch.randn(2, 3, 8, 8)).sum().backward()  # accumulates into every .grad
        raise RuntimeError("boom")
    assert_intact(model, before)


def test_forward_hooks_removed_on_error_and_unknown_name_lists_layers() -> None:
    model = small_convnet()
    seen: list[str] = []
    with pytest.raises(RuntimeError), forward_hooks(model, ["features.conv1"], lambda n, m, i, o: seen.append(n)):
        model(torch.randn(1, 3, 16, 16))  # conv1 runs, then the head's shape check fails
    assert seen == ["features.conv1"]
    with pytest.raises(ValueError, match=r"features\.conv2"), forward_hooks(model, ["features.conv1", "nope"], print):
        pass
    assert all(not getattr(m, attr) for m in model.modules() for attr in HOOK_DICTS)


# --- saliency ----------------------------------------------------------------------------------------------


def test_saliency_of_linear_model_is_abs_weight_row_max_over_channels() -> None:
    # logit_t = W[t] . flatten(x), so d logit_t / dx = W[t] viewed as [C, H, W], whatever x is.
    torch.manual_seed(1)
    linear = nn.Linear(3 * 4 * 5, 6, bias=False)
    model = nn.Sequential(nn.Flatten(), linear)
    images = torch.randn(2, 3, 4, 5)
    targets = torch.tensor([1, 4])
    expected = linear.weight.detach()[targets].view(2, 3, 4, 5).abs().amax(dim=1)
    result = saliency(model, images, targets)
    assert result.shape == (2, 4, 5)
    torch.testing.assert_close(result, expected)


def test_saliency_picks_the_strongest_channel_per_pixel() -> None:
    # logit_0 = 2*R - 3*G + 0.5*B at every pixel summed: |grad| per pixel is max(2, 3, 0.5) = 3.
    linear = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[2.0, -3.0, 0.5]]))
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    result = saliency(model, torch.randn(1, 3, 2, 2), torch.tensor([0]))
    torch.testing.assert_close(result, torch.full((1, 2, 2), 3.0 / 4))  # the average pool divides by 4 pixels


def test_saliency_under_inference_mode_runs_in_eval_and_leaves_model_intact() -> None:
    model = disturbable_model()
    before = snapshot(model)
    images = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 2, 4])
    with torch.inference_mode():
        first = saliency(model, images, targets)
        second = saliency(model, images, targets)
    assert first.shape == (3, 8, 8)
    assert (first >= 0).all() and first.sum() > 0
    torch.testing.assert_close(first, second)  # dropout p=0.5 would make train-mode runs differ
    assert_intact(model, before)
    with torch.no_grad():
        torch.testing.assert_close(saliency(model, images, targets), first)


def test_saliency_leaves_model_intact_when_it_raises() -> None:
    model = disturbable_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"\[0, 5\)"), torch.inference_mode():
        saliency(model, torch.randn(2, 3, 8, 8), torch.tensor([1, 5]))
    assert_intact(model, before)
    with pytest.raises(ValueError, match="targets"):
        saliency(model, torch.randn(2, 3, 8, 8), torch.tensor([1]))


def test_saliency_grid_tiles_image_heatmap_blend() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 5.0  # image 0: one hot pixel; image 1: all zero
    grid = saliency_grid(images, maps)
    # 3 tiles of 8x8 (2x upscale) per row, 2 rows, 1 px padding: 2*9+1 by 3*9+1.
    assert grid.shape == (3, 19, 28)
    assert not grid.isnan().any() and grid.min() >= 0 and grid.max() <= 1
    inferno = colormaps["inferno"]
    low, high = torch.tensor(inferno(0.0)[:3]).float(), torch.tensor(inferno(1.0)[:3]).float()
    for row in range(2):
        top = 1 + row * 9
        image = images[row].float().div(255).repeat_interleave(2, 1).repeat_interleave(2, 2)
        torch.testing.assert_close(grid[:, top : top + 8, 1:9], image)
        heat = grid[:, top : top + 8, 10:18]
        blend = grid[:, top : top + 8, 19:27]
        torch.testing.assert_close(blend, 0.5 * image + 0.5 * heat)
    # Image 0's hot pixel (1, 2) is the 2x2 block at rows 2-3, cols 4-5 of its heat tile; the rest is the lowest colour.
    heat0 = grid[:, 1:9, 10:18]
    torch.testing.assert_close(heat0[:, 2:4, 4:6], high[:, None, None].expand(3, 2, 2))
    torch.testing.assert_close(heat0[:, 0, 0], low)
    torch.testing.assert_close(grid[:, 10:18, 10:18], low[:, None, None].expand(3, 8, 8))
    with pytest.raises(ValueError):
        saliency_grid(images, maps[:, :2])


# --- activations -------------------------------------------------------------------------------------------


def test_layer_activations_equal_manual_forward_in_eval_mode() -> None:
    model = disturbable_model()
    images = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        conv1 = model.features.conv1(images)
        conv2 = model.features.conv2(model.features.pool1(conv1))
        logits = model(images)
    model.train()
    model.features.conv2.bn.eval()
    before = snapshot(model)
    captured = layer_activations(model, images, ["features.conv1", "features.conv2", "classifier.fc2"])
    assert list(captured) == ["features.conv1", "features.conv2", "classifier.fc2"]
    assert captured["features.conv1"].shape == (2, 4, 8, 8)
    assert captured["features.conv2"].shape == (2, 6, 4, 4)
    torch.testing.assert_close(captured["features.conv1"], conv1)
    torch.testing.assert_close(captured["features.conv2"], conv2)
    torch.testing.assert_close(captured["classifier.fc2"], logits)
    assert not any(t.requires_grad for t in captured.values())
    assert_intact(model, before)


def test_layer_activations_unknown_name_and_failing_forward_leave_model_intact() -> None:
    model = disturbable_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"features\.conv1.*features\.conv2"):
        layer_activations(model, torch.randn(1, 3, 8, 8), ["features.conv1", "features.conv9"])
    with pytest.raises(RuntimeError):
        layer_activations(model, torch.randn(1, 3, 16, 16), ["features.conv1"])  # head expects 8px input
    assert_intact(model, before)


def test_feature_map_grid_layout_colours_and_zero_rows() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    activations = torch.zeros(2, 5, 4, 4)
    activations[0] = 1.0
    activations[0, 1, 0, 0] = 2.0  # image 0's maximum: channel 1, top-left cell
    activations[0, 4] = 100.0  # channel 4 is not shown (max_channels=3) and must not set the scale
    grid = feature_map_grid(images, activations, max_channels=3)
    # Rows of 1 image + 3 maps, each 8x8 with 1 px padding: 2*9+1 by 4*9+1.
    assert grid.shape == (3, 19, 37)
    assert not grid.isnan().any() and grid.min() >= 0 and grid.max() <= 1
    viridis = colormaps["viridis"]
    bottom, top = torch.tensor(viridis(0.0)[:3]).float(), torch.tensor(viridis(1.0)[:3]).float()
    for row in range(2):
        torch.testing.assert_close(grid[:, 1 + row * 9 : 9 + row * 9, 1:9], images[row].float() / 255)
    channel1 = grid[:, 1:9, 19:27]  # row 0, third tile
    # The 4x4 map is upsampled 2x: cell (0, 0) covers pixels 0-1 x 0-1 and is the row maximum -> top colour.
    torch.testing.assert_close(channel1[:, :2, :2], top[:, None, None].expand(3, 2, 2))
    assert not torch.allclose(channel1[:, 2, 2], top)  # 1/2 of the maximum is another colour
    # Image 1's activations are all zero: every map tile is the bottom colour, no NaN.
    for left in (10, 19, 28):
        torch.testing.assert_close(grid[:, 10:18, left : left + 8], bottom[:, None, None].expand(3, 8, 8))
    assert feature_map_grid(images, activations, max_channels=16).shape == (3, 19, 6 * 9 + 1)
    with pytest.raises(ValueError):
        feature_map_grid(images, activations[:1])


# --- filters -----------------------------------------------------------------------------------------------


def test_normalize_per_filter_scales_each_filter_to_unit_range() -> None:
    weight = torch.zeros(2, 1, 1, 3)
    weight[0, 0, 0] = torch.tensor([-2.0, 0.0, 2.0])
    weight[1, 0, 0] = torch.tensor([10.0, 11.0, 14.0])
    expected = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.25, 1.0]]).view(2, 1, 1, 3)
    torch.testing.assert_close(normalize_per_filter(weight), expected)
    torch.testing.assert_close(normalize_per_filter(torch.full((1, 3, 2, 2), -4.0)), torch.full((1, 3, 2, 2), 0.5))


def test_filter_grid_tiles_are_normalized_upscaled_filters() -> None:
    torch.manual_seed(2)
    weight = torch.randn(10, 3, 3, 3)
    weight[7] = 0.3  # constant filter
    nrow, upscale, padding = 4, 3, 2
    grid = filter_grid(weight, nrow=nrow, upscale=upscale, padding=padding)
    side = 3 * upscale
    # 10 filters in rows of 4 -> 3 rows; each tile plus padding is 11 px, plus the outer padding.
    assert grid.shape == (3, 3 * (side + padding) + padding, 4 * (side + padding) + padding)
    normalized = normalize_per_filter(weight)
    for i in range(10):
        row, col = divmod(i, nrow)
        top, left = padding + row * (side + padding), padding + col * (side + padding)
        tile = grid[:, top : top + side, left : left + side]
        expected = normalized[i].repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
        torch.testing.assert_close(tile, expected)
    # Filter 7 (row 1, column 3) is constant: its tile is mid-grey.
    constant_tile = grid[:, padding + 1 * (side + padding) :, padding + 3 * (side + padding) :][:, :side, :side]
    assert (constant_tile == 0.5).all()
    assert (grid[:, :padding] == 1.0).all()  # white separators
    assert filter_grid(weight[:1], padding=1).shape == (3, 14, 14)


def test_filter_grid_rejects_non_rgb_filters() -> None:
    with pytest.raises(ValueError, match="RGB"):
        filter_grid(torch.randn(8, 4, 3, 3))


# --- confusion ---------------------------------------------------------------------------------------------

PREDS = torch.tensor([0, 1, 1, 2, 2, 2, 0, 1])
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
# Hand-counted: (true, pred) = (0,0) (0,1) (1,1) (1,2) (2,2) (2,2) (2,0) (1,1); class 3 has no samples.
EXPECTED_CM = torch.tensor([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]])


def test_confusion_matrix_from_indices_and_logits() -> None:
    cm = confusion_matrix(PREDS, TARGETS, num_classes=4)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, EXPECTED_CM)
    logits = torch.nn.functional.one_hot(PREDS, 4).float() * 3 - 1
    assert torch.equal(confusion_matrix(logits, TARGETS, num_classes=4), EXPECTED_CM)


def test_row_normalize_and_per_class_accuracy() -> None:
    expected = torch.tensor([[1 / 2, 1 / 2, 0, 0], [0, 2 / 3, 1 / 3, 0], [1 / 3, 0, 2 / 3, 0], [0, 0, 0, 0]])
    rates = row_normalize(EXPECTED_CM)
    assert not rates.isnan().any()
    torch.testing.assert_close(rates, expected)
    torch.testing.assert_close(per_class_accuracy(EXPECTED_CM), torch.tensor([1 / 2, 2 / 3, 2 / 3, 0.0]))


def test_most_confused_pairs_order_and_ties() -> None:
    pairs = most_confused_pairs(EXPECTED_CM, k=5)
    # (1,2) and (2,0) tie at 1/3: true class 1 comes first. Zero-rate pairs are not listed.
    assert [(t, p) for t, p, _ in pairs] == [(0, 1), (1, 2), (2, 0)]
    assert [r for _, _, r in pairs] == pytest.approx([1 / 2, 1 / 3, 1 / 3])
    assert most_confused_pairs(EXPECTED_CM, k=1) == [(0, 1, 0.5)]
    same_row = torch.tensor([[2, 1, 1], [0, 3, 0], [0, 4, 0]])
    assert most_confused_pairs(same_row, k=3) == [(2, 1, 1.0), (0, 1, 0.25), (0, 2, 0.25)]


# --- mistakes ----------------------------------------------------------------------------------------------


def softmax_top(logit: float) -> float:
    """Confidence of a 3-class row [logit, 0, 0] (any order)."""
    return math.exp(logit) / (math.exp(logit) + 2)


LOGITS = torch.tensor(
    [
        [3.0, 0.0, 0.0],  # 0: correct
        [0.0, 4.0, 0.0],  # 1: wrong (target 2), conf softmax_top(4) = 0.965
        [1.0, 0.0, 0.0],  # 2: wrong (target 1), conf softmax_top(1) = 0.576
        [0.0, 0.0, 5.0],  # 3: correct and the most confident row: must never come back
        [0.0, 2.0, 0.0],  # 4: wrong (target 0), conf softmax_top(2) = 0.787
        [0.0, 0.0, 0.5],  # 5: wrong (target 0), conf softmax_top(0.5) = 0.452
    ]
)
LABELS = torch.tensor([0, 2, 1, 2, 0, 0])


def test_confident_mistakes_order_and_values() -> None:
    indices, predictions, confidences = confident_mistakes(LOGITS, LABELS, k=3)
    assert indices.tolist() == [1, 4, 2]
    assert predictions.tolist() == [1, 1, 0]
    assert confidences.tolist() == pytest.approx([softmax_top(4), softmax_top(2), softmax_top(1)], rel=1e-6)


def test_confident_mistakes_k_larger_than_mistakes_and_none() -> None:
    result = confident_mistakes(LOGITS, LABELS, k=10)
    assert result.indices.tolist() == [1, 4, 2, 5]
    assert result.predictions.tolist() == [1, 1, 0, 2]
    none = confident_mistakes(LOGITS, LOGITS.argmax(1), k=4)
    assert none.indices.shape == (0,) and none.indices.dtype == torch.int64
    assert none.predictions.dtype == torch.int64 and none.confidences.dtype == torch.float32
    assert confident_mistakes(LOGITS, LABELS, k=0).indices.numel() == 0
