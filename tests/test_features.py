"""Feature instruments (receptive fields, dataset examples, feature visualization, layer statistics, linear
probes, CKA, filter statistics) against hand-derived answers, and the model-state contract for those that
run a model."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from cnn_explorer.interpret.features.cka import ActivationSample, cka_matrix, linear_cka
from cnn_explorer.interpret.features.dataset_examples import (
    NEUTRAL_GREY,
    ChannelExamples,
    TopActivations,
    crop_examples,
    top_activating_examples,
)
from cnn_explorer.interpret.features.feature_visualization import (
    VisualizationSettings,
    _source,
    color_covariance,
    visualize_channels,
    visualize_classes,
)
from cnn_explorer.interpret.features.filter_stats import filter_drift, filter_statistics
from cnn_explorer.interpret.features.layer_stats import (
    LayerStatsObserver,
    class_selectivity,
    observe_layers,
)
from cnn_explorer.interpret.features.linear_probe import linear_probe, linear_probes
from cnn_explorer.interpret.features.receptive_field import ReceptiveField, field_box, receptive_fields
from cnn_explorer.interpret.model_state import forward_hooks
from cnn_explorer.models import ConvNet
from tests.model_checks import assert_intact, disturbable_model, snapshot

NO_TRANSFORMS = {"jitter": 0, "scale": 0.0, "rotate": 0.0}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


# --- receptive fields --------------------------------------------------------------------------------------

# [32|64, M, 64|128, M, 128|256, M], every conv 3x3 pad 1, every pool 2x2 stride 2 (r: size, j: jump, u: start):
#   input            r=1                 j=1      u=0
#   conv1  k3 p1     r=1+2*1=3           j=1      u=0-1*1=-1
#   pool1  k2 s2     r=3+1*1=4           j=2      u=-1
#   conv2  k3 p1     r=4+2*2=8           j=2      u=-1-1*2=-3
#   pool2  k2 s2     r=8+1*2=10          j=4      u=-3
#   conv3  k3 p1     r=10+2*4=18         j=4      u=-3-1*4=-7
#   pool3  k2 s2     r=18+1*4=22         j=8      u=-7
SMALL_FIELDS = {
    "features.conv1": (3, 1, -1),
    "features.pool1": (4, 2, -1),
    "features.conv2": (8, 2, -3),
    "features.pool2": (10, 4, -3),
    "features.conv3": (18, 4, -7),
    "features.pool3": (22, 8, -7),
}
# [32, 32, M, 64, 64, M, 128, 128, M]:
#   conv1 r=3 j=1 u=-1; conv2 r=3+2=5 j=1 u=-2; pool1 r=5+1=6 j=2 u=-2;
#   conv3 r=6+2*2=10 j=2 u=-2-2=-4; conv4 r=10+4=14 j=2 u=-6; pool2 r=14+2=16 j=4 u=-6;
#   conv5 r=16+2*4=24 j=4 u=-10; conv6 r=24+8=32 j=4 u=-14; pool3 r=32+4=36 j=8 u=-14
DEEP_FIELDS = {
    "features.conv1": (3, 1, -1),
    "features.conv2": (5, 1, -2),
    "features.pool1": (6, 2, -2),
    "features.conv3": (10, 2, -4),
    "features.conv4": (14, 2, -6),
    "features.pool2": (16, 4, -6),
    "features.conv5": (24, 4, -10),
    "features.conv6": (32, 4, -14),
    "features.pool3": (36, 8, -14),
}


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ([32, "M", 64, "M", 128, "M"], SMALL_FIELDS),
        ([64, "M", 128, "M", 256, "M"], SMALL_FIELDS),  # medium: other widths, the same windows
        ([32, 32, "M", 64, 64, "M", 128, 128, "M"], DEEP_FIELDS),
    ],
)
def test_receptive_fields_of_convnets_match_hand_counts(architecture: list, expected: dict) -> None:
    fields = receptive_fields(ConvNet(architecture, batch_norm=True))
    for name, (size, stride, start) in expected.items():
        assert fields[name] == ReceptiveField(size, stride, start), name
    # Inside a block, the conv sets the field and BatchNorm/ReLU pass it on.
    assert fields["features.conv1.conv"] == fields["features.conv1.bn"] == fields["features.conv1.relu"]
    # pool3 centres: small -7 + (22 - 1) / 2 = 3.5, deep -14 + (36 - 1) / 2 = 3.5: the 8 px grid starts at 3.5.
    assert fields["features.pool3"].center == 3.5


def test_field_box_is_where_the_gradient_of_an_output_pixel_reaches() -> None:
    # Positive weights and average pools: every input pixel inside the field has a nonzero gradient.
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(1, 1, 3, padding=1), nn.AvgPool2d(2)
    )
    with torch.no_grad():
        for module in (model[0], model[2]):
            module.weight.fill_(1.0)
    rf = receptive_fields(model)["3"]
    assert rf == ReceptiveField(size=10, stride=4, start=-3)  # as pool2 of the small CNN above
    for y, x in [(0, 0), (1, 2), (3, 3)]:
        image = torch.zeros(1, 1, 16, 16, requires_grad=True)
        (gradient,) = torch.autograd.grad(model(image)[0, 0, y, x], image)
        top, left, bottom, right = field_box(rf, y, x, 16)
        expected = torch.zeros(16, 16, dtype=torch.bool)
        expected[top:bottom, left:right] = True
        assert torch.equal(gradient[0, 0] != 0, expected), (y, x)
    assert field_box(rf, 0, 0, 16) == (0, 0, 7, 7)  # [-3, 7) clipped at the top-left
    assert field_box(rf, 3, 3, (16, 14)) == (9, 9, 16, 14)  # [9, 19) clipped at the bottom-right


def test_receptive_fields_of_strided_dilated_conv_and_unsupported_modules() -> None:
    # Effective kernel 2 * (3 - 1) + 1 = 5: r = 1 + 4 = 5, j = 2, u = -2; then an avg-pool 3 stride 1 pad 1:
    # r = 5 + 2 * 2 = 9, j = 2, u = -2 - 1 * 2 = -4.
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=2, dilation=2), nn.AvgPool2d(3, stride=1, padding=1))
    assert receptive_fields(model) == {"0": ReceptiveField(5, 2, -2), "1": ReceptiveField(9, 2, -4)}
    with pytest.raises(ValueError, match=r"'1' \(Upsample\)"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2)))
    with pytest.raises(ValueError, match="transposed"):
        receptive_fields(nn.Sequential(nn.ConvTranspose2d(1, 1, 3)), in_channels=1)
    assert receptive_fields(nn.Conv2d(1, 1, 3)) == {}  # the root module is the model, not one of its layers
    with pytest.raises(ValueError, match="square"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, (3, 5))))


# --- dataset examples --------------------------------------------------------------------------------------

PLUS = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
# Images that hold a plus: index -> (brightness, centre row, centre col); brighter pluses score higher.
PLUSES = {13: (250, 5, 7), 2: (200, 2, 2), 9: (150, 8, 1), 4: (100, 9, 9)}


def plus_detector() -> nn.Sequential:
    """Channel 0: +1 on the plus, -1 on the corners, every colour; channel 1: all-zero weights (dead)."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = (2 * PLUS - 1).expand(3, 3, 3)
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.MaxPool2d(2)))


