"""Attribution methods against answers derived by hand on tiny analytic models, and the model-state contract."""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import pytest
import torch
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.cam import default_cam_layer, grad_cam, grad_cam_plus_plus
from cnn_explorer.interpret.attribution.guided_backprop import guided_backprop
from cnn_explorer.interpret.attribution.integrated_gradients import completeness_error, integrated_gradients
from cnn_explorer.interpret.attribution.smoothgrad import smoothgrad
from cnn_explorer.models import ConvBlock
from tests.model_checks import assert_intact, disturbable_model, small_convnet, snapshot

METHODS = {
    "smoothgrad": partial(smoothgrad, samples=4),
    "guided_backprop": guided_backprop,
    "grad_cam": grad_cam,
    "grad_cam_plus_plus": grad_cam_plus_plus,
    "integrated_gradients": partial(integrated_gradients, steps=8),
}


def vanilla_gradient_map(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """|d logit[target] / d input|, max over channels, written here with torch.autograd (model in eval mode)."""
    model.eval()
    pixels = images.clone().requires_grad_(True)
    score = model(pixels).gather(1, targets[:, None]).sum()
    (gradient,) = torch.autograd.grad(score, pixels)
    return gradient.abs().amax(dim=1)


# --- the model-state contract, every method ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_under_inference_mode_runs_in_eval_and_leaves_model_intact(name: str) -> None:
    method = METHODS[name]
    model = disturbable_model()
    before = snapshot(model)
    images = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 2, 4])
    with torch.inference_mode():
        first = method(model, images, targets)
        second = method(model, images, targets)
    assert first.shape == (3, 8, 8) and first.dtype == torch.float32
    assert torch.isfinite(first).all() and first.abs().sum() > 0
    torch.testing.assert_close(first, second)  # dropout p=0.5 in train mode would make the two runs differ
    assert_intact(model, before)
    with pytest.raises(ValueError, match=r"\[0, 5\)"), torch.inference_mode():
        method(model, images, torch.tensor([0, 5, 1]))
    assert_intact(model, before)
    with pytest.raises(ValueError, match="targets"):
        method(model, images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        method(model, images, torch.tensor([0.0, 1.0, 2.0]))


# --- SmoothGrad ----------------------------------------------------------------------------------------------


def test_smoothgrad_with_zero_noise_is_the_vanilla_gradient_map() -> None:
    model = small_convnet()
    images = torch.randn(4, 3, 8, 8)
    targets = torch.tensor([0, 1, 2, 3])
    expected = vanilla_gradient_map(model, images, targets)
    result = smoothgrad(model, images, targets, noise=0.0, samples=3, batch_size=5)  # batches cut across images
    torch.testing.assert_close(result, expected)


def test_smoothgrad_of_linear_model_is_the_weight_map_for_any_noise() -> None:
    # d logit_t / dx = W[t] everywhere, so every noisy copy has the same gradient.
    torch.manual_seed(2)
    linear = nn.Linear(2 * 3 * 3, 4)
    model = nn.Sequential(nn.Flatten(), linear)
    targets = torch.tensor([3, 0])
    result = smoothgrad(model, torch.randn(2, 2, 3, 3), targets, noise=0.5, samples=7)
    expected = linear.weight.detach()[targets].view(2, 2, 3, 3).abs().amax(dim=1)
    torch.testing.assert_close(result, expected)


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone() -> None:
    model = small_convnet()
    images = torch.randn(2, 3, 8, 8)
    targets = torch.tensor([1, 3])
    rng = torch.get_rng_state()
    first = smoothgrad(model, images, targets, noise=0.2, samples=6, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(smoothgrad(model, images, targets, noise=0.2, samples=6, seed=5), first)
    assert not torch.allclose(smoothgrad(model, images, targets, noise=0.2, samples=6, seed=6), first)
    assert not torch.allclose(first, vanilla_gradient_map(model, images, targets))
    for bad in ({"noise": -0.1}, {"noise": math.nan}, {"samples": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            smoothgrad(model, images, targets, **bad)


# --- guided backpropagation ----------------------------------------------------------------------------------


def one_hidden_unit_net() -> nn.Sequential:
    # h = relu(x1 - x2); logit_0 = -2 h, logit_1 = 3 h.
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 1, bias=False), nn.ReLU(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[3].weight.copy_(torch.tensor([[-2.0], [3.0]]))
    return model


def test_guided_backprop_zeroes_negative_gradients_at_the_relu() -> None:
    model = one_hidden_unit_net()
    active = torch.tensor([[[[2.0, 0.5]]]])  # x1 - x2 = 1.5 > 0: the unit is on
    # Target 0: the gradient reaching the ReLU from above is -2 < 0, so guided backprop passes nothing
    # (the vanilla gradient would be -2 * (1, -1), magnitude 2).
    assert torch.equal(guided_backprop(model, active, torch.tensor([0])), torch.zeros(1, 1, 2))
    torch.testing.assert_close(vanilla_gradient_map(model, active, torch.tensor([0])), torch.full((1, 1, 2), 2.0))
    # Target 1: +3 from above, unit on: 3 * (1, -1), magnitude 3 at both pixels.
    torch.testing.assert_close(guided_backprop(model, active, torch.tensor([1])), torch.full((1, 1, 2), 3.0))
    # Unit off (x1 - x2 < 0): nothing passes, as for the plain gradient.
    inactive = torch.tensor([[[[0.5, 2.0]]]])
    assert torch.equal(guided_backprop(model, inactive, torch.tensor([1])), torch.zeros(1, 1, 2))


# --- Grad-CAM -------------------------------------------------------------------------------------------------


def test_grad_cam_of_gap_linear_head_is_zhou_cam_over_hw_after_relu() -> None:
    # Zhou et al. (2016): CAM_c = sum_k w_ck A_k when the last conv feeds global average pooling and one
    # linear layer. Then dy_c/dA_kij = w_ck / (h w), so Grad-CAM's alpha_k = w_ck / (h w).
    torch.manual_seed(3)
    model = nn.Sequential(
        OrderedDict(
            block=ConvBlock(2, 4), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3, bias=True)
        )
    )
    assert default_cam_layer(model, (2, 6, 6)) == "block"
    images = torch.randn(3, 2, 6, 6)
    targets = torch.tensor([0, 2, 1])
    with torch.no_grad():
        activation = model.block(images)  # [3, 4, 6, 6], spatial size = input size: no upsampling
        cam = torch.einsum("nk,nkij->nij", model.fc.weight[targets], activation)
    result = grad_cam(model, images, targets)
    torch.testing.assert_close(result, cam.clamp_min(0) / 36)
    assert (cam < 0).any() and (result == 0).any()  # the ReLU mattered


def test_grad_cam_upsamples_bilinearly_to_the_input_size() -> None:
    # A 2x2 average pool before the block: the layer runs at 3x3 for a 6x6 input. Zhou's CAM / 9 at 3x3,
    # then bilinear (align_corners=False) to 6x6: output pixel (0, 0) sits at input (-0.25, -0.25), clamped
    # to the corner value.
    torch.manual_seed(7)
    model = nn.Sequential(
        OrderedDict(
            down=nn.AvgPool2d(2),
            block=ConvBlock(1, 3),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(3, 2),
        )
    )
    images = torch.randn(2, 1, 6, 6)
    targets = torch.tensor([1, 0])
    with torch.no_grad():
        activation = model.block(model.down(images))  # [2, 3, 3, 3]
        cam = torch.einsum("nk,nkij->nij", model.fc.weight[targets], activation).clamp_min(0) / 9
    result = grad_cam(model, images, targets)
    assert result.shape == (2, 6, 6)
    expected = torch.nn.functional.interpolate(cam[:, None], size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result, expected[:, 0])
    torch.testing.assert_close(result[:, 0, 0], cam[:, 0, 0])
    with pytest.raises(ValueError, match="available layers"):
        grad_cam(model, images, targets, layer="nope")
    with pytest.raises(ValueError, match=r"\[N, K, h, w\]"):
        grad_cam(model, images, targets, layer="flat")


def test_grad_cam_refuses_a_layer_rewritten_in_place() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="in place"):
        grad_cam(model, torch.randn(1, 1, 2, 2), torch.tensor([0]), layer="0")


def eq19_net() -> nn.Sequential:
    """A = conv(x) = x + (-2.25, -1.5, 0) per channel (the layer explained, before its ReLU); S = fc(relu(A))."""
    model = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(1, 3, 1), relu=nn.ReLU(), flat=nn.Flatten(), fc=nn.Linear(12, 2, bias=False))
    )
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.copy_(torch.tensor([-2.25, -1.5, 0.0]))
        weights = torch.zeros(2, 3, 2, 2)
        weights[0, 0] = 0.5
        weights[0, 1] = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
        weights[0, 2] = 1.0
        model.fc.weight.copy_(weights.view(2, 12))  # class 1 has all-zero weights
    return model


