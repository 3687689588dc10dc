"""EfficientNet-Lite0 pads as TensorFlow did when its ImageNet weights were trained (cnn_explorer/standard_nets.py).

TensorFlow's 'SAME' padding of a stride-2 conv on an even input pads ``k - 2`` in all, the smaller half at the top
and left: a 3x3 conv pads 0 above and 1 below, a 5x5 conv 1 above and 2 below. PyTorch's symmetric ``padding=k//2``
pads 1 (3x3) or 2 (5x5) on every side, which moves every output's window one pixel up and left.
"""

import pytest
import torch
from torch import nn

from cnn_explorer.detection.models import EfficientNetLite0FPN
from cnn_explorer.standard_nets import efficientnet_lite0

# x[r, c] = 8 r + c on an 8x8 input; a kernel whose only tap is its top-left one, weight 1, reads x at
# (2 i - top, 2 j - left) for output (i, j), 0 where that is padding.
GRID = torch.arange(64.0).reshape(8, 8)
# 3x3, stride 2, 'SAME': top = left = 0, so output (i, j) reads x[2 i, 2 j] = 16 i + 2 j.
SAME_3X3 = torch.tensor([[0.0, 2, 4, 6], [16, 18, 20, 22], [32, 34, 36, 38], [48, 50, 52, 54]])
# 5x5, stride 2, 'SAME': top = left = 1, so output (i, j) reads x[2 i - 1, 2 j - 1] = 16 i + 2 j - 9, row 0 and
# column 0 being padding.
SAME_5X5 = torch.tensor([[0.0, 0, 0, 0], [0, 9, 11, 13], [0, 25, 27, 29], [0, 41, 43, 45]])


def _top_left_tap_output(conv: nn.Conv2d) -> torch.Tensor:
    """``conv``'s own forward (its padding included) on ``GRID`` in every channel, with a kernel whose only tap is
    the top-left one of each output channel's first input channel: ``[4, 4]``, the first output channel."""
    weight = torch.zeros_like(conv.weight)
    weight[:, 0, 0, 0] = 1.0
    x = GRID.expand(1, conv.in_channels, 8, 8)
    with torch.no_grad():
        out = torch.func.functional_call(conv, {"weight": weight}, (x,))
    return out[0, 0]


def _stride2_convs(net: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: efficientnet_lite0(10, weights=None),
        lambda: efficientnet_lite0(10, in_channels=1, weights=None),  # a replaced stem keeps the padding
        lambda: EfficientNetLite0FPN(pretrained=False).body,
    ],
    ids=["classifier", "gray-stem", "detection-backbone"],
)
def test_stride2_convs_pad_as_tensorflow_same(build):
    convs = _stride2_convs(build())
    # The stem and the first block of stages 1, 2, 3 and 5 (k3, k5, k3, k5; Tan & Le 2019, table 1) halve the map.
    assert {name: conv.kernel_size for name, conv in convs.items()} == {
        "conv_stem": (3, 3),
        "blocks.1.0.conv_dw": (3, 3),
        "blocks.2.0.conv_dw": (5, 5),
        "blocks.3.0.conv_dw": (3, 3),
        "blocks.5.0.conv_dw": (5, 5),
    }
    for name, conv in convs.items():
        expected = SAME_3X3 if conv.kernel_size == (3, 3) else SAME_5X5
        torch.testing.assert_close(_top_left_tap_output(conv), expected, msg=name)


def test_batchnorm_eps_is_tensorflows():
    norms = [m for m in efficientnet_lite0(10, weights=None).modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 49  # stem, 16 blocks (2 BNs in the first, 3 in the 15 others), head: 1 + 2 + 45 + 1
    assert {m.eps for m in norms} == {1e-3}  # TensorFlow's default; PyTorch's is 1e-5


def test_a_checkpoint_of_the_symmetric_build_still_loads():
    # Runs trained before the switch hold timm efficientnet_lite0's state dict: the same names and shapes.
    import timm

    torch.manual_seed(0)
    old = timm.create_model("efficientnet_lite0", num_classes=10)
    new = efficientnet_lite0(10, weights=None)
    new.load_state_dict(old.state_dict(), strict=True)
    assert torch.equal(new.conv_head.weight, old.conv_head.weight)
