"""Explanation checks against hand-derived answers: deletion/insertion curves, the randomization test, statistics."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.faithfulness import (
    PerturbationCurves,
    baseline_images,
    bootstrap_interval,
    deletion_insertion,
    random_order_curves,
)
from cnn_explorer.interpret.attribution.sanity import (
    RandomizationResult,
    cascading_randomization,
    passes_randomization_check,
    randomization_verdict,
    spearman_rank_correlation,
    structural_similarity,
)
from cnn_explorer.interpret.attribution.smoothgrad import smoothgrad
from tests.model_checks import assert_intact, disturbable_model, small_convnet, snapshot

vanilla_gradient = partial(smoothgrad, noise=0.0, samples=1)  # SmoothGrad with no noise is the vanilla gradient map


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def trapezoid(values: list[float], width: float) -> float:
    return width * (sum(values) - (values[0] + values[-1]) / 2)


# --- deletion / insertion ------------------------------------------------------------------------------------


class SubsetSum(nn.Module):
    """Two classes: logit_0 = a * (sum of channel 0 over the pixel set S), logit_1 = 0."""

    def __init__(self, subset: Tensor, a: float) -> None:
        super().__init__()
        self.register_buffer("subset", subset.float())
        self.a = a

    def forward(self, x: Tensor) -> Tensor:
        score = self.a * (x[:, 0] * self.subset).sum(dim=(1, 2))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def subset_case() -> tuple[SubsetSum, Tensor, Tensor]:
    """A 4x4 image, S = its 4 corner pixels with value 1 (other pixels 5: the model ignores them); S ranked first."""
    subset = torch.zeros(4, 4, dtype=torch.bool)
    subset[0, 0] = subset[0, 3] = subset[3, 0] = subset[3, 3] = True
    image = torch.where(subset, 1.0, 5.0)[None, None].repeat(1, 2, 1, 1)  # [1, 2, 4, 4]
    attribution = torch.where(subset, 2.0, torch.arange(16.0).view(4, 4) / 100)[None]  # S first, then any order
    return SubsetSum(subset, a=1.0), image, attribution


def test_deletion_and_insertion_auc_of_a_known_pixel_subset_by_hand() -> None:
    model, image, attribution = subset_case()
    # 16 pixels, 16 steps: step k zeroes (inserts) the k top-ranked pixels, the first 4 being S.
    # Deletion: p_0(k) = sigmoid(4 - min(k, 4)); insertion into zeros: sigmoid(min(k, 4)).
    curves = deletion_insertion(model, image, torch.tensor([0]), attribution, steps=16, baseline="zero")
    deletion = [sigmoid(4 - min(k, 4)) for k in range(17)]
    insertion = [sigmoid(min(k, 4)) for k in range(17)]
    torch.testing.assert_close(curves.fractions, torch.arange(17) / 16)
    torch.testing.assert_close(curves.deletion[0], torch.tensor(deletion))
    torch.testing.assert_close(curves.insertion[0], torch.tensor(insertion))
    torch.testing.assert_close(curves.deletion_auc, torch.tensor([trapezoid(deletion, 1 / 16)]))
    torch.testing.assert_close(curves.insertion_auc, torch.tensor([trapezoid(insertion, 1 / 16)]))
    # 4 steps of 4 pixels: S goes at once. Deletion points sigmoid(4), 1/2, 1/2, 1/2, 1/2, width 1/4:
    # AUC = (sigmoid(4) + 1/2) / 8 + 3/8. Class 1 sees 1 - p_0.
    coarse = deletion_insertion(model, image, torch.tensor([0]), attribution, steps=4, baseline="zero")
    torch.testing.assert_close(coarse.deletion_auc, torch.tensor([(sigmoid(4) + 0.5) / 8 + 3 / 8]))
    other = deletion_insertion(model, image, torch.tensor([1]), attribution, steps=4, baseline="zero")
    torch.testing.assert_close(other.deletion_auc, torch.tensor([(1 - sigmoid(4) + 0.5) / 8 + 3 / 8]))
    # Insertion: 1/2 (empty), then sigmoid(4) from the first step on -> (1/2 + sigmoid(4)) / 8 + 3/4 sigmoid(4).
    torch.testing.assert_close(coarse.insertion_auc, torch.tensor([(0.5 + sigmoid(4)) / 8 + 3 / 4 * sigmoid(4)]))


def test_curves_batch_any_way_and_steps_round_to_whole_pixels() -> None:
    model, image, attribution = subset_case()
    images = image.repeat(3, 1, 1, 1)
    maps = attribution.repeat(3, 1, 1)
    maps[1] = -maps[1]  # image 1: S last
    targets = torch.tensor([0, 0, 1])
    whole = deletion_insertion(model, images, targets, maps, steps=5, baseline="zero", batch_size=1000)
    split = deletion_insertion(model, images, targets, maps, steps=5, baseline="zero", batch_size=2)
    torch.testing.assert_close(whole.deletion, split.deletion)
    torch.testing.assert_close(whole.insertion, split.insertion)
    # 16 pixels in 5 steps: round(16 k / 5) = 0, 3, 6, 10, 13, 16 pixels.
    torch.testing.assert_close(whole.fractions, torch.tensor([0, 3, 6, 10, 13, 16]) / 16)
    # S last: the probability stays at sigmoid(4) until the last 4 pixels (after 13 pixels, 1 of S is gone).
    torch.testing.assert_close(whole.deletion[1], torch.tensor([sigmoid(4)] * 4 + [sigmoid(3), 0.5]))
    assert whole.deletion_auc[1] > whole.deletion_auc[0]  # ranking S first deletes the evidence sooner
    torch.testing.assert_close(whole.mean_deletion, whole.deletion.mean(dim=0))


def test_baseline_images() -> None:
    images = torch.randn(2, 3, 5, 6)
    assert torch.equal(baseline_images(images, baseline="zero"), torch.zeros_like(images))
    mean = baseline_images(images, baseline="mean")
    torch.testing.assert_close(mean, images.mean(dim=(2, 3), keepdim=True).expand_as(images))
    # A blur keeps a constant image (replicated borders, weights summing to 1) and smooths a single spike
    # into the normalized Gaussian: the centre keeps (1 / sum_i exp(-i^2 / 2 sigma^2))^2 of it.
    constant = torch.full((1, 2, 7, 7), -1.5)
    torch.testing.assert_close(baseline_images(constant, baseline="blur", blur_sigma=2.0), constant)
    spike = torch.zeros(1, 1, 15, 15)
    spike[0, 0, 7, 7] = 1.0
    blurred = baseline_images(spike, baseline="blur", blur_sigma=1.0)
    total = sum(math.exp(-(i**2) / 2) for i in range(-3, 4))
    torch.testing.assert_close(blurred[0, 0, 7, 7], torch.tensor(1 / total**2))
    torch.testing.assert_close(blurred[0, 0, 7, 8], torch.tensor(math.exp(-0.5) / total**2))
    torch.testing.assert_close(blurred.sum(), torch.tensor(1.0))
    for bad in ({"baseline": "noise"}, {"blur_sigma": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            baseline_images(images, **bad)


def test_random_order_is_seeded_and_leaves_the_global_rng_alone() -> None:
    model, image, _ = subset_case()
    images, targets = image.repeat(4, 1, 1, 1), torch.tensor([0, 0, 1, 1])
    rng = torch.get_rng_state()
    first = random_order_curves(model, images, targets, seed=3, steps=8, baseline="mean")
    assert torch.equal(torch.get_rng_state(), rng)
    again = random_order_curves(model, images, targets, seed=3, steps=8, baseline="mean")
    other = random_order_curves(model, images, targets, seed=4, steps=8, baseline="mean")
    assert torch.equal(first.deletion, again.deletion) and torch.equal(first.insertion, again.insertion)
    assert not torch.equal(first.deletion, other.deletion)
    # Every order ends at the same two images: fully deleted (the mean image) and the image itself.
    torch.testing.assert_close(first.deletion[:, -1], first.insertion[:, 0])
    torch.testing.assert_close(first.deletion[:, 0], first.insertion[:, -1])


def test_curves_leave_model_intact_under_inference_mode_and_reject_bad_arguments() -> None:
    model = disturbable_model()
    before = snapshot(model)
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 4])
    with torch.inference_mode():
        curves = deletion_insertion(model, images, targets, torch.randn(2, 8, 8), steps=4)
        again = deletion_insertion(model, images, targets, torch.randn(2, 8, 8), steps=4)
    assert isinstance(curves, PerturbationCurves) and curves.deletion.shape == (2, 5)
    torch.testing.assert_close(curves.deletion[:, 0], again.deletion[:, 0])  # eval mode: dropout off
    assert ((curves.deletion >= 0) & (curves.deletion <= 1)).all()
    assert_intact(model, before)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        deletion_insertion(model, images, torch.tensor([0, 5]), torch.randn(2, 8, 8))
    assert_intact(model, before)
    for bad, match in (({"steps": 0}, "steps"), ({"steps": 65}, "steps"), ({"batch_size": 1}, "batch_size")):
        with pytest.raises(ValueError, match=match):
            deletion_insertion(model, images, targets, torch.randn(2, 8, 8), **bad)
    with pytest.raises(ValueError, match="maps"):
        deletion_insertion(model, images, targets, torch.randn(2, 4, 4))


def test_bootstrap_interval() -> None:
    constant = torch.full((20,), 0.3)
    low, high = bootstrap_interval(constant)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)
    values = torch.linspace(0, 1, 101)
    low, high = bootstrap_interval(values, n=2000, seed=1)
    # The mean's standard error is sd / sqrt(101) ~ 0.029: a 95% interval is about 0.5 +- 0.057.
    assert 0.42 < low < 0.47 and 0.53 < high < 0.58
    assert (low, high) == bootstrap_interval(values, n=2000, seed=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(values, confidence=1.0)
    with pytest.raises(ValueError, match="values"):
        bootstrap_interval(torch.tensor([]))


# --- cascading randomization ---------------------------------------------------------------------------------


def edge_filter(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """A "method" that ignores the model: Sobel gradient magnitude of the input, max over channels."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T])[:, None].repeat(images.shape[1], 1, 1, 1)  # [2C, 1, 3, 3]
    edges = F.conv2d(images, kernels, padding=1, groups=images.shape[1])  # [N, 2C, H, W]
    return edges.view(len(images), -1, 2, *images.shape[2:]).norm(dim=2).amax(dim=1)


