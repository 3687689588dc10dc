"""Receptive field of every layer of a CNN, derived from the ops its forward pass runs: chains and residual nets.

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

Several paths (Araujo et al., "Handling multi-path networks"): where branches meet (a residual sum, a
concatenation over channels) the unit sees the union of its paths' fields, so a ResNet block's field is its
main branch's, which contains the 1x1 shortcut's. The ops come from one traced forward pass
(:func:`receptive_fields`), so no architecture's names are assumed; the fields are checked against the extent of
the nonzero input gradient of a unit in tests/test_large_model_features.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state

DEFAULT_IMAGE_SIZE = 224
"""Side of the zero image :func:`receptive_fields` traces: ImageNet's, which every torchvision CNN accepts."""


@dataclass(frozen=True)
class ReceptiveField:
    """Where one output pixel of a layer looks in the input image.

    Attributes:
        size: side of the (square) field in input pixels: over several paths, the largest (their union).
        stride: input pixels between the fields of horizontally (or vertically) neighbouring outputs,
            the "jump" of Araujo et al.
        start: input coordinate (row and column alike) of the top-left pixel of output ``(0, 0)``'s field;
            negative when padding makes the field reach beyond the image.
        global_context: whether the output also depends on every input pixel through a global pool multiplied
            back onto the map (a squeeze-and-excitation gate, as in MobileNetV3 and EfficientNet): ``size`` is
            then the field of the local paths, the ones a crop can show.
    """

    size: int
    stride: int
    start: int
    global_context: bool = False

    @property
    def center(self) -> float:
        """Input coordinate of output ``(0, 0)``'s field centre, ``start + (size - 1) / 2`` (x.5 for even sizes)."""
        return self.start + (self.size - 1) / 2

    def exceeds(self, image_size: int | tuple[int, int]) -> bool:
        """Whether the field is larger than the image (side, or ``(height, width)``) along either axis: then no
        unit sees all of its field, and a crop of it is clipped to the image."""
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        return self.size > min(height, width)