def test_grad_cam_plus_plus_matches_eq19_by_hand_with_zero_and_negative_denominators() -> None:
    # x = [[1, 2], [3, -1]]. g = dS/dA = fc weight where A > 0, else 0.
    # Channel 0: A = [[-1.25, -0.25], [0.75, -3.25]], sum -4; g = 0.5 at (1, 0) only:
    #   denominator 2 (0.25) + (-4)(0.125) = 0 -> alpha 0 (eq. 19 undefined); elsewhere g = 0 -> 0/0 -> 0. w_0 = 0.
    # Channel 1: A = [[-0.5, 0.5], [1.5, -2.5]], sum -1; g = 3 at (0, 1), 1 at (1, 0):
    #   alpha = 9 / (18 - 27) = -1 (negative denominator) and 1 / (2 - 1) = 1; w_1 = -1 * 3 + 1 * 1 = -2.
    # Channel 2: A = x, sum 5; g = 1 where x > 0: alpha = 1 / (2 + 5) = 1/7 at 3 pixels; w_2 = 3/7.
    # L = relu(-2 A_1 + 3/7 A_2) = relu([[1 + 3/7, -1 + 6/7], [-3 + 9/7, 5 - 3/7]]) = [[10/7, 0], [0, 32/7]].
    model = eq19_net()
    assert default_cam_layer(model, (1, 2, 2)) == "relu"  # the block's output: the conv and its ReLU
    images = torch.tensor([[[[1.0, 2.0], [3.0, -1.0]]]]).repeat(2, 1, 1, 1)
    result = grad_cam_plus_plus(model, images, torch.tensor([0, 1]), layer="conv")
    torch.testing.assert_close(result[0], torch.tensor([[10 / 7, 0.0], [0.0, 32 / 7]]))
    assert torch.equal(result[1], torch.zeros(2, 2))  # class 1: g = 0 everywhere, every alpha 0/0 -> 0, no NaN


