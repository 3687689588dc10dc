"""Cascading model-parameter randomization (Adebayo et al. 2018): does a map change when the model does?

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim (2018), "Sanity Checks for Saliency Maps", the model
parameter randomization test in its cascading variant (their figure 2): re-initialize the layers of a
trained model from the logits down, one at a time, and compare the method's maps after each step with
the trained model's maps. A map that barely changes while the layers that decide the class are random
cannot be explaining what the model learned (guided backpropagation is the known failure). The verdict is
taken at the classifier steps (the layers after the last convolution, which decide the class), with a
bootstrap interval over images; the whole curve is kept for the figure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from cnn_explorer.interpret.attribution.arguments import check_images_targets
from cnn_explorer.interpret.attribution.faithfulness import bootstrap_interval
from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state

AttributionMethod = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``method(model, images [N, C, H, W], targets [N]) -> maps [N, H, W]``; bind options with functools.partial."""

DEFAULT_THRESHOLD = 0.5
"""Mean rank correlation (of absolute maps) with the trained maps at the classifier steps below which a method
passes; see :func:`randomization_verdict`."""

OVER = ("classifier", "cascade", "end")
"""Which steps :func:`passes_randomization_check` averages: the classifier steps, the whole cascade, the last."""

_SSIM_WINDOW = 11  # Wang et al. (2004), section III.C: an 11x11 circular-symmetric Gaussian window, sigma 1.5
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01**2  # K1 = 0.01, K2 = 0.03 with dynamic range L = 1 (maps scaled to [0, 1])
_SSIM_C2 = 0.03**2


@dataclass(frozen=True)
class RandomizationResult:
    """Per step of the cascade, how similar each image's map is to the trained model's map.

    Attributes:
        layers: ``S`` dotted names, in the order they were re-initialized (logits first); after step ``s``,
            ``layers[: s + 1]`` are random.
        spearman: ``[S, N]`` Spearman rank correlation of the absolute maps, trained vs. step ``s``.
        ssim: ``[S, N]`` mean SSIM of the absolute maps, each scaled to ``[0, 1]``.
        classifier_steps: how many of the first steps re-initialize the classifier: the weight layers that run
            after the last convolution (e.g. the linear head), at least the logits layer.
    """

    layers: tuple[str, ...]
    spearman: Tensor
    ssim: Tensor
    classifier_steps: int = 1

    @property
    def spearman_mean(self) -> Tensor:
        """``[S]`` mean over images."""
        return self.spearman.mean(dim=1)

    @property
    def ssim_mean(self) -> Tensor:
        """``[S]`` mean over images."""
        return self.ssim.mean(dim=1)


def cascading_randomization(
    model: nn.Module, images: Tensor, targets: Tensor, method: AttributionMethod, *, seed: int = 0
) -> RandomizationResult:
    """Re-initialize a copy of ``model`` layer by layer from the logits down; compare ``method``'s maps at each step.

    Adebayo et al. (2018), the cascading model parameter randomization test (figure 2) with two of their
    similarity metrics: Spearman rank correlation of the absolute maps, and SSIM. One step re-initializes
    one weight layer (``nn.Linear`` or ``nn.Conv*d``), in the reverse of the order one forward pass runs them
    (found from the module graph, not from names: ``fc`` then ``layer4.1.conv2``, ``layer4.1.conv1``,
    ``layer4.0.downsample.0``, ... ``conv1`` for a torchvision ResNet; ``classifier.*`` first for MobileNet,
    EfficientNet, timm's EfficientNet-Lite and :class:`cnn_explorer.models.ConvNet`); a BatchNorm that runs
    directly after a conv or linear layer is part of that layer's step (its affine weights and running
    statistics are reset to a fresh layer's, mean 0, variance 1, weight 1, bias 0, as torchvision and timm
    initialize them, so a randomized conv is not rescaled by statistics learned for the trained one; a BatchNorm
    anywhere else keeps its trained values). Weights and biases are drawn
    as PyTorch initializes them, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, from a CPU ``torch.Generator``
    seeded with ``seed``: the same seed gives the same cascade on any device, and the global RNG is left
    alone.

    All the work is on a ``copy.deepcopy`` of ``model`` (the trained maps too): the caller's model is never
    run nor changed. ``method`` is responsible for running its copy in eval mode.

    Args:
        model: the trained network; not modified.
        images: ``[N, C, H, W]`` float, normalized as the model expects.
        targets: ``[N]`` integer class indices, passed to ``method``.
        method: ``method(model, images, targets) -> maps [N, H, W]``.
        seed: seeds the re-initialization.

    Returns:
        :class:`RandomizationResult` with one row per re-initialized layer, on CPU.

    Raises:
        ValueError: on malformed images/targets, a model without Linear or Conv layers used by its forward
            pass, or a method whose maps are not ``[N, H, W]``.
    """
    check_images_targets(images, targets)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # Outside inference mode: a deepcopy made inside it would hold inference tensors, unusable for gradients.
    with torch.inference_mode(False):
        network = copy.deepcopy(model)
        steps = _randomization_steps(network, images[:1])
        if not steps:
            raise ValueError(f"{type(model).__name__} runs no nn.Linear or nn.Conv layer to randomize")
        trained = _checked_maps(method, network, images, targets)
        spearman, ssim = [], []
        for _, modules in steps:
            for module in modules:
                reinitialize(module, generator)
            randomized = _checked_maps(method, network, images, targets)
            spearman.append(spearman_rank_correlation(trained.abs(), randomized.abs()))
            ssim.append(structural_similarity(unit_range(trained.abs()), unit_range(randomized.abs())))
    # The classifier: the steps before the first convolution of the cascade (logits first), at least one.
    convolutions = [isinstance(modules[0], _ConvNd) for _, modules in steps]
    classifier_steps = max(1, convolutions.index(True) if True in convolutions else len(steps))
    return RandomizationResult(
        layers=tuple(name for name, _ in steps),
        spearman=torch.stack(spearman),
        ssim=torch.stack(ssim),
        classifier_steps=classifier_steps,
    )