def receptive_fields(
    model: nn.Module, image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE, in_channels: int | None = None
) -> dict[str, ReceptiveField]:
    """The receptive field of every module of ``model`` whose output is a spatial map ``[B, C, h, w]``, any net.

    One forward pass of a zero image (eval mode, no gradients, the model left as it was) is traced op by op
    below autograd (a ``TorchDispatchMode``); each tensor carries the field of its pixel ``(0, 0)``:

    * convolutions and max/average pools apply the single-path recurrence of the module docstring (Araujo et
      al. 2019); an adaptive pool whose windows divide its input evenly is such a window too;
    * element-wise ops (ReLU and other activations, BatchNorm, dropout, copies, views that keep the spatial
      axes) leave it as it is;
    * ops with several spatial inputs (a residual ``out += identity``, ``torch.cat`` over channels, an
      element-wise product) take the union of their inputs' fields: the largest over paths, so the main
      branch's field contains a 1x1 shortcut's (Araujo et al., "Handling multi-path networks": the field of a
      multi-path unit is the union over its paths);
    * a global pool (``mean`` over the spatial axes, an adaptive pool to 1x1) or a flatten makes a tensor with
      no spatial field; multiplied back onto a map (a squeeze-and-excitation gate) it sets
      :attr:`ReceptiveField.global_context` and leaves the local field as it was.

    A module called more than once (torchvision's ResNet blocks reuse one ReLU) gets its last call's field, that
    of the block's output. Keys are dotted names as in ``model.named_modules()``, in the order the modules finish their
    forward (a container right after its last child): ``features.conv1.conv``, ``features.conv1``, ... for
    a :class:`cnn_explorer.models.ConvNet`; ``conv1``, ``bn1``, ..., ``layer1.0``, ``layer1``, ... for a
    torchvision ResNet.

    Fields do not depend on the image size; ``image_size`` only has to be one the convolutions accept. A head
    sized for another resolution (a ``Linear`` after a flatten) may fail on it: the forward stops there, since
    nothing after a flatten has a spatial field.

    Args:
        model: the network; modes, flags, grads and hooks are left as they were.
        image_size: side (or ``(height, width)``) of the traced zero image.
        in_channels: its channels; None for the ``in_channels`` of the model's first ``nn.Conv2d``.

    Returns:
        ``{dotted name: ReceptiveField}`` for every module whose output has a spatial field (the root excluded).

    Raises:
        ValueError: if a spatial map goes through an op whose field is not derived here (upsampling, a transposed
            convolution, a concatenation along a spatial axis; the message names the module and the op), a window
            or padding is not square, paths of different strides meet, or the forward fails before its head.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError(f"{type(model).__name__} has no nn.Conv2d; pass in_channels")
        in_channels = first.in_channels
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    tracer = _Tracer()
    fields: dict[str, ReceptiveField] = {}

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        state = tracer.states.get(id(output)) if isinstance(output, Tensor) else None
        if isinstance(state, _Unknown):
            raise ValueError(
                f"cannot derive a receptive field through {name!r} ({type(module).__name__}): it runs {state.op}, "
                "which is not a window, an element-wise op or a merge of paths"
            )
        if isinstance(state, ReceptiveField):
            fields[name] = state  # a module called again (a reused ReLU) keeps its last call's, the block's output

    names = [name for name, _ in model.named_modules() if name]
    with preserved_model_state(model), forward_hooks(model, names, record), torch.no_grad():
        model.eval()
        image = torch.zeros(1, in_channels, height, width, dtype=dtype, device=model_device(model))
        tracer.set(image, ReceptiveField(size=1, stride=1, start=0))
        try:
            with tracer:
                model(image)
        except _HeadFailed:
            pass  # a head sized for another resolution: every spatial layer ran before it
        except RuntimeError as error:
            raise ValueError(
                f"{type(model).__name__}'s forward failed on a {height}x{width} zero image ({error}); pass an "
                "image_size (and in_channels) it accepts"
            ) from error
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


class _Unknown:
    """The state of a map made by an op whose field is not derived here; names the op for the error."""

    def __init__(self, op: str) -> None:
        self.op = op


_NONSPATIAL = "nonspatial"  # the state of a tensor with no spatial field: globally pooled or flattened
State = ReceptiveField | _Unknown | str

# Ops that act on each position on its own, beyond those tagged torch.Tag.pointwise.
_SAME_FIELD = {
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "native_group_norm",
    "native_dropout",
    "hardswish",
    "hardswish_",
    "gelu",
    "gelu_",
    "silu",
    "silu_",
    "clone",
    "detach",
    "alias",
    "_to_copy",
    "copy_",
    "lift_fresh",
    "_softmax",
    "_log_softmax",
}
_WINDOWS = {"convolution", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_ADAPTIVE = {"_adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp"}
_SHAPES = {"view", "_unsafe_view", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "permute", "t", "transpose"}
_LINEAR = {"addmm", "mm", "bmm", "matmul", "linear"}


class _HeadFailed(Exception):
    """An op on tensors with no spatial field failed: a head sized for another resolution; stop the forward."""


class _Tracer(TorchDispatchMode):
    """Carries each tensor's field (its pixel ``(0, 0)``'s) through every op of a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, State] = {}
        self._alive: list[Tensor] = []  # keeps traced tensors alive, so that no other tensor reuses their id

    def set(self, tensor: Tensor, state: State) -> None:
        self.states[id(tensor)] = state
        self._alive.append(tensor)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        traced = [
            self.states[id(a)] for a in tree_leaves((args, kwargs)) if isinstance(a, Tensor) and id(a) in self.states
        ]
        try:
            output = func(*args, **kwargs)
        except RuntimeError as error:
            if traced and not any(isinstance(s, ReceptiveField) for s in traced):
                raise _HeadFailed from error
            raise
        if traced:
            state = _apply(func, args, traced, output)
            for tensor in tree_leaves(output):
                if isinstance(tensor, Tensor):
                    self.set(tensor, state)
        return output