def eq19_with_loops(model: nn.Sequential, image: Tensor, target: int) -> Tensor:
    """Eq. 19 term by term with Y = exp(S): dY/dA = e^S g, d2Y = e^S g^2, d3Y = e^S g^3; map divided by e^S."""
    activation = model.conv(image[None]).detach().requires_grad_(True)  # [1, K, h, w]
    score = model.fc(model.flat(model.relu(activation)))[0, target]
    (gradient,) = torch.autograd.grad(score, activation)
    a, g, e = activation.detach()[0].double(), gradient[0].double(), math.exp(score.item())
    channels, height, width = a.shape
    cam = torch.zeros(height, width, dtype=torch.float64)
    for k in range(channels):
        total = sum(a[k, p, q].item() for p in range(height) for q in range(width))
        weight = 0.0
        for i in range(height):
            for j in range(width):
                first, second, third = e * g[k, i, j].item(), e * g[k, i, j].item() ** 2, e * g[k, i, j].item() ** 3
                denominator = 2 * second + total * third
                alpha = second / denominator if denominator != 0 else 0.0
                weight += alpha * max(first, 0.0)
        cam += weight * a[k]
    return (cam.clamp_min(0) / e).float()


def test_grad_cam_plus_plus_matches_eq19_loops_on_a_random_net() -> None:
    torch.manual_seed(4)
    model = eq19_net()
    model.conv = nn.Conv2d(2, 3, 1)  # random weights, the same shapes: sums of both signs
    model.fc = nn.Linear(12, 2)
    images = torch.randn(3, 2, 2, 2)
    targets = torch.tensor([0, 1, 1])
    result = grad_cam_plus_plus(model, images, targets, layer="conv")
    for n in range(3):
        torch.testing.assert_close(result[n], eq19_with_loops(model, images[n], int(targets[n])), rtol=1e-4, atol=1e-6)


