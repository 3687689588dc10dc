"""Plain ``nn.Module`` CNNs for 32x32 images, built from an architecture list.

The architecture is data, in the style of torchvision's VGG: ``[32, "M", 64, "M", 128, "M"]`` means
conv(32) -> maxpool -> conv(64) -> maxpool -> conv(128) -> maxpool. Every conv is a :class:`ConvBlock`
(Conv2d -> optional BatchNorm2d -> ReLU). Submodule names are stable so that layers can be addressed by
dotted name for visualization (:mod:`cnn_explorer.interpret.layers` finds the layers of any CNN)::

    features.conv1, features.pool1, features.conv2, ...   # conv1.conv is the Conv2d, conv1.relu its ReLU
    classifier.fc1, classifier.relu, classifier.dropout, classifier.fc2
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnn_explorer.safe_config import buildable

Architecture = Sequence[int | str]


class ConvBlock(nn.Sequential):
    """Conv2d(3x3, padding 1) -> [BatchNorm2d] -> ReLU; spatial size is kept.

    The ReLU is not in-place: in-place activations break full backward hooks (saliency, Grad-CAM).
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        # A conv followed by BatchNorm needs no bias: BN's shift replaces it.
        layers["conv"] = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
        if batch_norm:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["relu"] = nn.ReLU()
        super().__init__(layers)


@buildable("net")
class ConvNet(nn.Module):
    """Conv blocks and max-pools from ``architecture``, then a two-layer fully connected head.

    Args:
        architecture: ints are conv output channels, ``"M"`` is a 2x2 max-pool.
        hidden: width of the hidden fully connected layer.
        num_classes: number of output logits.
        batch_norm: insert BatchNorm2d after every conv.
        dropout: dropout probability before the last linear layer (0 disables it).
        in_channels: input image channels.
        image_size: input height and width (square), used to size the head.

    Shapes: input ``[N, in_channels, image_size, image_size]`` float -> logits ``[N, num_classes]``.

    Raises:
        ValueError: on an empty architecture, an unknown entry, or more pools than the image allows.
    """

    def __init__(
        self,
        architecture: Architecture,
        hidden: int = 256,
        num_classes: int = 10,
        batch_norm: bool = False,
        dropout: float = 0.0,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if not any(isinstance(a, int) for a in architecture):
            raise ValueError(f"architecture needs at least one conv (an int), got {list(architecture)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, size, n_conv, n_pool = in_channels, image_size, 0, 0
        for entry in architecture:
            if entry == "M":
                if size < 2:
                    raise ValueError(f"architecture {list(architecture)} pools a {image_size}px image below 1px")
                n_pool += 1
                layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
                size //= 2
            elif isinstance(entry, int) and entry > 0:
                n_conv += 1
                layers[f"conv{n_conv}"] = ConvBlock(channels, entry, batch_norm)
                channels = entry
            else:
                raise ValueError(f"architecture entries are positive ints or 'M', got {entry!r}")
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(channels * size * size, hidden),
                relu=nn.ReLU(),
                dropout=nn.Dropout(dropout),
                fc2=nn.Linear(hidden, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [N, C, s, s]
        return self.classifier(x.flatten(1))  # [N, C*s*s] -> [N, num_classes]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` of any ``model`` and its dotted name.

    Raises:
        ValueError: if the model has no Conv2d.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def weight_mismatches(expected: dict[str, Tensor], weights: dict[str, Tensor], sides: str) -> list[str]:
    """What keeps ``weights`` from loading where ``expected`` (a state dict) is: its missing and unexpected names
    and its shapes that differ (``sides`` names the two, e.g. ``"file vs net"``), three of each at most."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    resized = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    return [
        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), (f"shape ({sides})", resized))
        if names
    ]