def test_spearman_with_ties_and_ssim_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0, 0.0, 2.0], [4.0, 3.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    # Row 0: average ranks (0.5, 0.5, 2, 3) and (0.5, 2, 0.5, 3); centred dot 2.25, both norms^2 4.5 -> 0.5.
    # Row 1: reversed -> -1. Row 2: both constant -> 1. Row 3: one constant -> 0.
    torch.testing.assert_close(spearman_rank_correlation(a, b), torch.tensor([0.5, -1.0, 1.0, 0.0]))
    maps = torch.rand(2, 12, 12)
    torch.testing.assert_close(structural_similarity(maps, maps), torch.ones(2))
    # Constant maps 0 and 1: no variance, so SSIM = (2 * 0 * 1 + C1) / (0 + 1 + C1) with C1 = 1e-4.
    zero_one = structural_similarity(torch.zeros(1, 12, 12), torch.ones(1, 12, 12))
    torch.testing.assert_close(zero_one, torch.tensor([1e-4 / (1 + 1e-4)]))
    assert structural_similarity(torch.rand(1, 5, 4), torch.rand(1, 5, 4)).shape == (1,)  # window shrinks to 3


def test_cascade_order_and_a_model_independent_method_stays_at_one() -> None:
    model = disturbable_model()
    before = snapshot(model)
    images = torch.randn(4, 3, 8, 8)
    targets = torch.tensor([0, 1, 2, 3])
    with torch.inference_mode():
        result = cascading_randomization(model, images, targets, edge_filter)
    assert_intact(model, before)
    assert isinstance(result, RandomizationResult)
    # Logits first, down to the first conv; each conv's BatchNorm goes with it.
    assert result.layers == ("classifier.fc2", "classifier.fc1", "features.conv2.conv", "features.conv1.conv")
    torch.testing.assert_close(result.spearman, torch.ones(4, 4))
    torch.testing.assert_close(result.ssim, torch.ones(4, 4))
    assert not passes_randomization_check(result) and not passes_randomization_check(result, over="end")


def test_vanilla_gradient_decorrelates_as_the_model_is_randomized() -> None:
    model = small_convnet()
    before = snapshot(model)
    images = torch.randn(6, 3, 8, 8)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    result = cascading_randomization(model, images, targets, vanilla_gradient, seed=1)
    assert_intact(model, before)
    assert result.spearman.shape == (4, 6) and result.ssim.shape == (4, 6)
    assert (result.spearman_mean < 0.9).all()  # every step changes the map
    assert result.spearman_mean[-1] < 0.5 and passes_randomization_check(result, over="end")
    assert result.spearman_mean.mean() < 0.5 and passes_randomization_check(result, over="cascade")
    # The default verdict is taken at the classifier steps (fc2, fc1): each image's mean over those two rows.
    verdict = randomization_verdict(result)
    assert verdict.layers == ("classifier.fc2", "classifier.fc1") and result.classifier_steps == 2
    assert verdict.mean == pytest.approx(float(result.spearman[:2].double().mean()))
    assert verdict.low <= verdict.mean <= verdict.high
    # By hand: a cascade of correlations 0.9, 0.6, 0.3, 0.0 has mean 0.45 and ends at 0.0.
    made_up = RandomizationResult(
        layers=("a", "b", "c", "d"), spearman=torch.tensor([[0.9], [0.6], [0.3], [0.0]]), ssim=torch.zeros(4, 1)
    )
    assert passes_randomization_check(made_up, threshold=0.46, over="cascade")
    assert not passes_randomization_check(made_up, threshold=0.44, over="cascade")
    assert passes_randomization_check(made_up, threshold=0.01, over="end")
    # At the classifier (the first step, 0.9) it fails either way: the map survived the logits' re-initialization.
    assert not passes_randomization_check(made_up, threshold=0.46)
    again = cascading_randomization(model, images, targets, vanilla_gradient, seed=1)
    assert torch.equal(again.spearman, result.spearman)
    other = cascading_randomization(model, images, targets, vanilla_gradient, seed=2)
    assert not torch.equal(other.spearman, result.spearman)
    with pytest.raises(ValueError, match="threshold"):
        passes_randomization_check(result, threshold=2.0)
    with pytest.raises(ValueError, match="over"):
        passes_randomization_check(result, over="first")


def test_cascade_rejects_a_method_with_the_wrong_shape() -> None:
    def flat(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return images.flatten(1)

    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        cascading_randomization(small_convnet(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), flat)
