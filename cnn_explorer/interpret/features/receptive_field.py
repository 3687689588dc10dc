"""Receptive field of every layer of a sequential conv/pool chain, derived from the architecture.

Araujo, Norris, Sim (2019), "Computing Receptive Fields of Convolutional Neural Networks", Distill,
section "Single-path networks": the field size ``r = 1 + sum_l (k_l - 1) prod_{i<l} s_i`` and the start
``u = -sum_l p_l prod_{i<l} s_i``, accumulated layer by layer from the input up. For a layer ``l`` with
(effective) kernel ``k_l``, stride ``s_l`` and padding ``p_l``, on top of layer ``l - 1`` whose field has
side ``r``, jump ``j`` (input pixels between neighbouring outputs) and start ``u`` (input coordinate of
the top-left pixel of output ``(0, 0)``'s field)::

    r_l = r_{l-1} + (k_l - 1) * j_{l-1}
    j_l = j_{l-1} * s_l
    u_l = u_{l-1} - p_l * j_{l-1}

starting from the input itself, ``r_0 = 1, j_0 = 1, u_0 = 0``. A dilated kernel counts as its effective
extent ``d * (k - 1) + 1``. Max- and average-pooling are windows like convolutions; BatchNorm, ReLU,
Dropout and other element-wise modules leave the field as it is. ``ceil_mode`` changes how many outputs
there are, not where each one looks, so it does not enter.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Modules that act on each position independently: the field passes through them unchanged.
_POINTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


@dataclass(frozen=True)
class ReceptiveField:
    """Where one output pixel of a layer looks in the input image.

    Attributes:
        size: side of the (square) field in input pixels.
        stride: input pixels between the fields of horizontally (or vertically) neighbouring outputs,
            the "jump" of Araujo et al.
        start: input coordinate (row and column alike) of the top-left pixel of output ``(0, 0)``'s field;
            negative when padding makes the field reach beyond the image.
    """

    size: int
    stride: int
    start: int

    @property
    def center(self) -> float:
        """Input coordinate of output ``(0, 0)``'s field centre, ``start + (size - 1) / 2`` (x.5 for even sizes)."""
        return self.start + (self.size - 1) / 2


def receptive_fields(model: nn.Module) -> dict[str, ReceptiveField]:
    """The receptive field of every module of ``model.features`` (or of ``model`` if it is an ``nn.Sequential``).

    Modules are walked in forward order, which for an ``nn.Sequential`` is registration order; a nested
    ``nn.Sequential`` (such as :class:`cnn_explorer.models.ConvBlock`) is walked through and gets the field
    of its last child. Keys are dotted names as in ``model.named_modules()``: for a
    :class:`cnn_explorer.models.ConvNet`, ``features.conv1``, ``features.conv1.conv``, ``features.conv1.relu``,
    ``features.pool1``, ...

    Araujo, Norris, Sim (2019), "Computing Receptive Fields of Convolutional Neural Networks", Distill,
    single-path recurrence (see the module docstring).

    Args:
        model: a network with an ``nn.Sequential`` attribute ``features`` of Conv2d, MaxPool2d, AvgPool2d and
            element-wise modules (BatchNorm2d, activations, Dropout), possibly grouped in nested Sequentials;
            or such an ``nn.Sequential`` itself.

    Returns:
        ``{dotted name: ReceptiveField}`` in forward order (a nested Sequential right after its last child).

    Raises:
        ValueError: if the model has no sequential ``features`` chain, or a module in it is not one of the
            kinds above (the message names it), or a kernel, stride, padding or dilation is not square.
    """
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        prefix = "features"
    elif isinstance(model, nn.Sequential):
        features, prefix = model, ""
    else:
        raise ValueError(
            f"model must be an nn.Sequential or have an nn.Sequential `features` attribute, got {type(model).__name__}"
        )
    fields: dict[str, ReceptiveField] = {}
    _walk(features, prefix, ReceptiveField(size=1, stride=1, start=0), fields)
    return fields


def field_box(rf: ReceptiveField, y: int, x: int, image_size: int | tuple[int, int]) -> tuple[int, int, int, int]:
    """The input pixels that output ``(y, x)`` of a layer sees, clipped to the image.

    Args:
        rf: the layer's field, from :func:`receptive_fields`.
        y: output row.
        x: output column.
        image_size: input side, or ``(height, width)``.

    Returns:
        ``(top, left, bottom, right)`` with ``bottom`` and ``right`` exclusive, so that
        ``image[..., top:bottom, left:right]`` is the visible part of the field.

    Raises:
        ValueError: if ``y`` or ``x`` is negative, or ``image_size`` is not positive.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if y < 0 or x < 0:
        raise ValueError(f"output position (y, x) must be >= 0, got ({y}, {x})")
    top = rf.start + y * rf.stride
    left = rf.start + x * rf.stride
    return (
        min(max(top, 0), height),
        min(max(left, 0), width),
        min(max(top + rf.size, 0), height),
        min(max(left + rf.size, 0), width),
    )


def _walk(
    sequence: nn.Sequential, prefix: str, rf: ReceptiveField, fields: dict[str, ReceptiveField]
) -> ReceptiveField:
    for child_name, module in sequence.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(module, nn.Sequential):
            rf = _walk(module, name, rf, fields)
        elif isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            rf = _window(module, name, rf)
        elif isinstance(module, _POINTWISE):
            pass
        else:
            raise ValueError(
                f"cannot derive a receptive field through {name!r} ({type(module).__name__}); supported: Conv2d, "
                f"MaxPool2d, AvgPool2d, nested nn.Sequential and element-wise {[t.__name__ for t in _POINTWISE]}"
            )
        fields[name] = rf
    return rf


def _window(module: nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d, name: str, rf: ReceptiveField) -> ReceptiveField:
    kernel = _square(module.kernel_size, "kernel_size", name)
    # Pools default their stride to the kernel size; a stride of None or () means that too.
    stride = _square(module.stride or module.kernel_size, "stride", name)
    dilation = _square(getattr(module, "dilation", 1), "dilation", name)
    extent = dilation * (kernel - 1) + 1
    padding = module.padding
    if isinstance(padding, str):
        # Conv2d(padding="same") pads (extent - 1) // 2 before and the rest after; "valid" pads nothing.
        padding = 0 if padding == "valid" else (extent - 1) // 2
    padding = _square(padding, "padding", name)
    return ReceptiveField(
        size=rf.size + (extent - 1) * rf.stride,
        stride=rf.stride * stride,
        start=rf.start - padding * rf.stride,
    )


def _square(value: int | tuple[int, ...], what: str, name: str) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"{name!r}: only square windows are supported, got {what}={value}")
    return int(value[0])
