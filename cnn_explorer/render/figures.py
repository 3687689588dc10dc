"""Matplotlib figures for TensorBoard and the written report, without pyplot.

Figures are built as ``matplotlib.figure.Figure`` objects by :func:`new_figure` and drawn by
``FigureCanvasAgg``: no global figure manager, no backend switching, nothing to close, safe in DataLoader
workers and on headless machines. Every figure uses :data:`DPI`; :func:`figure_to_image` (for TensorBoard)
and :func:`save_png` (for the report) both give exactly ``figure size (inches) * DPI`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from cnn_explorer.interpret.confusion import row_normalize
from cnn_explorer.render.fonts import use_text_fonts
from cnn_explorer.render.image import to_hwc_uint8

DPI = 100
CONFUSION_FIGSIZE = (8.0, 7.0)  # inches; fits 10 class names and two-line cell labels
MISTAKE_TILE_SIZE = (1.2, 1.5)  # inches per mistake (width, height): image plus a two-line title
MISTAKE_IMAGE_WIDTH = 1.0  # inches; displayed width of each mistake's image inside its tile
GRID_MAX_SIZE = (10.0, 10.0)  # inches; a grid figure fits its image into this box, keeping the aspect
TITLE_HEIGHT = 0.5  # inches above a grid image for its title
EMPTY_FIGSIZE = (4.0, 1.0)  # inches, for the "no mistakes" placeholder


def figure_to_image(fig: Figure) -> Tensor:
    """Render ``fig`` with Agg into an RGB image for ``SummaryWriter.add_image`` (``dataformats="CHW"``).

    Returns:
        uint8 ``[3, H, W]`` with ``H, W = round(fig.get_size_inches()[::-1] * fig.dpi)``; alpha dropped.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    use_text_fonts(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # [H, W, 4], a view on the canvas' buffer
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG of exactly its size times :data:`DPI` pixels.

    Not cropped to the content: figures keep their documented sizes (every curve figure has the same pixel
    size), and they lay themselves out (constrained layout or fixed margins) so nothing falls outside.
    """
    use_text_fonts(fig)
    fig.savefig(path, format="png", dpi=DPI)


def new_figure(size: tuple[float, float], constrained: bool = False) -> Figure:
    """A ``size`` (inches) figure at :data:`DPI` on its own Agg canvas; ``constrained`` lays it out by
    matplotlib's constrained layout, which keeps labels and legends inside the figure."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def confusion_matrix_figure(cm: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """Heatmap of a confusion matrix: colour = fraction of the true class, text = count and percent.

    Colours come from the row-normalized matrix so that every class's row uses the same scale whatever
    its support; the counts written in the cells keep the absolute numbers visible.

    Args:
        cm: int counts ``[C, C]``, rows = true class, columns = predicted.
        class_names: ``C`` names, in class-index order.
        title: figure title.

    Returns:
        a :data:`CONFUSION_FIGSIZE` figure at :data:`DPI`.

    Raises:
        ValueError: if ``cm`` is not ``[C, C]`` with ``C = len(class_names)``.
    """
    num_classes = len(class_names)
    if cm.shape != (num_classes, num_classes):
        raise ValueError(f"cm must be [C, C] with C = {num_classes} class names, got {tuple(cm.shape)}")
    counts = cm.detach().cpu().long()
    rates = row_normalize(counts)
    fig = new_figure(CONFUSION_FIGSIZE)
    ax = fig.add_subplot()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class", fraction=0.046, pad=0.04)
    fontsize = 8 if num_classes <= 10 else 6
    for true, (count_row, rate_row) in enumerate(zip(counts.tolist(), rates.tolist(), strict=True)):
        for pred, (count, rate) in enumerate(zip(count_row, rate_row, strict=True)):
            # Dark cells (above the colormap's midpoint) get white text; light cells black.
            color = "white" if rate > 0.5 else "black"
            ax.text(pred, true, f"{count}\n{rate:.0%}", ha="center", va="center", color=color, fontsize=fontsize)
    ticks = range(num_classes)
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    # Fixed margins, not tight_layout: that draws the figure once more (~0.1 s) every epoch.
    fig.subplots_adjust(left=0.14, right=0.9, bottom=0.15, top=0.94)
    return fig


def heatmap_figure(values: Tensor, row_labels: Sequence[str], column_labels: Sequence[str], title: str) -> Figure:
    """A matrix of values in ``[0, 1]`` (e.g. CKA between layers), each cell written in it.

    Args:
        values: ``[R, C]`` float, NaN shown blank.
        row_labels: ``R`` labels; column_labels: ``C`` labels.
        title: figure title.
    """
    rows, columns = values.shape
    fig = new_figure((2.5 + 0.7 * columns, 1.5 + 0.5 * rows), constrained=True)
    ax = fig.add_subplot()
    image = ax.imshow(values.float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    for r in range(rows):
        for c in range(columns):
            value = float(values[r, c])
            if value == value:  # not NaN
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(columns), labels=list(column_labels), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(rows), labels=list(row_labels))
    fig.colorbar(image, ax=ax, fraction=0.05)
    ax.set_title(title, fontsize=10)
    return fig


def mistakes_figure(
    images: Tensor,
    true: Tensor,
    pred: Tensor,
    confidence: Tensor,
    class_names: Sequence[str],
    ncols: int = 8,
) -> Figure:
    """A grid of misclassified images, each titled ``"true: cat\\npred: dog 0.97"``.

    Args:
        images: ``[M, C, H, W]``, C = 1 or 3, uint8, or float in ``[0, 1]`` (not normalized).
        true: ``[M]`` true class indices.
        pred: ``[M]`` predicted class indices.
        confidence: ``[M]`` softmax confidence of the prediction.
        class_names: names indexed by class.
        ncols: images per row.

    Returns:
        a figure of ``min(M, ncols)`` x ``ceil(M / ncols)`` tiles of :data:`MISTAKE_TILE_SIZE` inches;
        for ``M = 0`` an :data:`EMPTY_FIGSIZE` figure saying "no mistakes".

    Raises:
        ValueError: if the lengths differ, images are not ``[M, 1|3, H, W]``, or ``ncols < 1``.
    """
    count = images.shape[0]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [M, 1 or 3, H, W], got {tuple(images.shape)}")
    if not len(true) == len(pred) == len(confidence) == count:
        raise ValueError(
            f"need one true/pred/confidence per image: {count} images, "
            f"{len(true)} true, {len(pred)} pred, {len(confidence)} confidence"
        )
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if count == 0:
        fig = new_figure(EMPTY_FIGSIZE)
        fig.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=12)
        return fig
    cols = min(count, ncols)
    rows = -(-count // cols)
    fig = new_figure((cols * MISTAKE_TILE_SIZE[0], rows * MISTAKE_TILE_SIZE[1]))
    # One image with text labels rather than one Axes per mistake: Axes are what cost the time
    # (16 mistakes, build + render on a shared 2-core CPU: 0.15-0.2 s vs 0.40 s), and this runs every epoch.
    pixels = to_hwc_uint8(images)  # [M, H, W, 3]
    height, width = pixels.shape[1:3]
    per_inch = width / MISTAKE_IMAGE_WIDTH  # source pixels per displayed inch
    slot_w, slot_h = round(MISTAKE_TILE_SIZE[0] * per_inch), round(MISTAKE_TILE_SIZE[1] * per_inch)
    margin = max(1, round(0.05 * per_inch))
    sheet = np.full((rows * slot_h, cols * slot_w, 3), 255, dtype=np.uint8)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    for i, (t, p, c) in enumerate(zip(true.tolist(), pred.tolist(), confidence.tolist(), strict=True)):
        row, col = divmod(i, cols)
        top = (row + 1) * slot_h - margin - height  # image at the bottom of its slot, title above it
        left = col * slot_w + (slot_w - width) // 2
        sheet[top : top + height, left : left + width] = pixels[i]
        label = f"true: {class_names[t]}\npred: {class_names[p]} {c:.2f}"
        ax.text(col * slot_w + slot_w / 2, top - margin, label, ha="center", va="bottom", fontsize=7)
    ax.imshow(sheet, interpolation="nearest", extent=(0, sheet.shape[1], sheet.shape[0], 0), aspect="auto")
    ax.set_axis_off()
    return fig


def grid_figure(grid: Tensor, title: str) -> Figure:
    """Show a ``[3, H, W]`` image grid (from :mod:`cnn_explorer.render.grids`) with a title.

    The figure keeps the grid's aspect ratio, fitted into :data:`GRID_MAX_SIZE` plus :data:`TITLE_HEIGHT`
    for the title; pixels are drawn nearest-neighbour, no axes.

    Args:
        grid: float ``[3, H, W]`` in ``[0, 1]``, or uint8.
        title: figure title.

    Raises:
        ValueError: if ``grid`` is not ``[3, H, W]``.
    """
    if grid.ndim != 3 or grid.shape[0] != 3:
        raise ValueError(f"grid must be an RGB image [3, H, W], got {tuple(grid.shape)}")
    height, width = grid.shape[1:]
    scale = min(GRID_MAX_SIZE[0] / width, GRID_MAX_SIZE[1] / height)
    fig = new_figure((width * scale, height * scale + TITLE_HEIGHT))
    ax = fig.add_axes((0.0, 0.0, 1.0, height * scale / (height * scale + TITLE_HEIGHT)))
    ax.imshow(to_hwc_uint8(grid[None])[0], interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, y=1 - 0.1 / (height * scale + TITLE_HEIGHT), va="top")
    return fig


LABELED_GRID_WIDTH = 10.0  # inches; a labelled grid figure is this wide, its height follows the grid's aspect
LABELED_GRID_MAX_HEIGHT = 12.0  # inches; taller grids are narrowed to fit
LABELED_GRID_MARGIN = (2.2, 1.0)  # inches (width, height) taken by row labels, colorbar, title, column labels


def labeled_grid_figure(
    grid: Tensor,
    title: str,
    row_labels: Sequence[str],
    column_labels: Sequence[str] = (),
    colorbar: tuple[str, str] | None = None,
    padding: int = 1,
) -> Figure:
    """Show a ``make_grid`` image with a label beside each row and above each column, and a colorbar.

    For grids whose rows mean something (one probe image per class in ``feature_map_grid`` and
    ``saliency_grid``): the class names are written where they belong instead of left to the caption.
    Tiles are assumed equally sized and separated by ``padding`` pixels, as ``make_grid`` lays them out.

    Args:
        grid: float ``[3, H, W]`` in ``[0, 1]``, or uint8, of ``len(row_labels)`` rows of tiles.
        title: figure title.
        row_labels: one label per row of tiles, top to bottom.
        column_labels: one label per column of tiles, left to right; none if empty.
        colorbar: ``(colormap name, label)`` of the values the colored tiles encode, on a ``[0, 1]`` scale.
        padding: pixels between tiles and around the grid.

    Returns:
        a figure :data:`LABELED_GRID_WIDTH` inches wide at :data:`DPI`; a grid too tall for
        :data:`LABELED_GRID_MAX_HEIGHT` gets that height and a narrower figure.

    Raises:
        ValueError: if ``grid`` is not ``[3, H, W]`` or there are no row labels.
    """
    if grid.ndim != 3 or grid.shape[0] != 3:
        raise ValueError(f"grid must be an RGB image [3, H, W], got {tuple(grid.shape)}")
    if not row_labels:
        raise ValueError("need one label per row of tiles, got none")
    height, width = grid.shape[1:]
    image_width = LABELED_GRID_WIDTH - LABELED_GRID_MARGIN[0]
    image_height = image_width * height / width
    if image_height > LABELED_GRID_MAX_HEIGHT - LABELED_GRID_MARGIN[1]:  # a tall grid: narrow the figure instead
        image_height = LABELED_GRID_MAX_HEIGHT - LABELED_GRID_MARGIN[1]
        image_width = image_height * width / height
    size = (image_width + LABELED_GRID_MARGIN[0], image_height + LABELED_GRID_MARGIN[1])
    fig = new_figure(size, constrained=True)
    fig.get_layout_engine().set(w_pad=0.1)  # inches; the default 3/72 left two-line row labels 2 px short
    # The colorbar gets its own grid cell: attached to a fixed-aspect image with fig.colorbar(ax=...),
    # constrained layout under-reserves the row labels' margin and long labels are cut at the left edge.
    cells = fig.add_gridspec(1, 2, width_ratios=[40, 1]) if colorbar is not None else fig.add_gridspec(1, 1)
    ax = fig.add_subplot(cells[0])
    ax.imshow(to_hwc_uint8(grid[None])[0], interpolation="nearest")
    ax.set_yticks(_tile_centers(height, len(row_labels), padding), labels=list(row_labels), fontsize=9)
    if column_labels:
        ax.set_xticks(_tile_centers(width, len(column_labels), padding), labels=list(column_labels), fontsize=8)
        ax.xaxis.tick_top()
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if colorbar is not None:
        cmap, label = colorbar
        mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
        fig.colorbar(mappable, cax=fig.add_subplot(cells[1]), label=label)
    ax.set_title(title)
    return fig


def _tile_centers(size: int, count: int, padding: int) -> list[float]:
    """Pixel coordinates of the centres of ``count`` equal tiles laid along ``size`` pixels with padding."""
    pitch = (size - padding) / count  # tile plus one padding
    return [padding + i * pitch + (pitch - padding) / 2 - 0.5 for i in range(count)]
