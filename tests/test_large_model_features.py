"""Receptive fields, dataset examples, feature visualization and the randomization cascade on the standard CNNs
(torchvision's ResNets, MobileNetV3, EfficientNet; timm's EfficientNet-Lite0) at 32 to 160 px, against values
derived by hand and the input gradient's extent."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
import torchvision
from torch import nn

from cnn_explorer.interpret.attribution.sanity import cascading_randomization, randomization_verdict
from cnn_explorer.interpret.attribution.smoothgrad import smoothgrad
from cnn_explorer.interpret.features.dataset_examples import (
    NEUTRAL_GREY,
    ChannelExamples,
    crop_examples,
    top_activating_examples,
)
from cnn_explorer.interpret.features.feature_visualization import (
    VisualizationSettings,
    central_unit,
    visualize_channels,
    visualize_fields,
)
from cnn_explorer.interpret.features.receptive_field import ReceptiveField, field_box, receptive_fields

# --- receptive fields through residual branches ----------------------------------------------------------------


def positive_paths(model: nn.Module) -> nn.Module:
    """``model`` with weights under which no gradient cancels, so the nonzero input gradient of a unit covers
    exactly its receptive field (clipped to the image).

    Every conv weight is 1 / fan_in > 0 and every bias 0; BatchNorm is fresh (mean 0, variance 1, weight 1, bias 0)
    and in eval mode, so it scales by 1 / sqrt(1 + eps) > 0. On a positive image every activation is then positive,
    so every ReLU passes its gradient (derivative 1), and the gradient of a unit w.r.t. an input pixel is a sum,
    over the paths between them, of products of positive weights: > 0 for a pixel inside some path's field, exactly
    0 outside every one. A max-pool passes the gradient to one pixel per window only; an average pool of the same
    window has the same field and passes it to all, so max-pools are swapped for it (the analytic field is checked
    to be unchanged by the swap).
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
    return model.eval()


def gradient_box(model: nn.Module, layers: list[str], units: list[tuple[str, int, int]], size: int) -> list:
    """``(top, left, bottom, right)`` of the nonzero input gradient of each ``(layer, y, x)`` unit (all channels)."""
    outputs = {}
    hooks = [
        dict(model.named_modules())[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
        for name in layers
    ]
    image = torch.ones(1, 3, size, size, requires_grad=True)
    try:
        model(image)
    finally:
        for hook in hooks:
            hook.remove()
    boxes = []
    for name, y, x in units:
        (gradient,) = torch.autograd.grad(outputs[name][0, :, y, x].sum(), image, retain_graph=True)
        rows = (gradient[0] != 0).any(dim=0).any(dim=1).nonzero().flatten()
        cols = (gradient[0] != 0).any(dim=0).any(dim=0).nonzero().flatten()
        boxes.append((int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))
    return boxes


# torchvision resnet18 (r: size, j: jump, u: start; Araujo et al. 2019's recurrence r += (k - 1) j, j *= s, u -= p j):
#   input                             r=1                    j=1    u=0
#   conv1 7x7 /2 pad 3                r=1+6*1=7              j=2    u=-3
#   maxpool 3x3 /2 pad 1              r=7+2*2=11             j=4    u=-3-1*2=-5
#   layer1: 2 BasicBlocks, 4 convs 3x3 /1 pad 1, each r += 2*4, u -= 4:  r=11+4*8=43, j=4, u=-5-4*4=-21
#     (the identity shortcuts add nothing: their field is the block input's, inside the main branch's)
#   layer2: conv 3x3 /2: r=43+2*4=51 j=8 u=-25; then 3 convs 3x3 /1, each r += 16, u -= 8: r=99, u=-49
#     (the 1x1 /2 shortcut sees r=43, u=-21: inside [-49, 50))
#   layer3: conv /2: r=99+16=115 j=16 u=-57; 3 convs, each r += 32, u -= 16: r=211, u=-105
#   layer4: conv /2: r=211+32=243 j=32 u=-121; 3 convs, each r += 64, u -= 32: r=435, u=-217
RESNET18 = {
    "maxpool": ReceptiveField(11, 4, -5),
    "layer1": ReceptiveField(43, 4, -21),
    "layer2": ReceptiveField(99, 8, -49),
    "layer3": ReceptiveField(211, 16, -105),
    "layer4": ReceptiveField(435, 32, -217),
}


def test_resnet18_fields_match_hand_counts_and_the_input_gradient() -> None:
    model = torchvision.models.resnet18()
    fields = receptive_fields(model, 64)
    assert {name: fields[name] for name in RESNET18} == RESNET18
    assert fields["layer2.0.downsample"] == ReceptiveField(43, 8, -21)  # 1x1 /2: layer1's field on layer2's grid
    checked = positive_paths(model)
    assert {name: receptive_fields(checked, 64)[name] for name in RESNET18} == RESNET18  # avg-pool swap: same field
    # 256 px: the central units of layer1..3 see no padding; layer4 (8x8 outputs) has none that does, so its unit
    # (0, 0) checks the far edge (u + r = 218 < 256) and unit (7, 7) the near one (u + 7 * 32 = 7 > 0).
    units = [("layer1", 32, 32), ("layer2", 16, 16), ("layer3", 8, 8), ("layer4", 0, 0), ("layer4", 7, 7)]
    boxes = gradient_box(checked, list(RESNET18)[1:], units, 256)
    expected = [field_box(RESNET18[name], y, x, 256) for name, y, x in units]
    assert expected[:3] == [(107, 107, 150, 150), (79, 79, 178, 178), (23, 23, 234, 234)]  # -21 + 4 * 32 = 107, ...
    assert expected[3:] == [(0, 0, 218, 218), (7, 7, 256, 256)]
    assert boxes == expected


class TwoPaths(nn.Module):
    """A stem, then a residual block: a main branch (3x3 /2, 5x5) plus a strided shortcut, then ReLU."""

    def __init__(self, shortcut: nn.Conv2d) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 2, 3, padding=1)
        self.main = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 5, padding=2))
        self.shortcut = shortcut
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        out = self.main(x)
        out += self.shortcut(x)  # in place, as torchvision's blocks
        return self.relu(out)


