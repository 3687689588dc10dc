"""The views on standard CNNs: stages found from the module graph, and activation capture, CAMs and guided
backprop on a torchvision ResNet equal to those on a copy whose in-place, reused ReLUs are unrolled.

torchvision's BasicBlock calls one ``nn.ReLU(inplace=True)`` twice and adds the shortcut in place
(``out += identity``): the unrolled copy has two distinct non-in-place ReLUs and ``out = out + identity``, the
same weights, hence the same function; every view must give the same numbers on both.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torchvision.models import efficientnet_b0, mobilenet_v3_small, resnet18
from torchvision.models.resnet import BasicBlock

from callbacks.attributions import AttributionCallback
from callbacks.feature_maps import FeatureMapCallback
from callbacks.features import FeatureStatsCallback
from callbacks.filters import FilterGridCallback
from callbacks.optimization import gradient_norms
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.interpret import layer_activations
from cnn_explorer.interpret.attribution.cam import default_cam_layer, grad_cam, grad_cam_plus_plus
from cnn_explorer.interpret.attribution.guided_backprop import guided_backprop
from cnn_explorer.interpret.layers import short_layer_name, stages
from cnn_explorer.models import ConvNet
from cnn_explorer.module import Classifier
from cnn_explorer.sources import SyntheticImages

RESNET_STAGES = ["maxpool", "layer1", "layer2", "layer3", "layer4"]


class UnrolledBasicBlock(nn.Module):
    """A torchvision BasicBlock's forward with two distinct ReLUs and an out-of-place shortcut sum."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


def unrolled(net: nn.Module) -> nn.Module:
    """A deep copy of a torchvision ResNet with every BasicBlock unrolled and the stem's ReLU not in place."""
    copied = copy.deepcopy(net)
    copied.relu = nn.ReLU()
    for stage in (copied.layer1, copied.layer2, copied.layer3, copied.layer4):
        for index, block in enumerate(stage):
            stage[index] = UnrolledBasicBlock(block)
    return copied


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    # Non-trivial BatchNorm statistics, so that BN is not the identity and the in-place ops matter.
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net, unrolled(net)


def images(size: int) -> Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


def test_resnet18_stages_are_the_stem_and_the_four_layers_with_hand_derived_sizes(nets) -> None:
    net, copy_ = nets
    assert stages(net, (3, 32, 32)) == RESNET_STAGES
    assert stages(copy_, (3, 32, 32)) == RESNET_STAGES
    acts = layer_activations(net, images(32), RESNET_STAGES)
    # 32 px: conv1 stride 2 -> 16, the stem's maxpool stride 2 -> 8, layer1 keeps it, then each layer halves:
    # 4, 2, 1. Channels 64, 64, 128, 256, 512.
    assert [tuple(a.shape[1:]) for a in acts.values()] == [
        (64, 8, 8),
        (64, 8, 8),
        (128, 4, 4),
        (256, 2, 2),
        (512, 1, 1),
    ]
    assert default_cam_layer(net, (3, 64, 64)) == "layer4"  # 2x2 at 64 px
    assert default_cam_layer(net, (3, 32, 32)) == "layer3"  # layer4 is 1x1 at 32 px: no place left to point at
    assert [short_layer_name(n) for n in RESNET_STAGES] == RESNET_STAGES


@pytest.mark.parametrize("size", [32, 64])
def test_stage_activations_equal_those_of_the_unrolled_copy(nets, size: int) -> None:
    net, copy_ = nets
    x = images(size)
    original, reference = layer_activations(net, x, RESNET_STAGES), layer_activations(copy_, x, RESNET_STAGES)
    for name in RESNET_STAGES:
        torch.testing.assert_close(original[name], reference[name], rtol=1e-5, atol=1e-5)
    # The stem's output is a max over ReLU outputs: >= 0.
    assert original["maxpool"].min() >= 0


def test_a_module_that_runs_twice_is_refused(nets) -> None:
    net, _ = nets
    with pytest.raises(ValueError, match="ran more than once"):
        layer_activations(net, images(32), ["layer1.0.relu"])


@pytest.mark.parametrize("method", [grad_cam, grad_cam_plus_plus])
def test_cams_at_layer4_equal_those_of_the_unrolled_copy(nets, method) -> None:
    net, copy_ = nets
    x, targets = images(64), torch.tensor([3, 7])
    original, reference = method(net, x, targets), method(copy_, x, targets)
    assert original.shape == (2, 64, 64)
    assert original.abs().sum() > 0  # a map, not an all-zero one that would match trivially
    torch.testing.assert_close(original, reference, rtol=1e-4, atol=1e-6)