def plus_images() -> torch.Tensor:
    """20 uint8 12x12 RGB images of faint noise (< 20), four of them with a bright plus on a cleared 5x5 patch."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 20, (20, 3, 12, 12), generator=generator, dtype=torch.uint8)
    for index, (brightness, row, col) in PLUSES.items():
        images[index, :, max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3] = 0
        images[index, :, row - 1 : row + 2, col - 1 : col + 2] = (PLUS * brightness).to(torch.uint8)
    return images


def test_top_examples_are_the_plus_images_and_crops_are_centred_on_the_plus() -> None:
    images = plus_images()
    # Batches of 6: the four plus images land in different batches, so the running buffers must merge.
    batches = [(images[i : i + 6].float() / 255, torch.arange(i, min(i + 6, 20))) for i in range(0, 20, 6)]
    examples = top_activating_examples(plus_detector(), batches, ["relu", "pool"], k=4)
    order = sorted(PLUSES, key=lambda i: -PLUSES[i][0])  # [13, 2, 9, 4]
    relu = examples["relu"]
    assert relu.indices[0].tolist() == order
    assert relu.rows[0].tolist() == [PLUSES[i][1] for i in order]
    assert relu.cols[0].tolist() == [PLUSES[i][2] for i in order]
    # On a cleared patch the plus scores 5 pixels x 3 colours x brightness / 255, corners 0.
    expected = torch.tensor([15 * PLUSES[i][0] / 255 for i in order])
    assert torch.allclose(relu.values[0], expected, atol=1e-5)
    # The dead channel: all zero, ties kept in the order seen.
    assert relu.values[1].tolist() == [0.0] * 4 and relu.indices[1].tolist() == [0, 1, 2, 3]
    assert examples["pool"].indices[0].tolist() == order

    fields = receptive_fields(plus_detector())
    crops = crop_examples(images, relu, fields["relu"])  # 3x3 fields centred on the arg-max
    assert crops.shape == (2, 4, 3, 3, 3) and crops.dtype == torch.uint8
    for slot, index in enumerate(order):
        assert torch.equal(crops[0, slot], (PLUS * PLUSES[index][0]).to(torch.uint8).expand(3, 3, 3))
    # 4x4 fields hold the whole plus and cleared background; fill 0 so that the padding adds nothing to the sums.
    pooled = crop_examples(images, examples["pool"], fields["pool"], fill=0)
    assert pooled.shape == (2, 4, 3, 4, 4)
    assert pooled[0].flatten(1).float().sum(dim=1).tolist() == [15 * PLUSES[i][0] for i in order]


def test_crop_examples_pads_outside_the_image_with_grey() -> None:
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    field = ReceptiveField(size=3, stride=1, start=-1)
    corners = ChannelExamples(
        values=torch.ones(1, 2),
        indices=torch.zeros(1, 2, dtype=torch.long),
        rows=torch.tensor([[0, 3]]),
        cols=torch.tensor([[0, 3]]),
    )
    crops = crop_examples(images, corners, field)
    grey = NEUTRAL_GREY
    assert crops[0, 0, 0].tolist() == [[grey, grey, grey], [grey, 0, 1], [grey, 4, 5]]
    assert crops[0, 1, 0].tolist() == [[10, 11, grey], [14, 15, grey], [grey, grey, grey]]
    assert crop_examples(images, corners, field, fill=0)[0, 0, 0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="uint8"):
        crop_examples(images.float(), corners, field)


def test_top_activations_rejects_missing_indices_and_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        TopActivations(k=0)
    with pytest.raises(ValueError, match="indices"):
        TopActivations(k=2).update("x", torch.zeros(2, 3, 4, 4), None, None)


# --- layer statistics ----------------------------------------------------------------------------------------


def test_class_selectivity_of_a_hand_built_table() -> None:
    class_means = torch.tensor(
        [
            # ch0: max 3, others (1 + 2) / 2 = 1.5 -> (3 - 1.5) / (3 + 1.5) = 1/3
            # ch1: all zero -> 0 by convention; ch2: equal -> 0; ch3: one class only -> 1; ch4: negative -> NaN
            [3.0, 0.0, 1.0, 4.0, -1.0],
            [1.0, 0.0, 1.0, 0.0, 2.0],
            [2.0, 0.0, 1.0, 0.0, 0.0],
        ]
    )
    selectivity = class_selectivity(class_means)
    assert torch.allclose(selectivity[:4], torch.tensor([1 / 3, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert selectivity[4].isnan()
    with pytest.raises(ValueError, match="K >= 2"):
        class_selectivity(torch.ones(1, 3))


def test_layer_statistics_of_a_relu_on_hand_built_inputs() -> None:
    # 4 images, 2 channels, 1x2 pixels, through a ReLU; channel 1 is never positive.
    images = torch.tensor(
        [
            [[[2.0, 0.0]], [[-1.0, -1.0]]],  # label 0 -> ch0 [2, 0]
            [[[4.0, -3.0]], [[-2.0, 0.0]]],  # label 0 -> ch0 [4, 0]
            [[[0.0, 0.0]], [[-1.0, -5.0]]],  # label 1 -> ch0 [0, 0]
            [[[1.0, 1.0]], [[0.0, -1.0]]],  # label 1 -> ch0 [1, 1]
        ]
    )
    labels = torch.tensor([0, 0, 1, 1])
    model = nn.Sequential(OrderedDict(relu=nn.ReLU(), flat=nn.Flatten()))
    batches = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    observer = LayerStatsObserver(num_classes=3)  # class 2 has no image
    observe_layers(model, ((x, y, None) for x, y in batches), ["relu", "flat"], [observer])
    stats = observer.result()
    relu = stats["relu"]
    assert relu.sparsity == 12 / 16  # ch0: 1 + 1 + 2 + 0 zeros of 8; ch1: 8 of 8
    assert relu.channel_sparsity.tolist() == [0.5, 1.0]
    assert relu.dead.tolist() == [False, True] and relu.dead_count == 1
    assert relu.pooled.tolist() == [[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert relu.labels.tolist() == [0, 0, 1, 1]
    assert relu.class_means[:2].tolist() == [[1.5, 0.0], [0.5, 0.0]] and relu.class_means[2].isnan().all()
    # ch0: (1.5 - 0.5) / (1.5 + 0.5) over the two classes present; ch1 dead -> 0 by the index's convention.
    assert relu.selectivity.tolist() == [0.5, 0.0]
    # The layer's mean and median leave the dead channel (0/0 in Morcos et al.) out: over ch0 alone, 0.5.
    assert relu.selectivity_mean == 0.5 and relu.selectivity_median == 0.5 and relu.live_count == 1
    flat = stats["flat"]  # [B, 4] output: each feature its own 1x1 "channel"
    assert flat.sparsity == 12 / 16 and flat.dead.tolist() == [False, False, True, True]


def test_one_pass_feeds_stats_and_examples_and_keeps_the_model_intact() -> None:
    model = disturbable_model()
    before = snapshot(model)
    images = torch.randn(6, 3, 8, 8)
    batches = [
        (images[:4], torch.tensor([0, 1, 2, 3]), torch.arange(4)),
        (images[4:], torch.tensor([4, 0]), torch.arange(4, 6)),
    ]
    stats, tops, sample = LayerStatsObserver(num_classes=5), TopActivations(k=3), ActivationSample(5, pool_to=2)
    with torch.inference_mode():
        observe_layers(model, batches, ["features.conv1", "features.conv2"], [stats, tops, sample])
    assert_intact(model, before)
    assert stats.result()["features.conv2"].pooled.shape == (6, 6)
    assert tops.result()["features.conv1"].indices.shape == (4, 3)
    # The first 5 images; conv1's 4 x 8 x 8 maps pooled to 4 x 2 x 2, conv2's 6 x 4 x 4 too.
    assert sample.result()["features.conv1"].shape == (5, 16) and sample.result()["features.conv2"].shape == (5, 24)
    with pytest.raises(ValueError, match="labels must be class indices"):
        observe_layers(model, [(images[:2], torch.tensor([0, 7]), None)], ["features.conv1"], [LayerStatsObserver(5)])
    assert_intact(model, before)


# --- linear probe --------------------------------------------------------------------------------------------


def separable_features(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes at corners of a 2-D square, 10 apart, noise 0.5, plus 6 columns of pure noise."""
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.randint(0, 3, (count,), generator=generator)
    signal = centres[labels] + 0.5 * torch.randn(count, 2, generator=generator).clamp(-3, 3)
    return torch.cat([signal, torch.randn(count, 6, generator=generator)], dim=1), labels


