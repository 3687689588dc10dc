"""Feature visualization by optimization: the input a channel (or a class logit) likes most.

Olah, Mordvintsev, Schubert (2017), "Feature Visualization", Distill: start from noise and follow the
gradient of a unit's activation w.r.t. the input, with

* transformation robustness ("Transformation robustness"): every step sees the image randomly shifted
  by a few pixels, scaled and rotated a little, so that the result cannot rely on pixel-exact
  high-frequency patterns that only excite the unit at one alignment;
* a preconditioned parameterization ("Preconditioning and Parameterization"): the image is the inverse
  real FFT of a spectrum scaled by ``1 / f`` (natural images' amplitude spectrum), so gradient steps move
  low frequencies as readily as high ones; colours are parameterized in a decorrelated basis (the square
  root of the colour covariance) so that steps do not mostly change luminance; a sigmoid maps to
  ``[0, 1]``. This follows Lucid's ``lucid.optvis.param`` (``fft_image``, ``to_valid_rgb``).

The optimizer is Adam, as in Lucid. Adam steps every parameter by about ``lr`` whatever the size of its
gradient, so with the Fourier parameterization each frequency moves at a speed set by its ``1 / f`` scale
alone: low frequencies with tiny gradients still move, which gives smooth, natural-looking images for real
units but adds low-frequency blotches to the optimum of a unit tuned to one frequency. The pixel
parameterization is the plain one (every pixel steps by ``lr`` along the sign of its gradient).

Class visualization (Simonyan, Vedaldi, Zisserman 2014, "Deep Inside Convolutional Networks", section 2)
maximizes a class logit ``S_c(I) - lambda * ||I||^2`` the same way.

Randomness comes from a private ``torch.Generator`` seeded with ``seed``: the same call gives the same
images, and the global RNG is never drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from cnn_explorer.interpret.features.receptive_field import ReceptiveField, field_box
from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state

IMAGENET_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
"""Lucid's ``color_correlation_svd_sqrt``: a square root ``S`` (``S @ S.T`` = covariance) of ImageNet's RGB
covariance, columns = principal colour directions (luminance first) scaled by their standard deviation."""

PARAMETERIZATIONS = ("fourier", "pixel")
REFERENCE_SIZE = 32
"""The image side the pixel-sized transformations (:attr:`VisualizationSettings.jitter`, ``blur``) are given at: a
128 px image is jittered 4x as many pixels, so that every size sees the same shifts relative to the image."""
CLASS_L2 = 0.01
"""A weight of :attr:`VisualizationSettings.l2` that keeps class visualizations near the data's range."""


@dataclass(frozen=True)
class VisualizationSettings:
    """How the input is optimized; the transformations are sized relative to the image, so the defaults suit 32 to
    160 px (Olah et al. 2017 jitter InceptionV1's 224 px inputs by up to 16 px, about 2 px at 32).

    Attributes:
        image_size: side of the square input, in pixels: the data's (``data.image_size``), since a net with a
            linear head accepts no other (required: no size suits every dataset).
        steps: Adam steps.
        lr: Adam learning rate on the parameters (Lucid's default 0.05).
        jitter: largest random shift per step, in pixels of a :data:`REFERENCE_SIZE` (32 px) image: the image is
            shifted by up to ``jitter * image_size / 32`` pixels, rounded, at least 1 (:attr:`jitter_pixels`;
            0 turns it off).
        scale: largest relative random zoom per step, e.g. 0.05 for [0.95, 1.05] (0 turns it off); relative, so
            the same at every size.
        rotate: largest random rotation per step, in degrees (0 turns it off); the same at every size.
        blur: standard deviation of a Gaussian blur applied every step, in pixels of a 32 px image (scaled like
            ``jitter``, :attr:`blur_pixels`; 0, the default, turns it off). Blurring suppresses the
            high-frequency patterns that transformation robustness alone leaves (Olah et al. 2017, "Frequency
            penalization").
        parameterization: ``"fourier"`` (``1/f``-scaled spectrum) or ``"pixel"`` (one parameter per pixel).
        decorrelate: parameterize colours in the decorrelated basis (3-channel inputs only; ignored for 1).
        l2: weight of the mean squared normalized input, subtracted from the objective (Simonyan et al.'s
            L2 regularizer; pulls the image toward the dataset mean).
    """

    image_size: int
    steps: int = 128
    lr: float = 0.05
    jitter: int = 2
    scale: float = 0.05
    rotate: float = 5.0
    blur: float = 0.0
    parameterization: str = "fourier"
    decorrelate: bool = True
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.steps < 1 or self.lr <= 0:
            raise ValueError(
                f"need image_size >= 1, steps >= 1, lr > 0; got {self.image_size}, {self.steps}, {self.lr}"
            )
        if self.jitter < 0 or not 0 <= self.scale < 1 or self.rotate < 0 or self.l2 < 0 or self.blur < 0:
            raise ValueError(
                f"need jitter >= 0, 0 <= scale < 1, rotate >= 0, l2 >= 0, blur >= 0; got {self.jitter}, {self.scale}, "
                f"{self.rotate}, {self.l2}, {self.blur}"
            )
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")

    @property
    def jitter_pixels(self) -> int:
        """The largest shift at this image size: ``jitter * image_size / 32`` rounded half up, at least 1 when on."""
        if self.jitter == 0:
            return 0
        return max(1, math.floor(self.jitter * self.image_size / REFERENCE_SIZE + 0.5))

    @property
    def blur_pixels(self) -> float:
        """The blur's standard deviation at this image size: ``blur * image_size / 32`` pixels."""
        return self.blur * self.image_size / REFERENCE_SIZE


