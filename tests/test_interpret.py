"""Interpretability functions against hand-derived answers, and the model-state contract they share."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnn_explorer.interpret import (
    RunningMistakes,
    confident_mistakes,
    confusion_matrix,
    forward_hooks,
    layer_activations,
    most_confused_pairs,
    per_class_accuracy,
    preserved_model_state,
    row_normalize,
)
from cnn_explorer.interpret.attribution import METHODS, attribute, check_methods
from cnn_explorer.interpret.attribution.gradient import gradient as saliency
from cnn_explorer.interpret.attribution.gradient import gradient_x_input
from tests.model_checks import HOOK_DICTS, assert_intact, disturbable_model, small_convnet, snapshot

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


def test_running_mistakes_over_batches_equal_confident_mistakes_over_everything() -> None:
    torch.manual_seed(3)
    logits = torch.randn(50, 4)
    logits[10], logits[40] = logits[3], logits[3]  # exact ties across batches: the earlier row must come first
    labels = torch.randint(0, 4, (50,))
    labels[[3, 10, 40]] = (logits[3].argmax() + 1) % 4  # all three wrong, same confidence
    images = torch.arange(50.0).view(50, 1, 1, 1)  # each image remembers its row
    running = RunningMistakes(k=7)
    for start in range(0, 50, 8):  # batches of 8, the last one short
        running.update(logits[start : start + 8], labels[start : start + 8], images[start : start + 8])
    kept_images, kept_labels, predictions, confidences = running.result()
    expected = confident_mistakes(logits, labels, k=7)
    assert kept_images.flatten().long().tolist() == expected.indices.tolist()
    assert predictions.tolist() == expected.predictions.tolist()
    assert kept_labels.tolist() == labels[expected.indices].tolist()
    torch.testing.assert_close(confidences, expected.confidences)
    assert RunningMistakes(k=3).result()[0].shape[0] == 0  # nothing seen: no mistakes, no error


# --- attribution registry --------------------------------------------------------------------------------------


def test_gradient_x_input_of_linear_model_is_each_pixels_contribution() -> None:
    # logit_t = W[t] . flatten(x): d logit_t / dx = W[t], so gradient x input = W[t] * x, summed over channels,
    # and the map sums to the logit (no bias).
    torch.manual_seed(4)
    linear = nn.Linear(3 * 4 * 5, 6, bias=False)
    model = nn.Sequential(nn.Flatten(), linear)
    images = torch.randn(2, 3, 4, 5)
    targets = torch.tensor([2, 5])
    expected = (linear.weight.detach()[targets].view(2, 3, 4, 5) * images).sum(dim=1)
    result = gradient_x_input(model, images, targets)
    torch.testing.assert_close(result, expected)
    with torch.no_grad():
        logits = model(images)[torch.arange(2), targets]
    torch.testing.assert_close(result.sum(dim=(1, 2)), logits)


def test_every_registered_method_keeps_the_model_intact_and_maps_each_image() -> None:
    images, targets = torch.randn(3, 3, 8, 8), torch.tensor([0, 2, 4])
    for name, method in METHODS.items():
        model = disturbable_model()
        before = snapshot(model)
        with torch.inference_mode():
            maps = attribute(name, model, images, targets)
        assert maps.shape == (3, 8, 8) and maps.isfinite().all(), name
        assert method.title and method.description, name
        assert_intact(model, before)
    with pytest.raises(ValueError, match="methods must be a non-empty list of"):
        check_methods(["gradient", "no_such_method"])