def test_linear_probe_separates_separable_features_deterministically() -> None:
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = separable_features(600, generator)
    val_x, val_y = separable_features(300, generator)
    result = linear_probe(train_x, train_y, val_x, val_y, num_classes=3, max_train=400)
    assert result.val_accuracy == 1.0 and result.train_accuracy == 1.0 and result.train_size == 400
    with torch.inference_mode():
        again = linear_probe(train_x, train_y, val_x, val_y, num_classes=3, max_train=400)
    assert again == result
    both = linear_probes({"a": train_x, "b": train_x[:, 2:]}, train_y, {"a": val_x, "b": val_x[:, 2:]}, val_y, 3)
    assert both["a"].val_accuracy == 1.0
    assert both["b"].val_accuracy < 0.6  # noise columns only: about chance (1/3)
    with pytest.raises(ValueError, match="val_labels"):
        linear_probe(train_x, train_y, val_x, val_y[:5], num_classes=3)


# --- CKA -----------------------------------------------------------------------------------------------------


def test_linear_cka_invariances_and_a_hand_value() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=generator)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 2.5 * x + 3.0) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(50, 3, generator=generator)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    # 1-D representations: CKA is the squared correlation. x = [1, 2, 3], y = [1, 3, 2]: centred [-1, 0, 1] and
    # [-1, 1, 0], (x.y)^2 = 1, |x|^2 |y|^2 = 4 -> 0.25.
    assert linear_cka(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [3.0], [2.0]])) == pytest.approx(0.25)
    # Independent features, n >> p: E[CKA] ~ sqrt(p q) / n = 8 / 4000 = 0.002.
    a, b = torch.randn(4000, 8, generator=generator), torch.randn(4000, 8, generator=generator)
    assert linear_cka(a, b) < 0.02
    assert math.isnan(linear_cka(torch.ones(5, 3), x[:5]))