def _apply(func: Any, args: tuple[Any, ...], traced: list[State], output: Any) -> State:
    """The field of ``func``'s output from its inputs' (``traced``, in argument order)."""
    name = func.overloadpacket.__name__
    unknown = next((s for s in traced if isinstance(s, _Unknown)), None)
    if unknown is not None:
        return unknown
    source = traced[0]
    first = args[0]
    if name in _WINDOWS:
        if not isinstance(source, ReceptiveField):
            return source
        if name == "convolution":
            if args[6]:
                return _Unknown("a transposed convolution")
            kernel, stride, padding, dilation = tuple(args[1].shape[2:]), args[3], args[4], args[5]
        else:
            kernel = args[1]
            stride = args[2] if len(args) > 2 and args[2] else kernel  # a pool's stride defaults to its kernel
            padding = args[3] if len(args) > 3 else 0
            dilation = args[4] if len(args) > 4 and name != "avg_pool2d" else 1
        return _window(source, kernel, stride, padding, dilation, str(func))
    if name in _ADAPTIVE:
        if not isinstance(source, ReceptiveField):
            return source
        before, after = first.shape[-2:], tree_leaves(output)[0].shape[-2:]
        if before == after:
            return source
        if (
            after[0] == after[1]
            and all(b % a == 0 for b, a in zip(before, after, strict=True))
            and before[0] == before[1]
        ):
            window = before[0] // after[0]  # even windows: an ordinary pool of kernel = stride = input / output
            return _window(source, window, window, 0, 1, str(func))
        return _NONSPATIAL
    if name in _REDUCTIONS:
        dims = args[1] if len(args) > 1 else None
        if not isinstance(source, ReceptiveField) or not isinstance(first, Tensor) or first.ndim < 3:
            return source
        dims = [dims] if isinstance(dims, int) else dims
        spatial = {first.ndim - 2, first.ndim - 1}
        if dims is None or any(d % first.ndim in spatial for d in dims):
            return _NONSPATIAL
        return source
    if name in _SHAPES:
        result = tree_leaves(output)[0]
        if isinstance(source, ReceptiveField) and (result.ndim < 3 or result.shape[-2:] != first.shape[-2:]):
            return _NONSPATIAL  # the positions were merged or moved: no spatial field any more
        return source
    if name == "constant_pad_nd":
        pad = list(args[1])
        if not isinstance(source, ReceptiveField) or len(pad) < 4:
            return source
        if pad[0] != pad[2]:
            raise ValueError(f"only square paddings are supported, got {pad} in {func}")
        return ReceptiveField(source.size, source.stride, source.start - pad[0] * source.stride, source.global_context)
    if name == "cat":
        dim = args[1] if len(args) > 1 else 0
        result = tree_leaves(output)[0]
        if result.ndim >= 3 and dim % result.ndim >= result.ndim - 2:
            return _Unknown(f"{func} along a spatial axis")
        return _union(traced)
    if name in _LINEAR or name in _SAME_FIELD or torch.Tag.pointwise in func.tags:
        if name in _LINEAR and any(isinstance(s, ReceptiveField) for s in traced):
            return _Unknown(str(func))
        return _union(traced)
    if any(isinstance(s, ReceptiveField) for s in traced):
        return _Unknown(str(func))
    return _NONSPATIAL


def _union(states: list[State]) -> State:
    """The union of the fields of paths that meet (the largest over paths); a non-spatial path is a global gate."""
    fields = [s for s in states if isinstance(s, ReceptiveField)]
    if not fields:
        return _NONSPATIAL
    strides = {f.stride for f in fields}
    if len(strides) > 1:
        raise ValueError(f"paths of different strides {sorted(strides)} meet in one op; their fields do not align")
    start = min(f.start for f in fields)
    end = max(f.start + f.size for f in fields)
    gated = len(fields) < len(states) or any(f.global_context for f in fields)
    return ReceptiveField(size=end - start, stride=fields[0].stride, start=start, global_context=gated)


def _window(rf: ReceptiveField, kernel: Any, stride: Any, padding: Any, dilation: Any, op: str) -> ReceptiveField:
    kernel, stride, padding, dilation = (
        _square(value, what, op)
        for value, what in ((kernel, "kernel_size"), (stride, "stride"), (padding, "padding"), (dilation, "dilation"))
    )
    extent = dilation * (kernel - 1) + 1  # a dilated kernel spans d * (k - 1) + 1 pixels
    return ReceptiveField(
        size=rf.size + (extent - 1) * rf.stride,
        stride=rf.stride * stride,
        start=rf.start - padding * rf.stride,
        global_context=rf.global_context,
    )


def _square(value: int | tuple[int, ...] | list[int], what: str, op: str) -> int:
    if isinstance(value, int):
        return value
    values = list(value)
    if len(set(values)) != 1:
        raise ValueError(f"{op}: only square windows are supported, got {what}={values}")
    return int(values[0])
