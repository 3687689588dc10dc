"""Figures render at the documented size, carry the right labels, save as PNG, and never touch pyplot."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from cnn_explorer.render import figures as plots
from cnn_explorer.render.grids import attribution_grid, feature_map_grid, filter_grid, normalize_per_filter
from cnn_explorer.render.image import INVALID_COLOR

CLASSES = ["airplane", "automobile", "bird", "cat"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def texts(fig: Figure) -> list[str]:
    return [artist.get_text() for artist in fig.findobj(Text)]


def rendered_size(size_inches: tuple[float, float]) -> tuple[int, int, int]:
    width, height = size_inches
    return (3, round(height * plots.DPI), round(width * plots.DPI))


def test_figure_to_image_is_uint8_chw_of_size_times_dpi() -> None:
    fig = Figure(figsize=(2.0, 1.0), dpi=plots.DPI)  # a plain Figure, no canvas attached by us
    fig.patch.set_facecolor((1.0, 0.0, 0.0))
    image = plots.figure_to_image(fig)
    assert image.dtype == torch.uint8
    assert image.shape == (3, 100, 200)
    assert image[:, 50, 100].tolist() == [255, 0, 0]


def test_confusion_matrix_figure_labels_counts_and_contrast() -> None:
    cm = torch.tensor([[9, 1, 0, 0], [2, 6, 0, 2], [0, 0, 0, 0], [0, 3, 0, 7]])
    fig = plots.confusion_matrix_figure(cm, CLASSES, title="val epoch 3")
    assert plots.figure_to_image(fig).shape == rendered_size(plots.CONFUSION_FIGSIZE)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "val epoch 3")
    assert fig.axes[1].get_ylabel() == "fraction of true class"
    cells = {t.get_text(): t for t in ax.texts}
    assert len(ax.texts) == 16
    # Row "automobile" has 10 samples: 2 -> 20%, 6 -> 60%; the empty "bird" row shows 0 / 0%, not NaN.
    assert {"9\n90%", "1\n10%", "2\n20%", "6\n60%", "7\n70%", "3\n30%", "0\n0%"} <= set(cells)
    assert cells["9\n90%"].get_color() == "white"  # dark cell
    assert cells["1\n10%"].get_color() == "black"  # light cell
    with pytest.raises(ValueError):
        plots.confusion_matrix_figure(cm, CLASSES[:3], title="x")


def test_mistakes_figure_titles_and_size() -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    true = torch.tensor([3, 0, 1, 2, 3])
    pred = torch.tensor([0, 1, 3, 3, 2])
    confidence = torch.tensor([0.97, 0.5, 0.25, 0.125, 0.9])
    fig = plots.mistakes_figure(images, true, pred, confidence, CLASSES, ncols=4)
    labels = texts(fig)
    assert "true: cat\npred: airplane 0.97" in labels
    assert "true: airplane\npred: automobile 0.50" in labels
    assert "true: bird\npred: cat 0.12" in labels
    # 5 mistakes in rows of 4 -> 4 columns x 2 rows of tiles.
    width, height = plots.MISTAKE_TILE_SIZE
    assert plots.figure_to_image(fig).shape == rendered_size((4 * width, 2 * height))


def test_mistakes_figure_without_mistakes() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    fig = plots.mistakes_figure(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), empty, empty, empty.float(), CLASSES)
    assert "no mistakes" in texts(fig)
    assert plots.figure_to_image(fig).shape == rendered_size(plots.EMPTY_FIGSIZE)


def test_grid_figure_shows_the_grid_with_title_and_no_axes() -> None:
    grid = torch.zeros(3, 20, 40)
    grid[0] = 1.0  # pure red
    fig = plots.grid_figure(grid, title="filters/conv1")
    assert "filters/conv1" in texts(fig)
    assert not fig.axes[0].axison
    image = plots.figure_to_image(fig)
    assert image.shape == rendered_size(tuple(fig.get_size_inches()))
    assert image.shape[2] == round(plots.GRID_MAX_SIZE[0] * plots.DPI)  # a wide grid fills the width
    assert image[:, -image.shape[1] // 4, image.shape[2] // 2].tolist() == [255, 0, 0]
    with pytest.raises(ValueError):
        plots.grid_figure(torch.zeros(20, 40), title="x")


def test_save_png_writes_a_png_of_size_times_dpi(tmp_path: Path) -> None:
    path = tmp_path / "cm.png"
    plots.save_png(plots.confusion_matrix_figure(torch.eye(4, dtype=torch.long), CLASSES, "t"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = plots.CONFUSION_FIGSIZE
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (round(width * plots.DPI), round(height * plots.DPI))


def test_figures_stay_out_of_pyplot_global_state(tmp_path: Path) -> None:
    # torchmetrics (and so Lightning) imports pyplot at import time, so "pyplot in sys.modules" cannot
    # be the test; what matters is that no figure is registered with pyplot's figure manager, where it
    # would leak until closed. A fresh process, so that nothing else has registered figures.
    script = textwrap.dedent(
        """
        import sys
        import torch
        from cnn_explorer.render import figures as plots
        from cnn_explorer.render.grids import attribution_grid, feature_map_grid, filter_grid
        names = ["a", "b"]
        images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        figures = [
            plots.confusion_matrix_figure(torch.tensor([[3, 1], [0, 2]]), names, "cm"),
            plots.mistakes_figure(images, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.9, 0.8]), names),
            plots.grid_figure(filter_grid(torch.randn(4, 3, 3, 3)), "filters"),
            plots.grid_figure(feature_map_grid(images, torch.rand(2, 4, 4, 4)), "maps"),
            plots.grid_figure(attribution_grid(images, [torch.rand(2, 8, 8)]), "attribution"),
        ]
        for i, fig in enumerate(figures):
            plots.figure_to_image(fig)
            plots.save_png(fig, f"{sys.argv[1]}/{i}.png")
        pyplot = sys.modules.get("matplotlib.pyplot")
        print([] if pyplot is None else pyplot.get_fignums())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(list(tmp_path.glob("*.png"))) == 5