def test_activation_sample_keeps_the_first_images_pooled() -> None:
    sample = ActivationSample(count=4, pool_to=2)
    # Image i's 4x4 map: value i in its top-left 2x2 quadrant, 0 elsewhere -> pooled [i, 0, 0, 0].
    maps = torch.zeros(6, 1, 4, 4)
    for i in range(6):
        maps[i, 0, :2, :2] = i
    sample.update("layer", maps[:3], None, None)
    sample.update("layer", maps[3:], None, None)  # only image 3 fits
    sample.update("flat", maps[:3, 0, 0, :], None, None)  # [B, C] rows are kept as they are
    kept = sample.result()
    assert kept["layer"].tolist() == [[float(i), 0.0, 0.0, 0.0] for i in range(4)]
    assert kept["flat"].shape == (3, 4)


def test_linear_cka_gram_and_feature_forms_agree_and_matrix_matches() -> None:
    generator = torch.Generator().manual_seed(1)
    wide = torch.randn(20, 2, 5, 5, generator=generator)  # 50 features > 20 inputs: Gram form
    narrow = torch.randn(20, 3, generator=generator)  # feature form
    mixed = torch.cat([narrow, wide.flatten(1)[:, :30]], dim=1)
    # The same pair, computed both ways by hand.
    a = wide.flatten(1).double() - wide.flatten(1).double().mean(0)
    b = narrow.double() - narrow.double().mean(0)
    by_features = (b.T @ a).pow(2).sum() / ((a.T @ a).norm() * (b.T @ b).norm())
    by_gram = ((a @ a.T) * (b @ b.T)).sum() / ((a @ a.T).norm() * (b @ b.T).norm())
    assert float(by_features) == pytest.approx(float(by_gram), abs=1e-12)
    assert linear_cka(wide, narrow) == pytest.approx(float(by_features), abs=1e-12)
    matrix = cka_matrix([wide, narrow, mixed])
    assert torch.equal(matrix, matrix.T)
    assert torch.allclose(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    assert matrix[0, 2].item() == pytest.approx(linear_cka(wide, mixed), abs=1e-12)
    across = cka_matrix([wide, narrow], [mixed])
    assert across.shape == (2, 1) and across[1, 0].item() == pytest.approx(linear_cka(narrow, mixed), abs=1e-12)
    with pytest.raises(ValueError, match="same inputs"):
        cka_matrix([wide, narrow[:10]])


# --- filter statistics ---------------------------------------------------------------------------------------

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def test_filter_statistics_of_hand_built_filters() -> None:
    grey = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)).expand(3, 3, 3)
    red_minus_green = torch.stack([torch.ones(3, 3), -torch.ones(3, 3), torch.zeros(3, 3)])
    sobel_x = SOBEL_X.expand(3, 3, 3)
    sobel_y = SOBEL_X.T.expand(3, 3, 3)
    stats = filter_statistics(torch.stack([grey, red_minus_green, sobel_x, sobel_y]))
    assert stats.achromatic_share[0] == pytest.approx(1.0, abs=1e-6)
    assert stats.achromatic_share[1] == pytest.approx(0.0, abs=1e-6)
    assert stats.dc_share[1] == pytest.approx(1.0, abs=1e-6)
    assert stats.orientation[1].isnan() and stats.coherence[1].isnan()  # flat colour: no structure
    assert stats.achromatic_share[2] == pytest.approx(1.0, abs=1e-6)
    assert stats.dc_share[2] == pytest.approx(0.0, abs=1e-6)
    # torch.gradient of Sobel-x (one-sided differences at the borders, central inside):
    #   d/dx = [[1, 1, 1], [2, 2, 2], [1, 1, 1]]  -> J_xx = 3 * (1 + 4 + 1) = 18 per channel
    #   d/dy = [[-1, 0, 1], [0, 0, 0], [1, 0, -1]] -> J_yy = 4 per channel, J_xy = 0
    # orientation atan2(0, 18 - 4) / 2 = 0 degrees (changes along x); coherence (18 - 4) / (18 + 4) = 7/11.
    assert stats.orientation[2] == pytest.approx(0.0, abs=1e-4)
    assert stats.coherence[2] == pytest.approx(7 / 11, abs=1e-6)
    assert stats.orientation[3] == pytest.approx(90.0, abs=1e-4)
    assert stats.norm[1] == pytest.approx(math.sqrt(18))
    one_channel = filter_statistics(SOBEL_X.view(1, 1, 3, 3))
    assert one_channel.achromatic_share[0].isnan() and one_channel.dc_share[0] == pytest.approx(0.0, abs=1e-6)


