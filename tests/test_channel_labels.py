"""Channel cards and the report's channel figures (issue 18, item 11): the optimum is the central unit's, cut to
its receptive field and shown at the patches' size; each label names the mean-activation class and the classes of
the top patches. Counts and labels against hand-derived answers; the card and the figure on a tiny ConvNet whose
conv1 sees 3 px."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import callbacks.features as features_callback
from callbacks.features import CARD_EXAMPLES, FeatureStatsCallback
from cnn_explorer.interpret.features import analyze_layers
from cnn_explorer.interpret.features.dataset_examples import ChannelExamples, example_class_counts
from cnn_explorer.interpret.features.feature_visualization import VisualizationSettings, visualize_channels
from cnn_explorer.interpret.layers import stages
from cnn_explorer.models import ConvNet
from cnn_explorer.render.cards import CARD_BOX, channel_label, channel_rows, channels_card
from cnn_explorer.report.sections.features import channel_figures, most_selective

# --- the class counts of the top patches ----------------------------------------------------------------------

LABELS = torch.tensor([0, 1, 1, 2, 3, 1])  # the class of images 0..5


def hand_examples() -> ChannelExamples:
    zeros = torch.zeros(3, 4, dtype=torch.long)
    return ChannelExamples(
        values=torch.tensor([[9.0, 7.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0], [4.0, 2.0, 0.0, 0.0]]),
        indices=torch.tensor([[1, 2, 0, 3], [0, 1, 2, 3], [3, 5, 4, 0]]),
        rows=zeros,
        cols=zeros,
    )


def test_class_counts_of_hand_built_examples_count_active_ones_only() -> None:
    counts = example_class_counts(hand_examples(), LABELS, 4)
    # ch 0: images 1, 2, 0, 3 -> classes 1, 1, 0, 2, all active.
    # ch 1: dead (every value 0): nothing counted, though it lists four images.
    # ch 2: images 3, 5 active -> classes 2, 1; images 4 and 0 have value 0.
    assert counts.dtype == torch.long
    assert counts.tolist() == [[1, 2, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]]
    # Only the first two (those shown): ch 0's images 1, 2 are both class 1.
    assert example_class_counts(hand_examples(), LABELS, 4, k=2).tolist() == [[0, 2, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]


def test_class_counts_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="k must be"):
        example_class_counts(hand_examples(), LABELS, 4, k=0)
    with pytest.raises(ValueError, match="1-D"):
        example_class_counts(hand_examples(), LABELS[None], 4)
    with pytest.raises(ValueError, match="outside"):
        example_class_counts(hand_examples(), LABELS[:4], 4)  # ch 2 indexes image 5
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        example_class_counts(hand_examples(), LABELS, 3)  # image 4 is of class 3


# --- the label ---------------------------------------------------------------------------------------------------

NAMES = ["airplane", "car", "bird", "truck"]


def test_label_names_the_mean_class_and_the_two_most_frequent_patch_classes() -> None:
    means = torch.tensor([0.1, 0.2, 0.0, 0.5], dtype=torch.float64)
    label = channel_label(12, 0.4127, means, torch.tensor([0, 7, 0, 2]), NAMES)
    assert label == "ch 12, SI 0.41\nmean: truck\ntop 9: car 7, truck 2"
    # Three classes: the two largest named, the third's 1 is the rest of "top 9".
    assert channel_label(3, 0.5, means, torch.tensor([1, 6, 0, 2]), NAMES).endswith("\ntop 9: car 6, truck 2")
    # Ties go to the lower class index; one class alone is named alone.
    assert channel_label(0, 0.5, means, torch.tensor([3, 0, 3, 3]), NAMES).endswith("\ntop 9: airplane 3, bird 3")
    assert channel_label(0, 0.5, means, torch.tensor([0, 5, 0, 0]), NAMES).endswith("\ntop 5: car 5")


def test_label_of_a_channel_with_no_active_patch_and_a_class_without_images() -> None:
    # A class with no image has a NaN mean: it is not the preferred class (argmax alone would pick the NaN).
    means = torch.tensor([float("nan"), 0.1, 0.3, 0.2], dtype=torch.float64)
    assert channel_label(5, 0.0, means, torch.zeros(4, dtype=torch.long), NAMES) == (
        "ch 5, SI 0.00\nmean: bird\ntop: none active"
    )
    with pytest.raises(ValueError, match="one mean and one count per class"):
        channel_label(5, 0.0, means[:3], torch.zeros(4, dtype=torch.long), NAMES)


# --- the optimum beside the patches --------------------------------------------------------------------------------


def test_channel_rows_put_the_optimum_first_at_the_patches_size() -> None:
    optimum = torch.rand(2, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    patches = torch.randint(0, 256, (2, 4, 3, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    rows = channel_rows(optimum, patches)
    assert rows.shape == (2, 5, 3, 3, 3)
    assert torch.equal(rows[:, 0], optimum) and torch.equal(rows[:, 1:], patches.float() / 255)
    # A grey optimum is shown grey; one clipped smaller at the border is enlarged by whole pixels (2x2 -> 4x4),
    # one larger is averaged (4x4 -> 2x2: each output pixel the mean of a 2x2 block).
    grey = channel_rows(torch.full((1, 1, 3, 3), 0.25), patches[:1])
    assert torch.equal(grey[0, 0], torch.full((3, 3, 3), 0.25))
    small = torch.arange(4.0).view(1, 1, 2, 2).expand(1, 3, 2, 2) / 4
    big_patches = torch.zeros(1, 1, 3, 4, 4, dtype=torch.uint8)
    enlarged = channel_rows(small, big_patches)[0, 0, 0]
    assert enlarged.tolist() == [[0, 0, 0.25, 0.25], [0, 0, 0.25, 0.25], [0.5, 0.5, 0.75, 0.75], [0.5, 0.5, 0.75, 0.75]]
    large = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4) / 16
    shrunk = channel_rows(large, torch.zeros(1, 1, 3, 2, 2, dtype=torch.uint8))[0, 0, 0]
    assert shrunk.flatten().tolist() == pytest.approx([2.5 / 16, 4.5 / 16, 10.5 / 16, 12.5 / 16])
    with pytest.raises(ValueError, match="same K"):
        channel_rows(optimum[:1], patches)


# --- the card and the report's figure on a tiny net ------------------------------------------------------------------

SIZE, CLASSES, STEPS = 16, ["red", "green", "blue"], 3
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# ConvNet [8, M, 8] on 16 px: conv1 (3 px field, stride 1, start -1), conv2 (8 px, stride 2, start -3).
# The central unit is the one whose field centre is nearest (16 - 1) / 2 = 7.5, halves down:
#   conv1: centre of unit i = -1 + 1 + i = i -> i = 7, its field [-1 + 7, + 3) = [6, 9);
#   conv2: centre = -3 + 3.5 + 2i -> i = (7.5 - 0.5) / 2 = 3.5 -> 3, its field [-3 + 6, + 8) = [3, 11).
CENTRAL = {"features.conv1": ((7, 7), slice(6, 9)), "features.conv2": ((3, 3), slice(3, 11))}


@pytest.fixture(scope="module")
def tiny():
    """A ConvNet measured on 60 images of three colours, and the DataModule-like things the views read."""
    torch.manual_seed(0)
    net = ConvNet([8, "M", 8], hidden=8, num_classes=3, image_size=SIZE).eval()
    labels = torch.arange(60) % 3
    noise = torch.randint(0, 96, (60, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    images = (noise + 150 * torch.nn.functional.one_hot(labels, 3)[:, :, None, None]).clamp(0, 255).to(torch.uint8)
    inputs = (images.float() / 255 - 0.5) / 0.25
    batches = [(inputs[i : i + 20], labels[i : i + 20], torch.arange(i, i + 20)) for i in range(0, 60, 20)]
    layers = stages(net, (3, SIZE, SIZE))
    assert layers == list(CENTRAL)
    analysis = analyze_layers(net, batches, batches, layers, 3, image_shape=(3, SIZE, SIZE))
    dm = SimpleNamespace(
        image_size=SIZE, mean=MEAN, std=STD, val_images=images, val_labels=labels, num_classes=3, classes=CLASSES
    )
    return net, analysis, dm


def central_optima(net, targets: list[tuple[str, int]]) -> list[torch.Tensor]:
    """The optima of ``targets`` by the hand-derived central units and boxes, through visualize_channels."""
    settings = VisualizationSettings(image_size=SIZE, steps=STEPS)
    units = {name: CENTRAL[name][0] for name, _ in targets}
    whole = visualize_channels(net, targets, MEAN, STD, settings, units=units)  # [K, 3, 16, 16]
    return [image[:, CENTRAL[name][1], CENTRAL[name][1]] for image, (name, _) in zip(whole, targets, strict=True)]


def expected_mix(analysis, dm, name: str, channel: int, shown: int) -> str:
    """The label's last line, from the classes of a channel's first ``shown`` active examples counted here."""
    examples = analysis.layers[name].examples
    active = examples.values[channel, :shown] > 0
    mix = Counter(dm.val_labels[examples.indices[channel, :shown][active]].tolist())
    top = sorted(mix.items(), key=lambda item: (-item[1], item[0]))[:2]  # most frequent, ties to the lower index
    return f"top {sum(mix.values())}: " + ", ".join(f"{CLASSES[c]} {n}" for c, n in top)


def test_the_card_shows_field_sized_optima_and_the_patch_classes(tiny, monkeypatch) -> None:
    net, analysis, dm = tiny
    drawn, draw = {}, features_callback.channels_card

    def spy(optimized, patches, labels, title):
        drawn[title.split(":")[0]] = (optimized, patches, labels)
        return draw(optimized, patches, labels, title)

    monkeypatch.setattr(features_callback, "channels_card", spy)
    callback = FeatureStatsCallback(visualization_steps=STEPS)
    logged = []
    monkeypatch.setattr(callback, "log_figure", lambda trainer, tag, figure: logged.append(tag))
    callback._channel_cards(SimpleNamespace(datamodule=dm, current_epoch=0), net, analysis)
    assert logged == ["channels/conv1", "channels/conv2"]
    for name, side in (("features.conv1", 3), ("features.conv2", 8)):
        optimized, patches, labels = drawn[name.split(".")[1]]
        count = optimized.shape[0]
        assert 1 <= count <= 4
        # The 3 px (8 px) field of the central unit, not the 16 px image; the patches are cut to the same size.
        assert optimized.shape == (count, 3, side, side) and patches.shape == (count, CARD_EXAMPLES, 3, side, side)
        stats = analysis.layers[name].stats
        live = ~stats.dead & (stats.channel_sparsity < 0.99) & ~stats.selectivity.isnan()  # the card's choice
        channels = torch.where(live, stats.selectivity, -torch.inf).argsort(descending=True, stable=True)[:count]
        targets = [(name, int(c)) for c in channels]
        assert torch.equal(optimized, torch.stack(central_optima(net, targets)))
        for (_, channel), label in zip(targets, labels, strict=True):
            assert label.split("\n")[2] == expected_mix(analysis, dm, name, channel, CARD_EXAMPLES)


def test_the_report_figure_draws_the_field_sized_optimum_beside_the_patches(tiny) -> None:
    net, analysis, dm = tiny
    ev = SimpleNamespace(net=net, datamodule=dm, classes=CLASSES)
    chosen = {name: most_selective(analysis, name) for name in CENTRAL}
    figures = channel_figures(ev, analysis, chosen, STEPS)
    assert set(figures) == {"features_conv1.png", "features_conv2.png"}
    targets = [(name, c) for name, channels in chosen.items() for c in channels]
    optima = central_optima(net, targets)  # the figures' one optimization, all layers in one batch
    axes = figures["features_conv1.png"].axes[0]
    grid = torch.from_numpy(axes.images[0].get_array().copy()).permute(2, 0, 1).float() / 255  # [3, H, W]
    # conv1's 3 px tiles enlarged 11x (to 33 px, at least 32) with 1 px padding: row r, column j at
    # (1 + 34 r, 1 + 34 j). Column 0 is the optimum, pixel for pixel; columns 1.. the patches at the same size.
    assert grid.shape == (3, 1 + 34 * len(chosen["features.conv1"]), 1 + 34 * 10)
    for row, channel in enumerate(chosen["features.conv1"]):
        tile = grid[:, 1 + 34 * row : 34 + 34 * row, 1:34]
        expected = optima[row].repeat_interleave(11, dim=1).repeat_interleave(11, dim=2)
        assert (tile - expected).abs().max() <= 1 / 255 + 1e-6
        label = axes.get_yticklabels()[row].get_text()
        assert label.startswith(f"ch {channel}, SI ")
        assert label.endswith("\n" + expected_mix(analysis, dm, "features.conv1", channel, 9))


@pytest.mark.parametrize(
    ("names", "side"),
    [
        (["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"], 3),
        (["tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
          "gas pump", "golf ball", "parachute"], 99),
    ],
)  # fmt: skip
def test_the_card_fits_tensorboard_with_readable_labels_that_do_not_overlap(names: list[str], side: int) -> None:
    # The longest names of CIFAR-10 and Imagenette in the class mix: the card stays 215 px high and at most 326 wide
    # (TensorBoard would shrink it otherwise), every text at least 9 px, no two texts overlapping, none cut off.
    counts = torch.zeros(10, dtype=torch.long)
    counts[[1, 2]] = torch.tensor([3, 2])
    means = torch.arange(10.0, dtype=torch.float64)
    labels = [channel_label(c, 0.5, means.roll(c), counts.roll(c), names) for c in range(3)]
    assert max(len(line) for label in labels for line in label.split("\n")) >= 25  # lines too long for 32 px tiles
    optimum = torch.rand(3, 3, side, side)
    patches = torch.randint(0, 256, (3, CARD_EXAMPLES, 3, side, side), dtype=torch.uint8)
    fig = channels_card(optimum, patches, labels, "features.conv1: top channels, epoch 9")
    width, height = (round(v) for v in fig.get_size_inches() * fig.dpi)
    assert (height, width <= CARD_BOX[0]) == (CARD_BOX[1], True)
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in fig.texts if text.get_text()]
    assert min(text.get_fontsize() for text in fig.texts) * fig.dpi / 72 >= 9
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width and b.y1 <= height for b in boxes)
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    # Every line of every label is drawn (a wrapped label keeps all its words).
    drawn = " ".join(text.get_text().replace("\n", " ") for text in fig.texts)
    assert all(word in drawn for label in labels for word in label.replace("\n", " ").split())