@dataclass(frozen=True)
class RandomizationVerdict:
    """The randomization check judged at the classifier steps, with its uncertainty over images.

    Attributes:
        layers: the classifier's layers, re-initialized in the steps judged (logits first).
        mean: mean over images of each image's rank correlation averaged over those steps.
        low: lower end of the bootstrap interval of ``mean``.
        high: upper end.
        threshold: the bar ``mean`` is judged against.
        verdict: ``"pass"`` (the interval lies below the threshold), ``"fail"`` (it lies at or above it), or
            ``"unclear"`` (it straddles the threshold: more images would decide).
    """

    layers: tuple[str, ...]
    mean: float
    low: float
    high: float
    threshold: float
    verdict: str

    @property
    def passes(self) -> bool:
        """Whether the maps reliably depend on the layers that decide the class."""
        return self.verdict == "pass"


def randomization_verdict(
    result: RandomizationResult, *, threshold: float = DEFAULT_THRESHOLD, seed: int = 0
) -> RandomizationVerdict:
    """Judge the cascade where it matters: after the classifier's layers are re-initialized.

    Adebayo et al. (2018), model parameter randomization test: a map that stays alike once the layers that decide
    the class are random cannot be explaining the decision, whatever the lower layers do to it later (their figure
    2: guided backpropagation keeps its maps through the top layers and changes only when the first convolutions are
    randomized). So the verdict is the per-image Spearman correlation averaged over the classifier steps
    (:attr:`RandomizationResult.classifier_steps`), then over images, with a 95% percentile bootstrap interval over
    images (:func:`~cnn_explorer.interpret.attribution.faithfulness.bootstrap_interval`, ``seed``): it passes when
    the interval lies below ``threshold``, fails when it lies at or above it, and is unclear when it straddles it.
    The whole curve stays in ``result`` for the figure.

    Args:
        result: from :func:`cascading_randomization`.
        threshold: a correlation in ``[-1, 1]`` (see :data:`DEFAULT_THRESHOLD`).
        seed: seeds the bootstrap.

    Returns:
        :class:`RandomizationVerdict`.

    Raises:
        ValueError: if ``threshold`` is outside ``[-1, 1]`` or a correlation is not finite.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    steps = min(max(result.classifier_steps, 1), result.spearman.shape[0])
    per_image = result.spearman[:steps].double().mean(dim=0)  # [N]
    return _judged(per_image, result.layers[:steps], threshold, seed)


def data_randomization(
    trained: nn.Module,
    random_labels: nn.Module,
    images: Tensor,
    targets: Tensor,
    method: AttributionMethod,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
) -> tuple[Tensor, RandomizationVerdict]:
    """Adebayo et al.'s second test, data randomization: the maps of a model trained on permuted labels
    compared with the real model's.

    Adebayo et al. (2018), the data randomization test: the same architecture trained on the same
    images with their labels randomly permuted can only memorize; a method that explains what the real
    model learned must give different maps for the two. Per image, the Spearman rank correlation of the two
    absolute maps; the verdict is judged as :func:`randomization_verdict`'s (a bootstrap interval over images
    against ``threshold``).

    Args:
        trained: the model trained on the true labels; ``method`` must leave it as it found it.
        random_labels: the same architecture trained on permuted labels.
        images: ``[N, C, H, W]`` float, normalized as both models expect.
        targets: ``[N]`` integer class indices, passed to ``method`` for both models.
        method: ``method(model, images, targets) -> maps [N, H, W]``.
        threshold: a correlation in ``[-1, 1]``.
        seed: seeds the bootstrap.

    Returns:
        ``(spearman [N] on CPU, verdict)``; the verdict's ``layers`` is empty.

    Raises:
        ValueError: on malformed images/targets, a method whose maps are not ``[N, H, W]``, or a threshold
            outside ``[-1, 1]``.
    """
    check_images_targets(images, targets)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    real = _checked_maps(method, trained, images, targets)
    memorized = _checked_maps(method, random_labels, images, targets)
    spearman = spearman_rank_correlation(real.abs(), memorized.abs())  # [N]
    return spearman, _judged(spearman.double(), (), threshold, seed)


def _judged(per_image: Tensor, layers: tuple[str, ...], threshold: float, seed: int) -> RandomizationVerdict:
    """Mean of ``[N]`` correlations with its bootstrap interval, judged against ``threshold``."""
    low, high = bootstrap_interval(per_image, seed=seed)
    verdict = "pass" if high < threshold else "fail" if low >= threshold else "unclear"
    return RandomizationVerdict(layers, float(per_image.mean()), low, high, threshold, verdict)


def passes_randomization_check(
    result: RandomizationResult, *, threshold: float = DEFAULT_THRESHOLD, over: str = "classifier"
) -> bool:
    """Whether the maps depend on the model's weights: rank correlation with the trained maps below ``threshold``.

    Adebayo et al. (2018) judged by eye and by rank correlation, without a fixed cut-off. Here:

    - ``over="classifier"`` (default): :func:`randomization_verdict` passes, i.e. the bootstrap interval of the
      mean correlation at the classifier steps lies below ``threshold``. A method whose maps survive the
      re-initialization of the layers that decide the class fails even if the lowest layers finally change
      them: guided backpropagation's failure in Adebayo et al.'s figure 2.
    - ``over="cascade"``: the mean over images and all steps (the normalized area under the cascade's curve)
      is below ``threshold``. Lenient: a map that survives the classifier but changes with the convolutions
      below can pass (Grad-CAM++ on the small CNN: 0.75-0.85 at the classifier steps, below 0.5 on average).
    - ``over="end"``: after the last step only, with every layer random; passes the known failure.

    0.5: a map that shares more than half its ranking with the trained map while the weights it is meant
    to explain are random is explained mostly by the input; absolute maps of unrelated models keep some
    correlation through the image's own edges, so the bar is not 0.

    Args:
        result: from :func:`cascading_randomization`.
        threshold: in ``[-1, 1]``.
        over: one of :data:`OVER`.

    Returns:
        True if the chosen correlation is below ``threshold``.

    Raises:
        ValueError: if ``threshold`` is outside ``[-1, 1]`` or ``over`` is not one of :data:`OVER`.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    if over not in OVER:
        raise ValueError(f"over must be one of {list(OVER)}, got {over!r}")
    if over == "classifier":
        return randomization_verdict(result, threshold=threshold).passes
    correlation = result.spearman_mean.mean() if over == "cascade" else result.spearman_mean[-1]
    return bool(correlation < threshold)


def spearman_rank_correlation(first: Tensor, second: Tensor) -> Tensor:
    """Spearman rank correlation between two maps per image, ties given their average rank.

    A constant map has no ranking: the correlation is 0 where exactly one of the two maps is constant, 1
    where both are.

    Args:
        first: ``[N, ...]`` values, one map per image.
        second: same shape.

    Returns:
        float ``[N]`` in ``[-1, 1]``, on CPU.

    Raises:
        ValueError: if the shapes differ.
    """
    if first.shape != second.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    ranks_first = _average_ranks(first.detach().flatten(1).double().cpu())  # [N, P]
    ranks_second = _average_ranks(second.detach().flatten(1).double().cpu())
    centred_first = ranks_first - ranks_first.mean(dim=1, keepdim=True)
    centred_second = ranks_second - ranks_second.mean(dim=1, keepdim=True)
    norm_first = centred_first.norm(dim=1)
    norm_second = centred_second.norm(dim=1)
    constant_first, constant_second = norm_first == 0, norm_second == 0
    correlation = (centred_first * centred_second).sum(dim=1) / (norm_first * norm_second).clamp_min(1e-300)
    correlation = torch.where(constant_first | constant_second, 0.0, correlation.clamp(-1.0, 1.0))
    return torch.where(constant_first & constant_second, 1.0, correlation).float()


def structural_similarity(first: Tensor, second: Tensor) -> Tensor:
    """Mean SSIM per image of two maps with values in ``[0, 1]``.

    Wang, Bovik, Sheikh, Simoncelli (2004), "Image Quality Assessment: From Error Visibility to Structural
    Similarity", eq. 13 with the Gaussian window of section III.C (11x11, sigma 1.5), K1 = 0.01, K2 = 0.03,
    dynamic range 1, averaged over the window positions that fit inside the map (eq. 17's mean SSIM). A map
    smaller than 11 pixels gets the largest odd window that fits.

    Args:
        first: ``[N, H, W]`` in ``[0, 1]``.
        second: same shape.

    Returns:
        float ``[N]``, 1 for identical maps, on CPU.

    Raises:
        ValueError: if the shapes differ or are not ``[N, H, W]``.
    """
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(f"maps must both be [N, H, W], got {tuple(first.shape)} and {tuple(second.shape)}")
    size = min(_SSIM_WINDOW, first.shape[1], first.shape[2])
    size -= 1 - size % 2  # odd, so that the window has a centre pixel
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    line = line / line.sum()  # the 2-D window is outer(line, line): filter rows, then columns
    # float32: the variances' cancellation error (~1e-7 for values in [0, 1]) is far below C2 = 9e-4, and
    # CPU convolutions in float64 take a slow path.
    x = first.detach().float().cpu()
    y = second.detach().float().cpu()
    moments = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # [N, 5, H, W]
    moments = F.conv2d(moments, line.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    moments = F.conv2d(moments, line.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)  # [N, 5, H', W']
    mean_x, mean_y, square_x, square_y, product = moments.unbind(dim=1)
    var_x = square_x - mean_x**2
    var_y = square_y - mean_y**2
    covariance = product - mean_x * mean_y
    ssim = ((2 * mean_x * mean_y + _SSIM_C1) * (2 * covariance + _SSIM_C2)) / (
        (mean_x**2 + mean_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    return ssim.flatten(1).mean(dim=1)


def _randomization_steps(network: nn.Module, image: Tensor) -> list[tuple[str, list[nn.Module]]]:
    """``(name, modules)`` per step, logits first: each weight layer the forward pass runs, with its BatchNorm."""
    modules = dict(network.named_modules())
    candidates = [name for name, module in modules.items() if isinstance(module, (nn.Linear, _ConvNd, _BatchNorm))]
    calls: list[str] = []

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if name not in calls:
            calls.append(name)

    # The order the forward pass runs them in, which registration order need not be.
    with preserved_model_state(network), forward_hooks(network, candidates, record), torch.no_grad():
        network.eval()
        network(image.detach().to(model_device(network)))
    steps: list[tuple[str, list[nn.Module]]] = []
    previous = None
    for name in calls:
        module = modules[name]
        if not isinstance(module, _BatchNorm):
            steps.append((name, [module]))
        elif steps and previous == steps[-1][0]:
            steps[-1][1].append(module)  # a BatchNorm right after a weight layer belongs to its step
        previous = name
    return steps[::-1]


def reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialization of a Linear/Conv layer, drawn from ``generator``; BatchNorm reset."""
    with torch.no_grad():
        if isinstance(module, _BatchNorm):
            module.reset_parameters()  # running mean 0, variance 1, weight 1, bias 0: nothing random
            return
        weight = module.weight
        bound = 1 / math.sqrt(weight[0].numel())  # fan_in = in_channels / groups * kernel size
        for parameter in (weight, module.bias):
            if parameter is not None:
                values = torch.empty(parameter.shape, dtype=parameter.dtype)
                parameter.copy_(values.uniform_(-bound, bound, generator=generator))


def _checked_maps(method: AttributionMethod, network: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    maps = method(network, images, targets)
    expected = (images.shape[0], *images.shape[2:])
    if maps.shape != expected:
        raise ValueError(f"method must return maps [N, H, W] = {list(expected)}, got {tuple(maps.shape)}")
    return maps.detach().float().cpu()


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0..P-1`` along dim 1 of ``[N, P]``, tied values sharing the mean of their ranks."""
    ordered, order = values.sort(dim=1, stable=True)
    positions = torch.arange(values.shape[1], dtype=values.dtype).expand_as(values)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # first of a run of ties
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]  # last of a run of ties
    first_position = torch.where(new, positions, 0.0).cummax(dim=1).values
    # The same from the right: in flipped order ``positions`` counts P - 1 - p, and the last run end seen wins.
    last_position = values.shape[1] - 1 - torch.where(last.flip(1), positions, 0.0).cummax(dim=1).values.flip(1)
    mean_rank = (first_position + last_position) / 2  # [N, P] in sorted order
    return torch.empty_like(values).scatter_(1, order, mean_rank)


def unit_range(maps: Tensor) -> Tensor:
    """Each ``[H, W]`` map of ``[N, H, W]`` scaled to ``[0, 1]`` by its own min and max; a constant map -> 0."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = (flat.max(dim=1).values[:, None, None] - low).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps - low) / span