def test_filter_statistics_baseline_of_random_filters_and_drift() -> None:
    # i.i.d. weights: the grey part is 1 of 3 colour dimensions, the DC part 1 of 9 positions.
    initial = torch.randn(2000, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    stats = filter_statistics(initial)
    assert float(stats.achromatic_share.mean()) == pytest.approx(1 / 3, abs=0.02)
    assert float(stats.dc_share.mean()) == pytest.approx(1 / 9, abs=0.02)
    drift = filter_drift(2 * initial, initial)
    assert torch.allclose(drift.relative_change, torch.ones(2000))
    assert torch.allclose(drift.norm_ratio, torch.full((2000,), 2.0))
    assert drift.summary() == pytest.approx({"relative_change": 1.0, "norm_ratio": 2.0})
    with pytest.raises(ValueError, match="one shape"):
        filter_drift(initial, initial[:, :1])


# --- feature visualization -----------------------------------------------------------------------------------


def linear_channel_model(weight: torch.Tensor) -> nn.Sequential:
    """One conv with a kernel as large as the image: channel c's activation is weight[c] . input."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return nn.Sequential(OrderedDict(conv=conv))


@pytest.mark.parametrize(("channels", "mean", "std"), [(3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), (1, (0.5,), (0.25,))])
def test_pixel_visualization_of_a_linear_channel_is_its_weight_pattern(channels: int, mean: tuple, std: tuple) -> None:
    # Weights of one magnitude (+-1): d activation / d z_i = w_i / std * sigmoid'(z_i) has sign(w_i) at every
    # step, and Adam steps each coordinate by lr * sign(gradient) under a gradient of constant sign. So
    # z = noise + lr * t * sign(w), and the image minus grey points along w.
    signs = torch.randint(0, 2, (2, channels, 16, 16), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    settings = VisualizationSettings(
        image_size=16, steps=20, parameterization="pixel", decorrelate=False, **NO_TRANSFORMS
    )
    images = visualize_channels(linear_channel_model(signs), [("conv", 0), ("conv", 1)], mean, std, settings)
    assert images.shape == (2, channels, 16, 16)
    assert cosine(images[0] - 0.5, signs[0]) > 0.99 and cosine(images[1] - 0.5, signs[1]) > 0.99


@pytest.mark.parametrize("color_correlation", [None, torch.eye(3)])
def test_fourier_visualization_of_a_grating_channel_peaks_at_its_frequency(color_correlation) -> None:
    # A linear channel tuned to one spatial frequency has its gradient at that frequency only; the optimized
    # image's strongest non-DC Fourier component is that frequency (row 1, column 2 of the rfft).
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    grating = torch.cos(2 * math.pi * (2 * cols + rows) / 16)
    settings = VisualizationSettings(image_size=16, steps=48, **NO_TRANSFORMS)
    for channels in (1, 3):
        model = linear_channel_model(grating.expand(1, channels, 16, 16))
        corr = color_correlation if channels == 3 else None
        image = visualize_channels(model, [("conv", 0)], (0.5,) * channels, (0.25,) * channels, settings, 0, corr)[0]
        amplitude = torch.fft.rfft2(image.mean(dim=0) - image.mean()).abs()
        amplitude[0, 0] = 0
        assert divmod(int(amplitude.argmax()), amplitude.shape[1]) == (1, 2), channels
        assert cosine(image.mean(dim=0) - image.mean(), grating) > 0.5


def test_class_visualization_of_a_linear_classifier_reaches_the_l2_optimum() -> None:
    # logit_c = w_c . u with u = (x - mean) / std the normalized input and w_c = +-1; the objective
    # w_c . u - l2 * mean(u^2) is maximized per pixel at u_i = n * w_i / (2 * l2), n = 3 * 8 * 8 = 192.
    # With l2 = 480: u = +-0.2, x = 0.5 + 0.25 * u = 0.5 +- 0.05.
    signs = torch.randint(0, 2, (2, 192), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(signs)
    settings = VisualizationSettings(
        image_size=8, steps=300, lr=0.02, parameterization="pixel", decorrelate=False, l2=480.0, **NO_TRANSFORMS
    )
    images = visualize_classes(model, [1, 0], (0.5,) * 3, (0.25,) * 3, settings)
    expected = 0.5 + 0.05 * signs[[1, 0]].view(2, 3, 8, 8)
    assert torch.allclose(images, expected, atol=1e-3)


def test_feature_visualization_is_seeded_leaves_model_and_global_rng_alone() -> None:
    model = disturbable_model()
    before = snapshot(model)
    rng = torch.get_rng_state()
    settings = VisualizationSettings(image_size=8, steps=4)
    targets = [("features.conv1", 0), ("features.conv2", 5), ("features.conv1", 3)]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    with torch.inference_mode():
        first = visualize_channels(model, targets, mean, std, settings, seed=3)
    again = visualize_channels(model, targets, mean, std, settings, seed=3)
    other = visualize_channels(model, targets, mean, std, settings, seed=4)
    classes = visualize_classes(model, [4, 0], mean, std, settings)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (3, 3, 8, 8) and classes.shape == (2, 3, 8, 8)
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    assert torch.equal(torch.get_rng_state(), rng)
    assert_intact(model, before)
    with pytest.raises(ValueError, match=r"channels of 'features.conv2' must be in \[0, 6\)"):
        visualize_channels(model, [("features.conv2", 6)], mean, std, settings)
    with pytest.raises(ValueError, match="classes must be in"):
        visualize_classes(model, [5], mean, std, settings)
    with pytest.raises(ValueError, match="3-channel"):
        visualize_channels(model, targets, (0.5,), (0.25,), settings, color_correlation=torch.eye(3))
    assert_intact(model, before)


def test_channel_visualization_stops_the_forward_at_the_deepest_target() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("ran past the target layer")

    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), boom=Boom()))
    images = visualize_channels(model, [("conv", 1)], (0.5,), (0.25,), VisualizationSettings(image_size=8, steps=2))
    assert images.shape == (1, 1, 8, 8)


def test_pre_relu_scoring_moves_a_channel_that_is_zero_after_its_relu() -> None:
    # conv = mean of the 3x3 neighbourhood - 100: negative for any input in [0, 1], so the block's ReLU
    # outputs 0 everywhere and has zero gradient. Before the ReLU the objective is the mean input, which the
    # optimization pushes up: the image brightens. After it, the image stays the initial noise around grey.
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1 / 9)
        conv.bias.fill_(-100.0)
    model = nn.Sequential(OrderedDict(block=nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU()))))
    settings = VisualizationSettings(image_size=8, steps=30, parameterization="pixel", **NO_TRANSFORMS)
    before_relu = visualize_channels(model, [("block", 0)], (0.5,), (0.25,), settings)
    after_relu = visualize_channels(model, [("block", 0)], (0.5,), (0.25,), settings, pre_relu=False)
    assert float(before_relu.min()) > 0.7
    assert float((after_relu - 0.5).abs().max()) < 0.01
    inplace = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(inplace=True)))
    with pytest.raises(ValueError, match="in-place ReLU"):
        visualize_channels(inplace, [("relu", 0)], (0.5,), (0.25,), settings)


@pytest.mark.parametrize("layer", ["layer4", "layer4.0"])  # its last block without, and one with, a downsample
def test_pre_relu_scoring_of_a_resnet_block_is_its_sum_before_the_relu_and_moves_a_dead_channel(layer) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    block = net.get_submodule(layer if layer == "layer4.0" else "layer4.1")
    # What the source reads, against the block's own arithmetic on the same input, without its in-place ops.
    captured, inputs = {}, {}
    source = _source(net, layer, pre_relu=True)
    hooks = [*source.hooked, layer if layer == "layer4.0" else "layer4.1"]

    def keep(name, module, args, output):
        captured[name] = (args[0], output.clone())
        inputs[name] = args[0].clone()

    with torch.no_grad(), forward_hooks(net, hooks, keep):
        net(torch.rand(2, 3, 64, 64))
    x = inputs[hooks[-1]]
    with torch.no_grad():
        residual = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        expected = residual + (block.downsample(x) if block.downsample is not None else x)
        torch.testing.assert_close(source.read(captured), expected)
        assert (expected < 0).any()  # the sum, not the block's output after its ReLU
        # Channel 7's last BatchNorm shifted far down: zero after the block's ReLU for any input.
        net.layer4[1].bn2.bias[7] = -100.0
    settings = VisualizationSettings(image_size=32, steps=10, parameterization="pixel", **NO_TRANSFORMS)
    dead = visualize_channels(net, [("layer4", 7)], IMAGENET_MEAN, IMAGENET_STD, settings, pre_relu=False)
    moved = visualize_channels(net, [("layer4", 7)], IMAGENET_MEAN, IMAGENET_STD, settings)
    assert float((dead - 0.5).abs().max()) < 0.01  # no gradient: the starting noise around grey
    assert float((moved - 0.5).abs().max()) > 0.1


def test_color_covariance_of_grey_images_is_all_equal() -> None:
    grey = torch.randint(0, 256, (4, 1, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    covariance = color_covariance(grey.expand(4, 3, 5, 5))
    assert torch.allclose(covariance, covariance[0, 0].expand(3, 3))
    assert covariance[0, 0] > 0
