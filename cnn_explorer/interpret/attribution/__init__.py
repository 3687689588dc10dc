"""Attribution methods: which input pixels a class score depends on, one pure function per method.

Every method has the signature ``method(model, images, targets, **options) -> maps``: normalized float
images ``[N, C, H, W]`` and class indices ``[N]`` in, maps ``[N, H, W]`` out ("higher = more evidence for
the target"), the model left as it was found (:mod:`cnn_explorer.interpret.model_state`). :data:`METHODS`
is the registry the attribution callbacks and the report's attribution section read: a method added here
appears in TensorBoard (``callbacks.attributions.methods``) and in the report without further code. Their
validity is measured by :mod:`~cnn_explorer.interpret.attribution.sanity` (does the map depend on the
weights?) and :mod:`~cnn_explorer.interpret.attribution.faithfulness` (does the model's confidence follow it?).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.attribution.cam import grad_cam, grad_cam_plus_plus
from cnn_explorer.interpret.attribution.gradient import gradient, gradient_x_input
from cnn_explorer.interpret.attribution.guided_backprop import guided_backprop
from cnn_explorer.interpret.attribution.integrated_gradients import integrated_gradients
from cnn_explorer.interpret.attribution.smoothgrad import smoothgrad

AttributionFn = Callable[..., Tensor]
"""``fn(model, images [N, C, H, W], targets [N], **options) -> maps [N, H, W]``."""


@dataclass(frozen=True)
class AttributionMethod:
    """A registered method: its function, the options it takes, a short column title, and the sentence the
    report says about it. ``negative_control`` marks a method known to fail the randomization check (Adebayo
    et al. 2018): if the check passes it, the check is wrong."""

    name: str
    fn: AttributionFn
    title: str
    description: str
    options: tuple[str, ...] = ()
    negative_control: bool = False
    complete: bool = False  # the map sums to the logit's change from the baseline (completeness is checked)


METHODS: dict[str, AttributionMethod] = {
    method.name: method
    for method in (
        AttributionMethod(
            "gradient",
            gradient,
            "gradient",
            "the magnitude of the gradient of the class logit w.r.t. each input pixel, max over colour channels "
            "(Simonyan et al. 2014)",
        ),
        AttributionMethod(
            "gradient_x_input",
            gradient_x_input,
            "gradient x input",
            "the gradient of the class logit times the (normalized) input, summed over colour channels "
            "(Shrikumar et al. 2016; Ancona et al. 2018)",
        ),
        AttributionMethod(
            "smoothgrad",
            smoothgrad,
            "SmoothGrad",
            "the gradient averaged over noisy copies of the image, then its magnitude (Smilkov et al. 2017)",
            options=("noise", "samples", "seed"),
        ),
        AttributionMethod(
            "integrated_gradients",
            integrated_gradients,
            "Integrated Gradients",
            "the gradient integrated along the path from a baseline to the image, times the difference, summed "
            "over colour channels; the map sums to the logit's change (Sundararajan et al. 2017)",
            options=("baseline", "steps"),
            complete=True,
        ),
        AttributionMethod(
            "grad_cam",
            grad_cam,
            "Grad-CAM",
            "the last conv block's channels weighted by their average gradient, ReLU, upsampled "
            "(Selvaraju et al. 2017)",
            options=("layer",),
        ),
        AttributionMethod(
            "grad_cam_plus_plus",
            grad_cam_plus_plus,
            "Grad-CAM++",
            "like Grad-CAM, with pixel-wise weights from higher-order derivatives (Chattopadhyay et al. 2018, eq. 19)",
            options=("layer",),
        ),
        AttributionMethod(
            "guided_backprop",
            guided_backprop,
            "guided backprop",
            "the gradient with negative signals stopped at every ReLU, magnitude (Springenberg et al. 2015); "
            "the known negative control: nearly independent of the upper layers' weights (Adebayo et al. 2018)",
            negative_control=True,
        ),
    )
}


def check_methods(names: Sequence[str]) -> list[str]:
    """The names as a list, if every one is a registered method.

    Raises:
        BadArgument: naming the unknown methods and listing the registered ones.
    """
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise BadArgument(f"methods must be a non-empty list of {list(METHODS)}, got {list(names)}")
    return list(names)


def method_options(name: str, layer: str | None, options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The keyword options for method ``name``: ``layer`` where it takes one (the CAM methods), and its entry of
    ``options`` (``{"integrated_gradients": {"steps": 32}}``).

    Raises:
        BadArgument: on options for an unknown method or an option the method does not take.
    """
    chosen = dict((options or {}).get(name, {}))
    for other in options or {}:
        check_methods([other])
    unknown = [key for key in chosen if key not in METHODS[name].options]
    if unknown:
        raise BadArgument(f"{name} takes the options {list(METHODS[name].options)}, got {unknown}")
    if layer is not None and "layer" in METHODS[name].options:
        chosen.setdefault("layer", layer)
    return chosen


def attribute(name: str, model: nn.Module, images: Tensor, targets: Tensor, **options: object) -> Tensor:
    """Run the registered method ``name``: maps ``[N, H, W]`` for ``images [N, C, H, W]`` and ``targets [N]``."""
    return METHODS[check_methods([name])[0]].fn(model, images, targets, **options)