# --- grids ---


def test_attribution_grid_of_one_method_tiles_image_heatmap_blend() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 5.0  # image 0: one hot pixel; image 1: all zero
    grid = attribution_grid(images, [maps])
    # 3 tiles of 8x8 (2x upscale) per row, 2 rows, 1 px padding: 2*9+1 by 3*9+1.
    assert grid.shape == (3, 19, 28)
    assert not grid.isnan().any() and grid.min() >= 0 and grid.max() <= 1
    inferno = colormaps["inferno"]
    low, high = torch.tensor(inferno(0.0)[:3]).float(), torch.tensor(inferno(1.0)[:3]).float()
    for row in range(2):
        top = 1 + row * 9
        image = images[row].float().div(255).repeat_interleave(2, 1).repeat_interleave(2, 2)
        torch.testing.assert_close(grid[:, top : top + 8, 1:9], image)
        heat = grid[:, top : top + 8, 10:18]
        blend = grid[:, top : top + 8, 19:27]
        torch.testing.assert_close(blend, 0.5 * image + 0.5 * heat)
    # Image 0's hot pixel (1, 2) is the 2x2 block at rows 2-3, cols 4-5 of its heat tile; the rest is the lowest colour.
    heat0 = grid[:, 1:9, 10:18]
    torch.testing.assert_close(heat0[:, 2:4, 4:6], high[:, None, None].expand(3, 2, 2))
    torch.testing.assert_close(heat0[:, 0, 0], low)
    torch.testing.assert_close(grid[:, 10:18, 10:18], low[:, None, None].expand(3, 8, 8))
    with pytest.raises(ValueError):
        attribution_grid(images, [maps[:, :2]])


def test_feature_map_grid_layout_colours_and_zero_rows() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    activations = torch.zeros(2, 5, 4, 4)
    activations[0] = 1.0
    activations[0, 1, 0, 0] = 2.0  # image 0's maximum: channel 1, top-left cell
    activations[0, 4] = 100.0  # channel 4 is not shown (max_channels=3) and must not set the scale
    grid = feature_map_grid(images, activations, max_channels=3)
    # Rows of 1 image + 3 maps, each 8x8 with 1 px padding: 2*9+1 by 4*9+1.
    assert grid.shape == (3, 19, 37)
    assert not grid.isnan().any() and grid.min() >= 0 and grid.max() <= 1
    viridis = colormaps["viridis"]
    bottom, top = torch.tensor(viridis(0.0)[:3]).float(), torch.tensor(viridis(1.0)[:3]).float()
    for row in range(2):
        torch.testing.assert_close(grid[:, 1 + row * 9 : 9 + row * 9, 1:9], images[row].float() / 255)
    channel1 = grid[:, 1:9, 19:27]  # row 0, third tile
    # The 4x4 map is upsampled 2x: cell (0, 0) covers pixels 0-1 x 0-1 and is the row maximum -> top colour.
    torch.testing.assert_close(channel1[:, :2, :2], top[:, None, None].expand(3, 2, 2))
    assert not torch.allclose(channel1[:, 2, 2], top)  # 1/2 of the maximum is another colour
    # Image 1's activations are all zero: every map tile is the bottom colour, no NaN.
    for left in (10, 19, 28):
        torch.testing.assert_close(grid[:, 10:18, left : left + 8], bottom[:, None, None].expand(3, 8, 8))
    assert feature_map_grid(images, activations, max_channels=16).shape == (3, 19, 6 * 9 + 1)
    with pytest.raises(ValueError):
        feature_map_grid(images, activations[:1])