@pytest.mark.parametrize(
    ("shortcut", "expected"),
    [
        # stem r=3 j=1 u=-1; main: 3x3 /2 pad 1 -> r=5 j=2 u=-2, 5x5 pad 2 -> r=5+4*2=13 u=-2-2*2=-6: [-6, 7).
        # A 1x1 /2 shortcut sees the stem's r=3, u=-1: [-1, 2), inside the main branch's: the block has r=13.
        (nn.Conv2d(2, 2, 1, stride=2), ReceptiveField(13, 2, -6)),
        # A 3x3 /2 shortcut dilated 8 (extent 17) pad 8: r=3+16=19, u=-1-8=-9: [-9, 10) contains [-6, 7): r=19.
        (nn.Conv2d(2, 2, 3, stride=2, padding=8, dilation=8), ReceptiveField(19, 2, -9)),
    ],
)
def test_residual_field_is_the_largest_over_paths_and_the_gradient_extent(
    shortcut: nn.Conv2d, expected: ReceptiveField
) -> None:
    model = TwoPaths(shortcut)
    assert receptive_fields(model, 32)["relu"] == expected
    boxes = gradient_box(positive_paths(model), ["relu"], [("relu", 8, 8), ("relu", 0, 0)], 32)
    assert boxes == [field_box(expected, 8, 8, 32), field_box(expected, 0, 0, 32)]


def test_fields_of_squeeze_excitation_nets_flag_the_global_gate() -> None:
    # MobileNetV3-small: features.0 is a 3x3 /2 conv (r=3, j=2, u=-1); features.1's squeeze-and-excitation gate
    # multiplies by a global average: the unit depends on every pixel, its local field is 3 + 2 * 2 = 7 (dw 3x3 /2).
    fields = receptive_fields(torchvision.models.mobilenet_v3_small(), 64)
    assert fields["features.0"] == ReceptiveField(3, 2, -1)
    assert fields["features.1"] == ReceptiveField(7, 4, -3, global_context=True)
    assert not fields["features.1.block.0"].global_context  # before the gate


def test_fields_of_timm_efficientnet_lite0() -> None:
    # conv_stem 3x3 /2 pad 1: r=3 j=2 u=-1; blocks.0 is depthwise 3x3 /1 pad 1 then 1x1: r=3+2*2=7, u=-1-2=-3.
    # Lite0 has no squeeze-and-excitation: no global gate anywhere.
    fields = receptive_fields(timm.create_model("efficientnet_lite0", num_classes=10), 64)
    assert fields["conv_stem"] == ReceptiveField(3, 2, -1) and fields["blocks.0"] == ReceptiveField(7, 2, -3)
    assert fields["bn2"].stride == 32 and not any(f.global_context for f in fields.values())


# --- the randomization cascade with BatchNorm -----------------------------------------------------------------