def visualize_channels(
    model: nn.Module,
    targets: Sequence[tuple[str, int]],
    mean: Sequence[float],
    std: Sequence[float],
    settings: VisualizationSettings,
    seed: int = 0,
    color_correlation: Tensor | None = None,
    pre_relu: bool = True,
    units: Mapping[str, tuple[int, int]] | None = None,
) -> Tensor:
    """Optimize one image per ``(layer, channel)`` to maximize that channel's mean activation.

    Olah, Mordvintsev, Schubert (2017), "Feature Visualization", Distill: the "channel" objective, the
    activation of one channel averaged over its spatial positions, maximized through the parameterization
    and transformations of the module docstring. All targets are optimized together, one image each in a
    single batch, so several channels (of one or several layers) cost one forward and backward per step.
    The forward stops at the deepest targeted layer.

    With ``pre_relu`` (the default; Lucid's tutorials target InceptionV1's ``*_pre_relu`` tensors), a layer ending in a
    ReLU (a ReLU, an ``nn.Sequential`` such as :class:`cnn_explorer.models.ConvBlock` whose last module is one, or
    a torchvision ResNet block or stage, whose final ReLU follows the shortcut's sum) is scored on the ReLU's input:
    a channel that is zero after its ReLU on the starting image has zero gradient there, and its image would stay
    grey.

    The model runs in eval mode with its parameters' ``requires_grad`` off (restored on exit); gradients
    are taken w.r.t. the image parameters only, so no ``.grad`` of the model is touched. Works when called
    under ``torch.no_grad()`` or ``torch.inference_mode()``.

    Args:
        model: the network; modes, flags, grads and hooks are left as they were.
        targets: ``(dotted layer name, channel)`` pairs, e.g. ``[("features.conv3", c) for c in range(8)]``;
            the layer outputs ``[B, C, h, w]`` (or ``[B, C]``).
        mean: per-channel mean the model's inputs are normalized with (its length sets the image channels).
        std: per-channel standard deviation of that normalization.
        settings: optimization settings, with the model's input size.
        seed: seeds the private generator for the initial noise and the random transformations.
        color_correlation: ``[3, 3]`` covariance of the data's RGB values (e.g. :func:`color_covariance` of
            the training images) for the decorrelated colour basis; None for ImageNet's
            (:data:`IMAGENET_COLOR_SQRT`). Its overall scale does not matter.
        pre_relu: score a layer that ends in a ReLU before that ReLU.
        units: per layer name, an output position ``(y, x)`` whose activation is scored instead of the channel's
            spatial mean (Olah et al.'s "neuron" objective; see :func:`visualize_fields`); other layers keep the
            channel objective.

    Returns:
        float32 CPU ``[K, C, H, W]`` in ``[0, 1]`` (not normalized), one image per target, in order.

    Raises:
        ValueError: on no targets, an unknown layer, a channel out of range, mismatched ``mean``/``std``,
            a ``color_correlation`` that is not a symmetric ``[3, 3]`` for a 3-channel model, or, with
            ``pre_relu``, a layer ending in an in-place ReLU (its input is overwritten before a hook sees it).
    """
    if not targets:
        raise ValueError("targets must name at least one (layer, channel) pair")
    layers = list(dict.fromkeys(name for name, _ in targets))
    by_layer = {name: [(k, c) for k, (n, c) in enumerate(targets) if n == name] for name in layers}
    sources = {name: _source(model, name, pre_relu) for name in layers}
    hooked = list(dict.fromkeys(module_name for source in sources.values() for module_name in source.hooked))

    def score(model: nn.Module, inputs: Tensor) -> Tensor:
        captured: dict[str, tuple[Any, Any]] = {}

        def keep(name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            # A copy of the output: a residual block adds its shortcut to its last BatchNorm's output in place.
            captured[name] = (args[0] if args else None, output.clone() if isinstance(output, Tensor) else output)
            if len(captured) == len(hooked):
                raise _EnoughLayers

        with forward_hooks(model, hooked, keep):
            try:
                model(inputs)
            except _EnoughLayers:
                pass
        scores = inputs.new_zeros(inputs.shape[0])
        for name, pairs in by_layer.items():
            if any(module_name not in captured for module_name in sources[name].hooked):
                raise ValueError(f"layer {name!r} did not run in the model's forward")
            output = sources[name].read(captured)
            if not isinstance(output, Tensor) or output.ndim not in (2, 4):
                raise ValueError(f"layer {name!r} must output [B, C, h, w] or [B, C]")
            rows = torch.tensor([k for k, _ in pairs], device=inputs.device)
            channels = torch.tensor([c for _, c in pairs], device=inputs.device)
            if int(channels.min()) < 0 or int(channels.max()) >= output.shape[1]:
                raise ValueError(f"channels of {name!r} must be in [0, {output.shape[1]}), got {channels.tolist()}")
            picked = output[rows, channels]  # [K_layer, h, w] or [K_layer]
            if units is not None and name in units and picked.ndim == 3:
                y, x = units[name]
                if not (0 <= y < picked.shape[1] and 0 <= x < picked.shape[2]):
                    raise ValueError(f"unit ({y}, {x}) is outside {name!r}'s {picked.shape[1]}x{picked.shape[2]} map")
                picked = picked[:, y, x]  # [K_layer]
            scores = scores.index_add(0, rows, picked.flatten(1).mean(dim=1) if picked.ndim > 1 else picked)
        return scores

    return _optimize(model, len(targets), score, mean, std, settings, seed, color_correlation)


def visualize_fields(
    model: nn.Module,
    targets: Sequence[tuple[str, int]],
    mean: Sequence[float],
    std: Sequence[float],
    settings: VisualizationSettings,
    fields: Mapping[str, ReceptiveField],
    seed: int = 0,
    color_correlation: Tensor | None = None,
    pre_relu: bool = True,
) -> list[Tensor]:
    """The receptive-field-sized optimum of each ``(layer, channel)``: what one unit likes, at the size it sees.

    A channel objective tiles the whole image with the channel's pattern, so an early layer's 3 px feature fills
    a 32 px image with repeats and hides its size. Here the unit of the channel nearest the image centre
    (:func:`central_unit`) is maximized instead (Olah, Mordvintsev, Schubert 2017, "Feature Visualization",
    Distill: the "neuron" objective), through the same parameterization and transformations, and each image is
    cut to that unit's receptive field, clipped to the image (:func:`.receptive_field.field_box`): a
    ``3 x 3`` crop for a conv1 of 3 px fields, the whole image for a field larger than it.

    Args:
        model: the network; left as it was.
        targets: ``(dotted layer name, channel)`` pairs of layers with ``[B, C, h, w]`` outputs.
        mean: per-channel normalization mean (its length sets the image channels).
        std: per-channel normalization standard deviation.
        settings: optimization settings, with the model's input size.
        fields: receptive fields by layer name, from :func:`.receptive_field.receptive_fields`.
        seed: seeds the private generator.
        color_correlation: as in :func:`visualize_channels`.
        pre_relu: as in :func:`visualize_channels`.

    Returns:
        One float32 CPU ``[C, h_k, w_k]`` crop in ``[0, 1]`` per target, in order; ``h_k = w_k`` is the field's
        size where it fits in the image.

    Raises:
        ValueError: if a target's layer has no field, or the errors of :func:`visualize_channels`.
    """
    missing = sorted({name for name, _ in targets if name not in fields})
    if missing:
        raise ValueError(f"no receptive field given for {missing}; pass receptive_fields(model) of the model")
    units = {name: central_unit(fields[name], settings.image_size) for name, _ in targets}
    images = visualize_channels(model, targets, mean, std, settings, seed, color_correlation, pre_relu, units)
    crops = []
    for image, (name, _) in zip(images, targets, strict=True):
        top, left, bottom, right = field_box(fields[name], *units[name], settings.image_size)
        crops.append(image[:, top:bottom, left:right])
    return crops


def central_unit(field: ReceptiveField, image_size: int) -> tuple[int, int]:
    """The output position ``(y, x)`` whose field centre is nearest the image centre ``(image_size - 1) / 2``.

    Output ``i``'s field centre is ``field.center + i * field.stride`` (Araujo et al. 2019), so
    ``i = round(((image_size - 1) / 2 - field.center) / field.stride)``, halves rounded down, at least 0.
    """
    offset = ((image_size - 1) / 2 - field.center) / field.stride
    index = max(0, math.ceil(offset - 0.5))
    return index, index


def visualize_classes(
    model: nn.Module,
    classes: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    settings: VisualizationSettings,
    seed: int = 0,
    color_correlation: Tensor | None = None,
) -> Tensor:
    """Optimize one image per class to maximize its logit minus an L2 penalty on the input.

    Simonyan, Vedaldi, Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", section 2: ``argmax_I S_c(I) - lambda ||I||^2`` on the
    unnormalized class score (the logit, so that other classes' scores do not enter); ``I`` is the
    normalized (mean-subtracted) input, the penalty is its mean square times ``settings.l2`` (e.g. 0.01,
    :data:`CLASS_L2`). Optimized with the parameterization and transformations of
    :func:`visualize_channels` (Olah et al. 2017), which Simonyan et al. did not use.

    Args:
        model: maps ``[N, C, H, W]`` -> logits ``[N, num_classes]``; left as it was.
        classes: class indices, one image each.
        mean: per-channel normalization mean (its length sets the image channels).
        std: per-channel normalization standard deviation.
        settings: optimization settings, with the model's input size.
        seed: seeds the private generator.
        color_correlation: as in :func:`visualize_channels`.

    Returns:
        float32 CPU ``[K, C, H, W]`` in ``[0, 1]``, one image per class, in order.

    Raises:
        ValueError: on no classes, a class outside the model's logits, or the argument errors of
            :func:`visualize_channels`.
    """
    if not classes:
        raise ValueError("classes must name at least one class index")

    def score(model: nn.Module, inputs: Tensor) -> Tensor:
        logits = model(inputs)  # [K, num_classes]
        wanted = torch.tensor(list(classes), device=logits.device)
        if int(wanted.min()) < 0 or int(wanted.max()) >= logits.shape[1]:
            raise ValueError(f"classes must be in [0, {logits.shape[1]}), got {list(classes)}")
        return logits[torch.arange(len(classes), device=logits.device), wanted]

    return _optimize(model, len(classes), score, mean, std, settings, seed, color_correlation)


def color_covariance(images: Tensor) -> Tensor:
    """Covariance of the RGB values of ``images``, for the ``color_correlation`` argument.

    Args:
        images: uint8 ``[N, 3, H, W]`` (0-255) or float ``[N, 3, H, W]`` in ``[0, 1]``.

    Returns:
        float32 ``[3, 3]`` covariance of pixel values in ``[0, 1]`` units, over all pixels of all images.

    Raises:
        ValueError: if ``images`` is not ``[N, 3, H, W]`` or has fewer than 2 pixels.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    pixels = images.detach().movedim(1, -1).reshape(-1, 3).double()  # [N*H*W, 3]
    if pixels.shape[0] < 2:
        raise ValueError("images must hold at least 2 pixels")
    if images.dtype == torch.uint8:
        pixels = pixels / 255
    return torch.cov(pixels.T).float()


@dataclass(frozen=True)
class _Source:
    """Where a target layer's scored tensor comes from: the modules to hook, and how to read the tensor off what
    their hooks captured (``{module name: (its first input, a copy of its output)}``)."""

    hooked: tuple[str, ...]
    read: Callable[[dict[str, tuple[Any, Any]]], Any]


def _source(model: nn.Module, name: str, pre_relu: bool) -> _Source:
    """The :class:`_Source` of target layer ``name``: its output, or with ``pre_relu`` the input of the ReLU it
    ends in: a last ``nn.ReLU`` module's input, or a torchvision residual block's sum before its final ReLU (the
    last BatchNorm's output plus the shortcut: the block input, or its ``downsample`` of it)."""
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"unknown layer name {name!r}; available layers: {[n for n in modules if n]}")
    output = _Source((name,), lambda captured: captured[name][1])
    if not pre_relu:
        return output
    module_name, module = name, modules[name]
    while isinstance(module, nn.Sequential) and len(module) > 0:
        last = list(module.named_children())[-1][0]
        module_name, module = f"{module_name}.{last}", module[-1]
    if isinstance(module, BasicBlock | Bottleneck):
        # torchvision's blocks end in out = bn(...); out += identity; relu(out), the ReLU module in place and
        # called twice: neither it nor the block's output holds the sum, so it is rebuilt from its two terms.
        last_bn = f"{module_name}.{'bn3' if isinstance(module, Bottleneck) else 'bn2'}"
        shortcut = f"{module_name}.downsample" if module.downsample is not None else module_name
        take = 1 if module.downsample is not None else 0  # the downsample's output, else the block's input
        return _Source((last_bn, shortcut), lambda captured: captured[last_bn][1] + captured[shortcut][take])
    if not isinstance(module, nn.ReLU):
        return output
    if module.inplace:
        raise ValueError(f"layer {name!r} ends in an in-place ReLU: its input is gone; pass pre_relu=False")
    return _Source((module_name,), lambda captured: captured[module_name][0])


class _EnoughLayers(Exception):
    """Raised from a hook once every targeted layer has run: the rest of the forward is not needed."""


def _optimize(
    model: nn.Module,
    count: int,
    score: Callable[[nn.Module, Tensor], Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    settings: VisualizationSettings,
    seed: int,
    color_correlation: Tensor | None,
) -> Tensor:
    if len(mean) != len(std) or len(mean) < 1 or min(std) <= 0:
        raise ValueError(f"mean and std must have one entry per image channel and std > 0, got {mean}, {std}")
    channels, size = len(mean), settings.image_size
    generator = torch.Generator().manual_seed(seed)
    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        # Every tensor the graph uses is made here: one made under a caller's inference_mode cannot be saved.
        color = _color_basis(channels, settings.decorrelate, color_correlation)  # [C, C] or None
        model.eval()
        for parameter in model.parameters():
            # Only the image needs gradients; skipping the weights' halves the backward pass.
            parameter.requires_grad_(False)
        device = model_device(model)
        shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        scale = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        if color is not None:
            color = color.to(device)
        image = _Image(count, channels, size, settings.parameterization, generator, device)
        optimizer = torch.optim.Adam([image.parameter], lr=settings.lr)
        for _ in range(settings.steps):
            pixels = _to_unit(image.raw(), color)  # [K, C, H, W] in (0, 1)
            inputs = (_transform(pixels, settings, generator) - shift) / scale
            objective = score(model, inputs).sum() - settings.l2 * inputs.pow(2).flatten(1).mean(dim=1).sum()
            (gradient,) = torch.autograd.grad(-objective, [image.parameter])
            image.parameter.grad = gradient
            optimizer.step()
        with torch.no_grad():
            return _to_unit(image.raw(), color).float().cpu()


class _Image:
    """The optimized parameters and the map from them to unbounded image values ``[K, C, H, W]``."""

    def __init__(
        self, count: int, channels: int, size: int, parameterization: str, generator: torch.Generator, device: Any
    ) -> None:
        self.size = size
        if parameterization == "fourier":
            # Lucid's fft_image: spectrum ~ N(0, 0.01^2), scaled by 1 / max(f, 1/size) (f in cycles per pixel).
            freq_y = torch.fft.fftfreq(size)[:, None]
            freq_x = torch.fft.rfftfreq(size)[None, :]
            frequency = (freq_y.pow(2) + freq_x.pow(2)).sqrt()  # [H, W//2 + 1]
            self.spectrum_scale = (1.0 / frequency.clamp_min(1.0 / size)).to(device)
            shape: tuple[int, ...] = (count, channels, size, size // 2 + 1, 2)
        else:
            self.spectrum_scale = None
            shape = (count, channels, size, size)
        self.parameter = (torch.randn(shape, generator=generator) * 0.01).to(device).requires_grad_(True)

    def raw(self) -> Tensor:
        if self.spectrum_scale is None:
            return self.parameter
        spectrum = torch.view_as_complex(self.parameter) * self.spectrum_scale
        # norm="ortho" is Lucid's sqrt(h*w) factor with TensorFlow's 1/(h*w) inverse FFT; /4 is Lucid's too.
        return torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4


def _color_basis(channels: int, decorrelate: bool, color_correlation: Tensor | None) -> Tensor | None:
    if channels != 3:
        if color_correlation is not None:
            raise ValueError(f"color_correlation applies to 3-channel inputs, the model has {channels}")
        return None
    if not decorrelate:
        return None
    if color_correlation is None:
        root = IMAGENET_COLOR_SQRT.clone()
    else:
        covariance = color_correlation.detach().double().cpu()
        if covariance.shape != (3, 3) or not torch.allclose(covariance, covariance.T, atol=1e-6):
            raise ValueError(f"color_correlation must be a symmetric [3, 3] matrix, got {tuple(covariance.shape)}")
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        root = (eigenvectors * eigenvalues.clamp_min(0).sqrt()).float()  # root @ root.T == covariance
    # Lucid divides by the largest column norm: the luminance direction keeps unit gain.
    largest = root.norm(dim=0).max()
    if largest <= 0:
        raise ValueError("color_correlation must not be zero")
    return root / largest


def _to_unit(raw: Tensor, color: Tensor | None) -> Tensor:
    if color is not None:
        raw = torch.einsum("ij,kjhw->kihw", color, raw)  # each pixel's colour vector times the basis
    return torch.sigmoid(raw)


def _transform(pixels: Tensor, settings: VisualizationSettings, generator: torch.Generator) -> Tensor:
    pixels = _blur(pixels, settings.blur_pixels)
    if settings.jitter == 0 and settings.scale == 0 and settings.rotate == 0:
        return pixels
    count, _, height, width = pixels.shape
    # Drawn on the CPU from the private generator, so the same seed gives the same steps on any device.
    uniform = torch.rand(count, 2, generator=generator) * 2 - 1  # [K, 2] in [-1, 1)
    angle = uniform[:, 0] * math.radians(settings.rotate)
    zoom = 1 + uniform[:, 1] * settings.scale
    # Whole-pixel shifts as in Lucid's jitter; affine_grid's [-1, 1] span makes one pixel 2 / size of it.
    jitter = settings.jitter_pixels
    shift = torch.randint(-jitter, jitter + 1, (count, 2), generator=generator).float()
    shift_x, shift_y = shift[:, 0] * 2 / width, shift[:, 1] * 2 / height
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
    )  # [K, 2, 3], output -> input sampling coordinates
    grid = F.affine_grid(theta.to(pixels.device, pixels.dtype), list(pixels.shape), align_corners=False)
    # Reflection keeps the borders image-like; zeros would give the channel a dark frame to respond to.
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _blur(pixels: Tensor, sigma: float) -> Tensor:
    """A separable Gaussian blur of ``[K, C, H, W]`` with standard deviation ``sigma`` pixels (3 sigma each side)."""
    if sigma <= 0:
        return pixels
    radius = min(max(1, math.ceil(3 * sigma)), pixels.shape[-2] - 1, pixels.shape[-1] - 1)  # reflect needs < side
    offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    line = line / line.sum()
    channels = pixels.shape[1]
    # Reflection, as for the other transformations: a zero border would darken the edges.
    padded = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
    padded = F.conv2d(padded, line.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(padded, line.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