# --- filter grids -----------------------------------------------------------------------------------------------


def test_normalize_per_filter_scales_each_filter_to_unit_range() -> None:
    weight = torch.zeros(2, 1, 1, 3)
    weight[0, 0, 0] = torch.tensor([-2.0, 0.0, 2.0])
    weight[1, 0, 0] = torch.tensor([10.0, 11.0, 14.0])
    expected = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.25, 1.0]]).view(2, 1, 1, 3)
    torch.testing.assert_close(normalize_per_filter(weight), expected)
    torch.testing.assert_close(normalize_per_filter(torch.full((1, 3, 2, 2), -4.0)), torch.full((1, 3, 2, 2), 0.5))


def test_filter_grid_tiles_are_normalized_upscaled_filters() -> None:
    torch.manual_seed(2)
    weight = torch.randn(10, 3, 3, 3)
    weight[7] = 0.3  # constant filter
    nrow, upscale, padding = 4, 3, 2
    grid = filter_grid(weight, nrow=nrow, upscale=upscale, padding=padding)
    side = 3 * upscale
    # 10 filters in rows of 4 -> 3 rows; each tile plus padding is 11 px, plus the outer padding.
    assert grid.shape == (3, 3 * (side + padding) + padding, 4 * (side + padding) + padding)
    normalized = normalize_per_filter(weight)
    for i in range(10):
        row, col = divmod(i, nrow)
        top, left = padding + row * (side + padding), padding + col * (side + padding)
        tile = grid[:, top : top + side, left : left + side]
        expected = normalized[i].repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
        torch.testing.assert_close(tile, expected)
    # Filter 7 (row 1, column 3) is constant: its tile is mid-grey.
    constant_tile = grid[:, padding + 1 * (side + padding) :, padding + 3 * (side + padding) :][:, :side, :side]
    assert (constant_tile == 0.5).all()
    assert (grid[:, :padding] == 1.0).all()  # white separators
    assert filter_grid(weight[:1], padding=1).shape == (3, 26, 26)  # one 3x3 filter at the default upscale 8


def test_filter_grid_rejects_filters_over_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        filter_grid(torch.randn(8, 4, 3, 3))


def test_attribution_grid_of_several_methods_shows_magnitudes_one_column_each() -> None:
    images = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)  # grayscale: shown as gray RGB
    signed = torch.tensor([[[-4.0, 2.0], [0.0, 1.0]]])  # |.| / 4: 1, 0.5, 0, 0.25
    positive = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]])
    grid = attribution_grid(images, [signed, positive], overlay=False)
    # 3 tiles of 4x4 (2x upscale) in one row, 1 px padding: 1*5+1 by 3*5+1.
    assert grid.shape == (3, 6, 16)
    inferno = torch.tensor(colormaps["inferno"].resampled(256)(range(256))[:, :3]).float()
    heat = grid[:, 1:5, 6:10]
    torch.testing.assert_close(heat[:, 0, 0], inferno[255])  # -4: the largest magnitude
    torch.testing.assert_close(heat[:, 0, 2], inferno[128])  # 2 / 4 = 0.5 -> index round(127.5) = 128
    torch.testing.assert_close(heat[:, 2, 0], inferno[0])
    torch.testing.assert_close(grid[:, 1:5, 11:15][:, 2, 2], inferno[255])  # the second method's only pixel
    with pytest.raises(ValueError, match="at least one"):
        attribution_grid(images, [])