@pytest.mark.slow  # 50 to 80 steps of spearman and SSIM each: 15 to 25 s per family on a busy CPU
@pytest.mark.parametrize(
    ("build", "first", "classifier"),
    [
        (lambda: torchvision.models.mobilenet_v3_small(num_classes=3), ("classifier.3", "classifier.0"), 2),
        (lambda: torchvision.models.efficientnet_b0(num_classes=3), ("classifier.1", "features.8.0"), 1),
        (lambda: timm.create_model("efficientnet_lite0", num_classes=3), ("classifier", "conv_head"), 1),
    ],
)
def test_cascade_steps_start_at_the_classifier_of_each_family(build, first: tuple, classifier: int) -> None:
    # A method that ignores the model (the image's own magnitude): the steps are found, the maps never change.
    result = cascading_randomization(build(), torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), input_magnitude)
    assert result.layers[:2] == first and result.classifier_steps == classifier
    assert torch.equal(result.spearman, torch.ones_like(result.spearman))


def input_magnitude(network: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return images.abs().sum(dim=1)


@pytest.mark.slow  # 22 gradient maps of resnet18: ~10 s on a quiet CPU core, over a minute on a busy one
def test_cascade_on_resnet18_goes_from_the_head_down_resets_batchnorm_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():  # "trained" BatchNorm: statistics and affine far from a fresh layer's
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.train()  # the caller's mode, which the cascade must not change
    before = {name: value.clone() for name, value in model.state_dict().items()}
    seen = []  # per call of the method: (bn2's running mean, weight) of layer4.1, and downsample.1's of layer4.0

    def method(network: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        block, shortcut = network.layer4[1].bn2, network.layer4[0].downsample[1]
        seen.append([t.detach().clone() for t in (block.running_mean, block.weight, shortcut.running_var)])
        return partial(smoothgrad, noise=0.0, samples=1)(network, images, targets)

    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 2])
    result = cascading_randomization(model, images, targets, method, seed=0)
    # resnet18 runs 20 convolutions (16 in blocks, 3 shortcuts, the stem) and one Linear: 21 steps, logits first,
    # then each block from its last conv back, a shortcut (which runs after conv2 in torchvision's forward) first.
    assert len(result.layers) == 21 and result.classifier_steps == 1
    assert result.layers[:5] == ("fc", "layer4.1.conv2", "layer4.1.conv1", "layer4.0.downsample.0", "layer4.0.conv2")
    assert result.layers[-1] == "conv1" and randomization_verdict(result).layers == ("fc",)
    # The trained maps (call 0) and after "fc" (call 1) see the trained BatchNorm; after "layer4.1.conv2" (call 2)
    # its BatchNorm is a fresh one's (mean 0, weight 1); layer4.0's shortcut BN is reset with its conv (call 4).
    assert not torch.equal(seen[1][0], torch.zeros(512))
    assert torch.equal(seen[2][0], torch.zeros(512)) and torch.equal(seen[2][1], torch.ones(512))
    assert not torch.equal(seen[3][2], torch.ones(512)) and torch.equal(seen[4][2], torch.ones(512))
    # The caller's model is bit-identical and in its own mode.
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(module.training for module in model.modules())
    # Fully randomized, the gradient maps differ from the trained ones. Not down to 0: the absolute gradients of two
    # unrelated ResNets share the grid their strided stem and pools print on the input (about 0.5 here).
    assert (result.spearman[-1] < 0.8).all() and (result.ssim[-1] < 0.8).all(), (result.spearman, result.ssim)


# --- dataset examples when the field exceeds the image -----------------------------------------------------------


def test_crops_are_clipped_to_the_image_along_an_axis_the_field_overflows() -> None:
    images = torch.arange(2 * 8 * 6, dtype=torch.uint8).view(2, 1, 8, 6)  # [N, C, H=8, W=6], every pixel distinct
    examples = ChannelExamples(
        values=torch.tensor([[2.0, 1.0]]),
        indices=torch.tensor([[1, 0]]),
        rows=torch.tensor([[1, 0]]),
        cols=torch.tensor([[0, 2]]),
    )
    # size 7, stride 2, start -2: it fits the 8 rows (7 <= 8) but not the 6 columns (7 > 6).
    field = ReceptiveField(size=7, stride=2, start=-2)
    assert field.exceeds((8, 6)) and not field.exceeds(7)
    crops = crop_examples(images, examples, field)
    assert crops.shape == (1, 2, 1, 7, 6)  # rows: the field's 7; columns: the image's 6, not 7 with a grey one
    # Example 0: image 1, output row 1 -> rows -2 + 2 * 1 = 0 .. 6, every column.
    assert torch.equal(crops[0, 0, 0], images[1, 0, 0:7, :])
    # Example 1: image 0, output row 0 -> rows -2 .. 4: two rows of zero padding (grey), then rows 0 .. 4.
    assert torch.equal(crops[0, 1, 0, :2], torch.full((2, 6), NEUTRAL_GREY, dtype=torch.uint8))
    assert torch.equal(crops[0, 1, 0, 2:], images[0, 0, 0:5, :])


