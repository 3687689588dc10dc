"""Attribution methods: which input pixels a class score depends on, one pure function per method.

Every method has the signature ``method(model, images, targets, **options) -> maps``: normalized float
images ``[N, C, H, W]`` and class indices ``[N]`` in, maps ``[N, H, W]`` out ("higher = more evidence for
the target"), the model left as it was found (:mod:`cnn_explorer.interpret.model_state`). :data:`METHODS`
is the registry the attribution callback and the report's attribution section read: a method added here
appears in TensorBoard (``callbacks.attributions.methods``) and in the report without further code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.attribution.gradient import gradient, gradient_x_input

AttributionFn = Callable[..., Tensor]
"""``fn(model, images [N, C, H, W], targets [N], **options) -> maps [N, H, W]``."""


@dataclass(frozen=True)
class AttributionMethod:
    """A registered method: its function, a short column title, and the sentence the report says about it."""

    name: str
    fn: AttributionFn
    title: str
    description: str


METHODS: dict[str, AttributionMethod] = {
    method.name: method
    for method in (
        AttributionMethod(
            "gradient",
            gradient,
            "gradient",
            "the magnitude of the gradient of the true class's logit w.r.t. each input pixel, max over colour "
            "channels (Simonyan et al. 2014)",
        ),
        AttributionMethod(
            "gradient_x_input",
            gradient_x_input,
            "gradient x input",
            "the gradient of the true class's logit times the (normalized) input, summed over colour channels "
            "(Shrikumar et al. 2016; Ancona et al. 2018)",
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
        raise BadArgument(f"methods must be a non-empty list of {sorted(METHODS)}, got {list(names)}")
    return list(names)


def attribute(name: str, model: nn.Module, images: Tensor, targets: Tensor, **options: object) -> Tensor:
    """Run the registered method ``name``: maps ``[N, H, W]`` for ``images [N, C, H, W]`` and ``targets [N]``."""
    return METHODS[check_methods([name])[0]].fn(model, images, targets, **options)