def test_non_finite_values_are_drawn_visibly_not_raised_on() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    activations = torch.rand(2, 3, 4, 4)
    activations[0, 0, 0, 0] = float("nan")
    activations[1, 1, 1, 1] = float("inf")
    grid = feature_map_grid(images, activations, max_channels=3)
    assert grid.isfinite().all() and grid.min() >= 0 and grid.max() <= 1
    magenta = torch.tensor(INVALID_COLOR)
    torch.testing.assert_close(grid[:, 1, 10], magenta)  # image 0, channel 0, cell (0, 0): NaN
    top = torch.tensor(colormaps["viridis"](1.0)[:3]).float()
    torch.testing.assert_close(grid[:, 10 + 2, 19 + 2], top)  # image 1, channel 1, cell (1, 1): +inf -> top
    maps = torch.full((2, 8, 8), float("nan"))
    assert attribution_grid(images, [maps]).isfinite().all()
    weight = torch.randn(4, 3, 3, 3)
    weight[2, 0, 0, 0] = float("nan")
    tiles = filter_grid(weight, nrow=4, upscale=1)
    torch.testing.assert_close(tiles[:, 1, 1 + 2 * 4], magenta)  # filter 2: the invalid colour, no crash
    torch.testing.assert_close(normalize_per_filter(weight)[0], normalize_per_filter(weight[:1])[0])


def test_grids_show_grayscale_images_and_filters_in_gray() -> None:
    images = torch.tensor([[[[0, 255], [128, 64]]]], dtype=torch.uint8)  # [1, 1, 2, 2]
    grid = feature_map_grid(images, torch.zeros(1, 2, 1, 1), max_channels=2)
    tile = grid[:, 1:3, 1:3]
    assert torch.equal(tile[0], tile[1]) and torch.equal(tile[1], tile[2])  # gray: R = G = B
    torch.testing.assert_close(tile[0], images[0, 0].float() / 255)
    weight = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # one 2x2 filter over 1 channel
    gray = filter_grid(weight, nrow=1, upscale=1, padding=0)
    torch.testing.assert_close(gray, torch.tensor([[0.0, 0.25], [0.5, 1.0]]).expand(3, 2, 2))
    with pytest.raises(ValueError, match="1 or 3"):
        filter_grid(torch.randn(2, 2, 3, 3))


@pytest.mark.parametrize("colorbar", [None, ("inferno", "|attribution| / image max")])
@pytest.mark.parametrize("rows, columns", [(8, 10), (10, 8)])
def test_labeled_grid_figure_keeps_long_row_labels_inside(colorbar, rows: int, columns: int) -> None:
    # The report's channel rows ("ch 66\nSI 0.60, automobile") and attribution rows ("automobile") were cut
    # at the left edge by a few pixels: every label must lie wholly inside the figure.
    grid = torch.rand(3, 1 + rows * 33, 1 + columns * 33)
    labels = ["ch 66\nSI 0.60, automobile", "automobile", *["truck"] * (rows - 2)]
    fig = plots.labeled_grid_figure(grid, "title", labels, [f"#{i}" for i in range(columns)], colorbar=colorbar)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    for label in [*fig.axes[0].get_yticklabels(), *fig.axes[0].get_xticklabels()]:
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, label.get_text()


@pytest.mark.parametrize("steps, named", [(5, 5), (16, 16), (50, 13), (53, 14)])
def test_randomization_figure_names_as_many_steps_as_fit_first_and_last_always(steps: int, named: int) -> None:
    from cnn_explorer.render.charts import randomization_figure

    layers = [f"blocks.{i}.conv_pwl" for i in range(steps)]
    fig = randomization_figure(layers, {"gradient": [0.5] * steps}, threshold=0.5)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    # 53 steps: every ceil(52 / 15) = 4th, 0, 4, ..., 52 (14 names, the last among them); 50: 0, 4, ..., 44 and
    # 49 in place of 48 (13 names); fewer than 17: every one.
    assert [t.get_text() for t in labels][0] == "+blocks.0.conv_pwl"
    assert labels[-1].get_text() == f"+blocks.{steps - 1}.conv_pwl" and len(labels) == named
    # every step still has its tick (matplotlib drops the minor ones under a major one)
    assert {*ax.get_xticks(), *ax.get_xticks(minor=True)} == set(range(1, steps + 1))
    # The names are parallel lines of text at 30 degrees: two neighbours clear each other when the gap between
    # their anchors, across the text's direction (dx * sin 30), exceeds a line's height.
    anchors = [ax.transData.transform((tick, 0))[0] for tick in ax.get_xticks()]
    line_px = labels[0].get_size() * fig.dpi / 72
    assert min(b - a for a, b in itertools.pairwise(anchors)) * 0.5 > line_px, "neighbouring step names overlap"
