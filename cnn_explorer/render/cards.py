"""Images made for TensorBoard's cards: small pictures with text that stays readable where TensorBoard shows them.

TensorBoard's Time Series page fits every image into a 375 x 215 px box (its Images tab: 350 px wide). A
figure made for a page, shrunk into that box, turns its labels into grey smudges (an 800 x 700 confusion
matrix shows at 31%). The cards here are drawn at about that size, with text of at least 11 px, so they show
at nearly their own size: each says what it is and which epoch, and labels what it shows. The written
report keeps its own, larger figures (:mod:`cnn_explorer.render.figures`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from cnn_explorer.interpret.confusion import row_normalize
from cnn_explorer.render.figures import DPI, new_figure
from cnn_explorer.render.fonts import text_fonts
from cnn_explorer.render.grids import ATTRIBUTION_COLORMAP, FEATURE_COLORMAP, OVERLAY_ALPHA
from cnn_explorer.render.image import apply_colormap, safe_max, to_display_rgb, to_hwc_uint8

CARD_BOX = (375, 215)  # px: the box TensorBoard's Time Series page fits an image card into
TEXT = 9  # points: 12.5 px at 100 dpi
TITLE = 10  # points: 14 px
NOTE = 7  # points: the small print under a confusion matrix


def filters_card(grid: Tensor, title: str) -> Figure:
    """A filter grid (:func:`~cnn_explorer.render.grids.filter_grid`) at its own size, titled above."""
    height, width = grid.shape[1:]
    fig = new_figure(((width + 8) / DPI, (height + 26) / DPI))
    fig.figimage(to_hwc_uint8(grid[None])[0], xo=4, yo=4)
    fig.text(0.5, 1 - 4 / (height + 26), title, ha="center", va="top", fontsize=TITLE)
    return fig


def feature_maps_card(image: Tensor, activations: Sequence[Tensor], layers: Sequence[str], title: str) -> Figure:
    """One image and its first channels after each layer: a row per layer, the input first, channels after it.

    Args:
        image: ``[C, H, W]`` uint8 or float in ``[0, 1]``, C = 1 or 3.
        activations: per layer, ``[c, h, w]``: the channels to show (ReLU outputs), each row scaled to its own
            largest value and upsampled to the image size.
        layers: one row label per layer (name and resolution).
        title: what the card shows (class, epoch).
    """
    rgb = to_display_rgb(image[None])  # [1, 3, H, W]
    columns = 1 + max(a.shape[0] for a in activations)
    rows = []
    for act in activations:
        maps = F.interpolate(act.detach().float().cpu().clamp_min(0)[None], size=rgb.shape[2:], mode="nearest")
        maps = maps / safe_max(maps.flatten(1)).view(1, 1, 1, 1)
        row = torch.cat([rgb, apply_colormap(maps, FEATURE_COLORMAP)[0]])  # [1 + c, 3, H, W]
        rows.append(torch.cat([row, torch.ones(columns - len(row), 3, *rgb.shape[2:])]))
    tiles = torch.cat(rows)
    labels = ["input", *(f"ch {c}" for c in range(columns - 1))] + [""] * (len(tiles) - columns)
    return _tile_card(tiles, labels, title, columns, side=48, row_labels=layers)


def attribution_card(images: Tensor, maps: Tensor, labels: Sequence[str], title: str) -> Figure:
    """Each image with its attribution map blended over it (``|map| / image max``, inferno), in two rows.

    Args:
        images: ``[K, C, H, W]`` uint8 or float in ``[0, 1]``.
        maps: ``[K, H, W]`` one method's maps.
        labels: one label per image (its class).
        title: what the card shows (method, epoch).
    """
    rgb = to_display_rgb(images)
    magnitude = maps.detach().float().cpu().abs()
    heat = apply_colormap(magnitude / safe_max(magnitude.flatten(1)).view(-1, 1, 1), ATTRIBUTION_COLORMAP)
    blend = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * heat
    return _tile_card(blend, labels, title, columns=-(-len(labels) // 2))


def mistakes_card(
    images: Tensor,
    true: Tensor,
    pred: Tensor,
    confidence: Tensor,
    class_names: Sequence[str],
    title: str,
    slots: int = 8,
) -> Figure:
    """Up to ``slots`` misclassified images in two rows, each labelled with its true class and the prediction's
    confidence; the card has room for ``slots`` whatever the count, so cards of one tag share a size."""
    labels = [
        f"{class_names[t]}\n-> {class_names[p]} {c:.2f}"
        for t, p, c in zip(true.tolist(), pred.tolist(), confidence.tolist(), strict=True)
    ]
    if not labels:
        fig = new_figure((CARD_BOX[0] / DPI, 60 / DPI))
        fig.text(0.5, 0.5, f"{title}: no mistakes", ha="center", va="center", fontsize=TITLE)
        return fig
    columns = -(-max(slots, len(labels)) // 2)
    return _tile_card(to_display_rgb(images), labels, title, columns, label_lines=2, slot_width=100, rows=2)


def confusion_card(cm: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A confusion matrix that reads in a card: colour = fraction of the true class, the percentage in each
    cell, rows labelled with class names, columns with their first three letters (same order)."""
    counts = cm.detach().cpu().long()
    rates = row_normalize(counts)
    n = len(class_names)
    cell = 24 if n <= 10 else max(8, 240 // n)  # px
    fontsize = TEXT if n <= 10 else 6
    note = "% of true class; rows true, columns predicted"
    # px for row labels (the longest name, within reason), title, column labels and the note
    left = int(min(160, max(40, max(text_width(name, fontsize) for name in class_names) + 8)))
    top, bottom = 26, 34
    short = [name[:3] for name in class_names]
    if len(set(short)) < n:  # the first letters do not tell the classes apart: number the columns instead
        short = [str(i) for i in range(n)]
    # A few classes make a narrow matrix: the card is at least as wide as its title and note.
    text = max(text_width(title, TITLE), text_width(note, NOTE)) + 8
    width, height = int(max(left + n * cell + 8, text)), top + n * cell + bottom
    fig = new_figure((width / DPI, height / DPI))
    ax = fig.add_axes((left / width, bottom / height, n * cell / width, n * cell / height))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    for true, row in enumerate(rates.tolist()):
        for predicted, rate in enumerate(row):
            if counts[true].sum() and (rate >= 0.005 or true == predicted):
                color = "white" if rate > 0.5 else "black"
                ax.text(predicted, true, f"{100 * rate:.0f}", ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=fontsize)
    ax.set_xticks(range(n), labels=short, fontsize=fontsize - 1)
    ax.tick_params(length=0, pad=2)
    fig.text(0.5, 1 - 4 / height, title, ha="center", va="top", fontsize=TITLE)
    fig.text(2 / width, 2 / height, note, fontsize=NOTE, color="dimgray")
    return fig


def text_width(text: str, fontsize: float) -> float:
    """Pixels ``text`` takes at ``fontsize`` points in the fonts figures draw with (its widest line)."""
    fig = new_figure((1.0, 1.0))
    artist = fig.text(0, 0, text, fontsize=fontsize, fontfamily=list(text_fonts()), linespacing=1.0)
    return artist.get_window_extent(renderer=fig.canvas.get_renderer()).width


def _tile_card(
    tiles: Tensor,
    labels: Sequence[str],
    title: str,
    columns: int,
    label_lines: int = 1,
    slot_width: int = 0,
    rows: int = 0,
    side: int = 64,
    row_labels: Sequence[str] = (),
) -> Figure:
    """``tiles`` ``[K, 3, H, W]`` in ``[0, 1]`` in rows of ``columns``, scaled to about ``side`` px, a label
    above each (an empty label leaves no room: the tile rows under a labelled first row), ``slot_width`` px at
    least per tile, room for ``rows`` rows at least, and ``row_labels`` at the left of each row."""
    count, image_h = tiles.shape[0], tiles.shape[2]
    if image_h > side:  # a 64 or 128 px image shrinks to the tile size: the card still fits TensorBoard's box
        tiles = F.interpolate(tiles, size=(side, round(side * tiles.shape[3] / image_h)), mode="area")
    else:
        tiles = F.interpolate(tiles, scale_factor=side // image_h, mode="nearest")
    side_h, side_w = tiles.shape[2:]
    pad, title_h = 6, 24
    label_h = 15 * label_lines
    first_only = len(labels) > columns and not any(labels[columns:])  # labels only above the first row
    rows = max(rows, -(-count // columns))
    row_label_w = 62 if row_labels else 0
    label_size = TEXT - (1 if label_lines > 1 else 0)
    # Wide enough for every tile's label (a long class name, "optimized" over a 32 px tile), so none overlap.
    widest_label = max((text_width(line, label_size) for label in labels for line in label.split("\n")), default=0)
    slot_w = max(side_w + pad, slot_width, int(widest_label) + pad)
    slot_h = side_h + pad + (0 if first_only else label_h)
    # Few tiles (five classes, not ten) make a narrow card: at least as wide as its title.
    width = max(row_label_w + columns * slot_w + pad, int(text_width(title, TITLE)) + 2 * pad)
    height = title_h + rows * slot_h + (label_h if first_only else 0)
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels = to_hwc_uint8(tiles)
    fig = new_figure((width / DPI, height / DPI))
    for r, text in enumerate(row_labels):
        middle = title_h + label_h + r * slot_h + side_h / 2
        fig.text(3 / width, 1 - middle / height, text, ha="left", va="center", fontsize=TEXT - 1, linespacing=1.0)
    for i in range(count):
        row, col = divmod(i, columns)
        top = title_h + label_h + row * slot_h
        left = row_label_w + pad + col * slot_w + (slot_w - pad - side_w) // 2
        sheet[top : top + side_h, left : left + side_w] = pixels[i]
        if not labels[i]:
            continue
        fig.text(
            (left + side_w / 2) / width,
            1 - (top - 2) / height,
            labels[i],
            ha="center",
            va="bottom",
            fontsize=label_size,
            linespacing=1.0,
        )
    fig.figimage(sheet, xo=0, yo=0, origin="upper")
    fig.text(0.5, 1 - 3 / height, title, ha="center", va="top", fontsize=TITLE)
    return fig


def channels_card(optimized: Tensor, patches: Tensor, labels: Sequence[str], title: str) -> Figure:
    """Per channel, a row: the input optimized to excite it, then its top-activating patches.

    Args:
        optimized: ``[K, C, H, W]`` in ``[0, 1]``.
        patches: uint8 ``[K, k, C, s, s]`` crops at the channel's receptive field.
        labels: one row label per channel (its index, selectivity, preferred class).
        title: what the card shows (layer, epoch).
    """
    side = max(32, patches.shape[-1])
    rows = []
    for vis, crops in zip(optimized, patches, strict=True):
        row = [F.interpolate(to_display_rgb(t), size=(side, side), mode="nearest") for t in (vis[None], crops)]
        rows.append(torch.cat(row))  # [1 + k, 3, side, side]
    tiles = torch.cat(rows)
    columns = 1 + patches.shape[1]
    header = ["optimized", *(f"#{i + 1}" for i in range(columns - 1))]
    return _tile_card(tiles, header + [""] * (len(tiles) - columns), title, columns, side=side, row_labels=labels)