def test_resnet18_layer4_examples_at_32_px_are_whole_images_not_padding() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    field = receptive_fields(model, 32)["layer4"]
    assert field == RESNET18["layer4"] and field.exceeds(32)  # a 435 px field on a 32 px image
    batches = [(images.float() / 255, torch.arange(4))]
    examples = top_activating_examples(model, batches, ["layer4"], k=2)["layer4"]
    crops = crop_examples(images, examples, field)
    assert crops.shape == (512, 2, 3, 32, 32)  # the old crop was 435 x 435, 98.6% of it grey
    assert torch.equal(crops, images[examples.indices])


# --- feature visualization at 32 to 160 px -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "jitter", "blur", "pixels", "sigma"),
    [
        (32, 2, 0.5, 2, 0.5),  # the reference size: as given
        (128, 2, 0.5, 8, 2.0),  # 2 * 128 / 32 = 8 px, 0.5 * 4 = 2 px
        (160, 2, 0.5, 10, 2.5),  # 2 * 5 = 10
        (48, 2, 0.0, 3, 0.0),  # 2 * 1.5 = 3
        (24, 2, 0.0, 2, 0.0),  # 1.5, rounded half up to 2
        (8, 2, 0.0, 1, 0.0),  # 0.5 -> 1, and at least 1 while jitter is on
        (128, 0, 0.0, 0, 0.0),  # off stays off
    ],
)
def test_transformations_scale_with_the_image(size: int, jitter: int, blur: float, pixels: int, sigma: float) -> None:
    settings = VisualizationSettings(image_size=size, jitter=jitter, blur=blur)
    assert settings.jitter_pixels == pixels and settings.blur_pixels == pytest.approx(sigma)
    assert settings.scale == 0.05 and settings.rotate == 5.0  # relative already: the same at every size


def test_conv1_optimum_is_its_3_px_field_around_the_central_unit() -> None:
    # One 3x3 conv, weights +-1: the unit's activation is signs . (its 3x3 input patch), so with the pixel
    # parameterization and no transformations the patch moves along the signs (as for the whole-image linear
    # channel in test_features.py) and the rest of the image gets no gradient and stays grey.
    signs = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]])
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(signs.view(1, 1, 3, 3))
    model = nn.Sequential(conv)
    fields = receptive_fields(model, 16)
    assert fields["0"] == ReceptiveField(3, 1, -1)
    # centre (16 - 1) / 2 = 7.5; unit i's field centre is -1 + (3 - 1) / 2 + i = i: i = 7.5 rounded down = 7,
    # whose field is rows and columns [-1 + 7, -1 + 7 + 3) = [6, 9).
    assert central_unit(fields["0"], 16) == (7, 7)
    settings = VisualizationSettings(image_size=16, steps=20, parameterization="pixel", jitter=0, scale=0.0, rotate=0.0)
    (crop,) = visualize_fields(model, [("0", 0)], (0.5,), (0.25,), settings, fields)
    assert crop.shape == (1, 3, 3)
    a, b = (crop[0] - 0.5).flatten().double(), signs.flatten().double()
    assert float(a @ b / (a.norm() * b.norm())) > 0.99
    whole = visualize_channels(model, [("0", 0)], (0.5,), (0.25,), settings, units={"0": (7, 7)})[0, 0]
    assert torch.equal(whole[6:9, 6:9], crop[0])  # the crop is cut where the unit looks
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[6:9, 6:9] = False
    assert (whole[outside] - 0.5).abs().max() < 0.01  # untouched: only the initial noise (sd 0.01 before sigmoid)


def test_resnet_stages_visualize_at_128_px() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    fields = receptive_fields(model, 128)
    settings = VisualizationSettings(image_size=128, steps=1, blur=0.5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    crops = visualize_fields(model, [("layer1", 0), ("layer2", 5)], mean, std, settings, fields)
    # layer1 (43, 4, -21): unit round((63.5 - 0) / 4 = 15.875) = 16 -> [-21 + 64, +43) = [43, 86), 43 px;
    # layer2 (99, 8, -49): unit round(63.5 / 8 = 7.94) = 8 -> [-49 + 64, +99) = [15, 114), 99 px.
    assert [tuple(c.shape) for c in crops] == [(3, 43, 43), (3, 99, 99)]
    whole = visualize_channels(model, [("layer4", 3)], mean, std, settings)
    assert whole.shape == (1, 3, 128, 128) and bool(((whole >= 0) & (whole <= 1)).all())