def test_guided_backprop_equals_that_of_the_unrolled_copy(nets) -> None:
    # Captum 0.9's GuidedBackprop hooks each call of a ReLU module, so a ReLU called twice is guided twice.
    net, copy_ = nets
    x, targets = images(64), torch.tensor([3, 7])
    original, reference = guided_backprop(net, x, targets), guided_backprop(copy_, x, targets)
    assert original.abs().sum() > 0
    torch.testing.assert_close(original, reference, rtol=1e-4, atol=1e-6)
    assert not any(m._backward_hooks or m._forward_hooks for m in net.modules())


@pytest.mark.parametrize(
    "build",
    [
        mobilenet_v3_small,
        efficientnet_b0,
        lambda num_classes: timm.create_model("efficientnet_lite0", num_classes=num_classes),
    ],
)
def test_mobile_nets_get_one_stage_per_change_of_shape_with_decreasing_resolution(build) -> None:
    net = build(num_classes=10).eval()
    names = stages(net, (3, 64, 64))
    shapes = [tuple(a.shape[1:]) for a in layer_activations(net, images(64), names).values()]
    sizes = [shape[1] for shape in shapes]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert all(a != b for a, b in zip(shapes, shapes[1:], strict=False))  # each stage changes C or resolution
    # The last stage is the net's last conv layer's output (the head's 1x1 conv): the most channels.
    assert shapes[-1][0] == max(shape[0] for shape in shapes)
    assert 5 <= len(names) <= 10


def test_mobilenet_v3_small_stages_by_hand() -> None:
    # torchvision's features.N at 32 px: 0 stride 2 (16 px, 16 ch), 1 stride 2 (8, 16), 2 stride 2 (4, 24),
    # 3 (4, 24), 4 stride 2 (2, 40), 5-6 (2, 40), 7-8 (2, 48), 9 stride 2 (1, 96), 10-11 (1, 96), 12 the 1x1 head
    # conv (1, 576): the last block of each run of equal shapes.
    net = mobilenet_v3_small(num_classes=10)
    expected = ["features.0", "features.1", "features.3", "features.6", "features.8", "features.11", "features.12"]
    assert stages(net, (3, 32, 32)) == expected
    assert short_layer_name("features.11") == "features.11"


def test_convnet_stages_are_its_conv_blocks() -> None:
    # Two blocks at one shape stay two: a ConvNet's every conv layer is a stage.
    assert stages(ConvNet([32, 32, "M", 64, "M"]), (3, 32, 32)) == [
        "features.conv1",
        "features.conv2",
        "features.conv3",
    ]
    net = ConvNet([8, "M", 16, "M"], in_channels=1, image_size=20, batch_norm=True)
    assert stages(net, (1, 20, 20)) == ["features.conv1", "features.conv2"]
    assert default_cam_layer(net, (1, 20, 20)) == "features.conv2"


@pytest.mark.slow
def test_every_layer_view_runs_on_a_resnet_in_a_trainer(tmp_path) -> None:
    # The callbacks find the ResNet's stages themselves: feature maps, channel cards and scalars per stage.
    L.seed_everything(0)
    source = SyntheticImages(60, 20, signal=0.3, image_size=32)
    datamodule = ImageClassificationDataModule(source, mean=[0.5] * 3, std=[0.25] * 3, val_size=30, batch_size=30)
    module = Classifier(resnet18(num_classes=10), optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    views = [
        FilterGridCallback(every_n_epochs=1),
        FeatureMapCallback(every_n_epochs=1, max_channels=2),
        AttributionCallback(every_n_epochs=1, per_class=1, methods=["grad_cam", "guided_backprop"]),
        FeatureStatsCallback(every_n_epochs=1, probe_images=30, projector_per_class=1, visualization_steps=2),
    ]
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    trainer = L.Trainer(
        callbacks=views,
        max_epochs=1,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=datamodule)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    images, scalars = set(events.Tags()["images"]), set(events.Tags()["scalars"])
    assert {"filters/conv1", "attributions/grad_cam", "attributions/guided_backprop"} <= images
    assert {f"channels/{name}" for name in RESNET_STAGES} <= images
    assert any(tag.startswith("feature_maps/") for tag in images)
    assert {f"features/{name}/probe_accuracy" for name in RESNET_STAGES} <= scalars
    assert not any(m._forward_hooks or m._backward_hooks for m in module.modules())


def test_gradient_norms_of_a_resnet_come_one_per_stage(nets) -> None:
    net, _ = nets
    net.zero_grad()
    net(images(32)).sum().backward()
    norms = gradient_norms(net, RESNET_STAGES)
    # The stem's conv1/bn1 and the head's fc are outside the stages (the stem's stage is its parameterless maxpool).
    assert set(norms) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    by_hand = sum(float(p.grad.pow(2).sum()) for n, p in net.named_parameters() if n.startswith("layer2.")) ** 0.5
    assert norms["layer2"] == pytest.approx(by_hand, rel=1e-6) and by_hand > 0
    net.zero_grad()