# --- Integrated Gradients ------------------------------------------------------------------------------------


def test_integrated_gradients_of_linear_model_is_input_minus_baseline_times_weight() -> None:
    # F(x) = w . x + b: dF/dx = w on the whole path, so IG = (x - x') * w exactly, for any quadrature.
    torch.manual_seed(5)
    linear = nn.Linear(3 * 4 * 4, 5)
    model = nn.Sequential(nn.Flatten(), linear)
    images = torch.randn(4, 3, 4, 4)
    targets = torch.tensor([4, 0, 2, 2])
    baseline = torch.tensor([0.5, -1.0, 0.25]).view(3, 1, 1)
    expected = ((images - baseline) * linear.weight.detach()[targets].view(4, 3, 4, 4)).sum(dim=1)
    result = integrated_gradients(model, images, targets, baseline=baseline, steps=5, internal_batch_size=3)
    torch.testing.assert_close(result, expected)
    error = completeness_error(model, images, targets, result, baseline=baseline)
    assert error.absolute.max() < 1e-4
    # A map of zeros misses the whole change: absolute error |F(x) - F(x')|, relative error 1.
    zeros = completeness_error(model, images, targets, torch.zeros(4, 4, 4), baseline=baseline)
    torch.testing.assert_close(zeros.absolute, expected.flatten(1).sum(dim=1).abs())
    torch.testing.assert_close(zeros.relative, torch.ones(4))


def test_integrated_gradients_is_complete_within_one_percent_at_64_steps() -> None:
    # A smooth net with weights scaled up 4x, so the logit bends along the path: 4 nodes are far off.
    torch.manual_seed(6)
    smooth = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )
    with torch.no_grad():
        for parameter in smooth.parameters():
            parameter.mul_(4)
    images = torch.randn(5, 3, 6, 6)
    targets = torch.tensor([0, 1, 2, 3, 0])
    error = completeness_error(smooth, images, targets, integrated_gradients(smooth, images, targets, steps=64))
    assert (error.expected.abs() > 0.01).all()  # not passed trivially by a logit that does not move
    assert error.relative.max() < 0.01
    coarse = completeness_error(smooth, images, targets, integrated_gradients(smooth, images, targets, steps=4))
    assert coarse.relative.max() > 0.05


def test_integrated_gradients_rejects_bad_arguments() -> None:
    model = small_convnet()
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(model, images, targets, baseline=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, images, targets, steps=0)
    with pytest.raises(ValueError, match="internal_batch_size"):
        integrated_gradients(model, images, targets, internal_batch_size=0)
    with pytest.raises(ValueError, match="maps"):
        completeness_error(model, images, targets, torch.zeros(2, 8))
