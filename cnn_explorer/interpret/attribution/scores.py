"""Every registered method scored on the same images: faithfulness, the randomization check, completeness, cost.

The numbers the report's attribution table and the explanation-scores callback show, computed one way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.attribution import METHODS, check_methods
from cnn_explorer.interpret.attribution.faithfulness import PerturbationCurves, deletion_insertion, random_order_curves
from cnn_explorer.interpret.attribution.integrated_gradients import CompletenessError, completeness_error
from cnn_explorer.interpret.attribution.sanity import RandomizationResult, cascading_randomization
from cnn_explorer.interpret.model_state import model_device


@dataclass(frozen=True)
class MethodScores:
    """One method's scores.

    Attributes:
        name: the registered method.
        seconds_per_image: wall-clock seconds to compute one image's map (the faithfulness images' mean).
        curves: deletion and insertion curves on the faithfulness images.
        randomization: the cascading randomization check on the sanity images.
        completeness: for a method that sums to the logit's change (Integrated Gradients), how far it does.
    """

    name: str
    seconds_per_image: float
    curves: PerturbationCurves
    randomization: RandomizationResult
    completeness: CompletenessError | None


def score_methods(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    sanity_images: Tensor,
    sanity_targets: Tensor,
    methods: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    steps: int = 32,
    baseline: str = "blur",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, MethodScores], PerturbationCurves]:
    """Score ``methods`` on ``images`` (faithfulness) and ``sanity_images`` (randomization check).

    Args:
        model: the trained net; left as it was found.
        images: ``[N, C, H, W]`` normalized images for the deletion/insertion curves, ``targets`` ``[N]``.
        sanity_images: ``[M, C, H, W]`` normalized images for the cascading randomization check (Adebayo et al.
            2018), ``sanity_targets`` ``[M]``.
        methods: registered method names.
        options: per method, its keyword options (see :func:`~cnn_explorer.interpret.attribution.method_options`).
        steps: chunks of the deletion/insertion curves.
        baseline: what deleted pixels become (see :mod:`~cnn_explorer.interpret.attribution.faithfulness`).
        seed: seeds the random pixel order and the re-initialization of the randomization check.
        progress: called with the name of each step before it runs (a progress bar).

    Returns:
        the scores by method name, and the random pixel order's curves (the chance level).
    """
    options = options or {}
    report = progress or (lambda _: None)
    report("random order")
    chance = random_order_curves(model, images, targets, seed=seed, steps=steps, baseline=baseline)
    scores = {}
    for name in check_methods(methods):
        method = partial(METHODS[name].fn, **options.get(name, {}))
        report(name)
        start = time.perf_counter()
        maps = method(model, images, targets)
        if maps.is_cuda:
            torch.cuda.synchronize(maps.device)
        seconds = (time.perf_counter() - start) / len(images)
        curves = deletion_insertion(model, images, targets, maps, steps=steps, baseline=baseline)
        randomization = cascading_randomization(model, sanity_images, sanity_targets, method, seed=seed)
        completeness = None
        if METHODS[name].complete:
            baseline_option = options.get(name, {}).get("baseline")
            completeness = completeness_error(
                model, images.to(model_device(model)), targets, maps, baseline=baseline_option
            )
        scores[name] = MethodScores(name, seconds, curves, randomization, completeness)
    return scores, chance
