"""Figures render at the documented size, carry the right labels, save as PNG, and never touch pyplot."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from cnn_explorer import plots

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


def test_save_figure_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "cm.png"
    plots.save_figure(plots.confusion_matrix_figure(torch.eye(4, dtype=torch.long), CLASSES, "t"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100


def matplotlib_imports(path: Path) -> set[str]:
    """Every ``matplotlib...`` module name a source file imports, as ``module`` or ``module.name``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("matplotlib"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("matplotlib"):
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_our_modules_do_not_import_pyplot() -> None:
    package = REPO_ROOT / "cnn_explorer"
    assert not any("pyplot" in name for name in matplotlib_imports(package / "plots.py"))
    for path in sorted((package / "interpret").glob("*.py")):
        # The interpretability methods use matplotlib for one thing: the colormap lookup table.
        assert matplotlib_imports(path) <= {"matplotlib.colormaps"}, path.name


def test_figures_stay_out_of_pyplot_global_state(tmp_path: Path) -> None:
    # torchmetrics (and so Lightning) imports pyplot at import time, so "pyplot in sys.modules" cannot
    # be the test; what matters is that no figure is registered with pyplot's figure manager, where it
    # would leak until closed. A fresh process, so that nothing else has registered figures.
    script = textwrap.dedent(
        """
        import sys
        import torch
        from cnn_explorer import plots
        from cnn_explorer.interpret import feature_map_grid, filter_grid, saliency_grid
        names = ["a", "b"]
        images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        figures = [
            plots.confusion_matrix_figure(torch.tensor([[3, 1], [0, 2]]), names, "cm"),
            plots.mistakes_figure(images, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.9, 0.8]), names),
            plots.grid_figure(filter_grid(torch.randn(4, 3, 3, 3)), "filters"),
            plots.grid_figure(feature_map_grid(images, torch.rand(2, 4, 4, 4)), "maps"),
            plots.grid_figure(saliency_grid(images, torch.rand(2, 8, 8)), "saliency"),
        ]
        for i, fig in enumerate(figures):
            plots.figure_to_image(fig)
            plots.save_figure(fig, f"{sys.argv[1]}/{i}.png")
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
