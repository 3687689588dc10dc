"""Images made for TensorBoard's cards: pictures drawn at the size TensorBoard shows them, text readable there.

TensorBoard's Time Series page fits every image into its card's 326 x 215 px image box (in a 1280 px window): an
image drawn taller is shrunk (its labels turn to smudges), one drawn shorter is enlarged (blocky). Every card here
is therefore exactly :data:`CARD_BOX` high and at most as wide, its content laid out from the top at the largest
tile size that fits (:func:`_tile_card`), its text at least 9 px (:data:`NOTE`). What cannot fit is split off: the
confusion matrix's exact counts go to the Text tab (:func:`confusion_table`). The
written report keeps its own, larger figures (:mod:`cnn_explorer.render.figures`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from cnn_explorer.interpret.confusion import row_normalize
from cnn_explorer.render.figures import DPI, new_figure
from cnn_explorer.render.fonts import text_fonts
from cnn_explorer.render.grids import ATTRIBUTION_COLORMAP, FEATURE_COLORMAP
from cnn_explorer.render.image import apply_colormap, clip_to_percentile, safe_max, to_display_rgb, to_hwc_uint8

# px: the image box of TensorBoard's Time Series card at a 1280 px window (width, fitted height): the ~361 px card
# less its padding (Chromium: clientWidth 326.5, object-fit: contain).
CARD_BOX = (326, 215)
TEXT = 9  # points: 12.5 px at 100 dpi
TITLE = 10  # points: 14 px
NOTE = 7  # points: 9.7 px, the smallest text on a card (scale notes)
SIGNED_COLORMAP = "RdBu_r"  # diverging, white at 0: a signed map's positive (red) and negative (blue) parts
CLIP_PERCENTILE = 99.0  # attribution maps are scaled to this percentile of |map| and clipped
TILE_SIDES = (96, 80, 64, 56, 48, 40, 32, 28, 24, 20, 16)  # px: tile heights tried, largest first
ROW_LABEL_WRAP = 120  # px: a row label's line wider than this may be broken after its commas to leave room for tiles
_PAD, _TITLE_H, _LABEL_LINE_H = 6, 24, 15  # px: around tiles, the title's band, one line of a tile's label


def filters_card(grid: Tensor, title: str) -> Figure:
    """A filter grid (:func:`~cnn_explorer.render.grids.filter_grid`) enlarged by the largest whole factor that
    fits the card (each weight a sharp square, never resampled), titled above."""
    height, width = grid.shape[1:]
    top = 26
    factor = max(1, min((CARD_BOX[0] - 8) // width, (CARD_BOX[1] - top - 4) // height))
    pixels = to_hwc_uint8(grid[None])[0].repeat(factor, axis=0).repeat(factor, axis=1)
    fig_w = max(pixels.shape[1] + 8, int(text_width(title, title_size(title))) + 8)
    fig, fig_h = _card_figure(fig_w, top + pixels.shape[0] + 4)
    fig.figimage(pixels, xo=(fig_w - pixels.shape[1]) // 2, yo=fig_h - top - pixels.shape[0])
    fig.text(0.5, 1 - 4 / fig_h, title, ha="center", va="top", fontsize=title_size(title))
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
    labels = ["in", *(f"{c}" for c in range(columns - 1))] + [""] * (len(tiles) - columns)
    note = "in: the image; 0, 1, ...: channels, dark 0 to the row's largest"
    return _tile_card(tiles, labels, title, columns=columns, row_labels=layers, note=note)


def attribution_card(images: Tensor, maps: Tensor, labels: Sequence[str], title: str) -> Figure:
    """Each image with its attribution map, the map clipped at its 99th percentile of ``|map|``
    (:func:`~cnn_explorer.render.image.clip_to_percentile`) so a few outlier pixels do not leave the rest black.

    A map with negative values (gradient x input, Integrated Gradients) is drawn in a diverging colour map
    centred at 0 (red supports the class, blue opposes it, white is 0); a magnitude map in inferno. Where the card
    has room to show the map beside its image at the image's own size (CIFAR's 32 px), it does: the outline of the
    object stays unobstructed. A larger image (Imagenette's 128 px) would shrink to a few dozen pixels beside its
    map, so the map is blended over the image in gray instead, half each (Captum's ``blended_heat_map``), one
    tile per image in the room of two, the class names on two lines. A note under the tiles gives the scale.

    Args:
        images: ``[K, C, H, W]`` uint8 or float in ``[0, 1]``.
        maps: ``[K, H, W]`` one method's maps.
        labels: one label per image (its class).
        title: what the card shows (method, epoch).
    """
    rgb = to_display_rgb(images)
    clipped, _ = clip_to_percentile(maps, CLIP_PERCENTILE)
    signed = bool((clipped < 0).any())
    pct = f"{CLIP_PERCENTILE:.0f}th pct"
    if signed:
        heat = apply_colormap((clipped + 1) / 2, SIGNED_COLORMAP)  # [-1, 1] -> [0, 1], 0 at the middle (white)
        scale = f"red +, blue -, white 0; each map / its {pct} of |map|, clipped"
        blended_scale = f"on the image: red +, blue -, white 0; map / {pct} of |map|"  # shorter: it fits the card
    else:
        heat = apply_colormap(clipped, ATTRIBUTION_COLORMAP)
        scale = f"bright = large; each map / its {CLIP_PERCENTILE:.0f}th percentile, clipped"
        blended_scale = f"on the image: bright = large; map / its {pct}, clipped"
    gap = torch.ones(rgb.shape[0], 3, rgb.shape[2], max(1, rgb.shape[3] // 16))  # a thin white line between
    pairs = torch.cat([rgb, gap, heat], dim=3)  # [K, 3, H, 2W + gap]: image | map
    beside = _tile_layout(tuple(pairs.shape[2:]), labels, title, note=scale)
    if beside.tile_h >= rgb.shape[2]:
        return _draw_tiles(pairs, labels, title, beside)
    blended = 0.5 * rgb.mean(1, keepdim=True) + 0.5 * heat  # [K, 3, H, W]
    return _tile_card(blended, [_two_lines(label) for label in labels], title, label_lines=2, note=blended_scale)


def _two_lines(label: str) -> str:
    """``label`` broken at the space nearest its middle ("English springer" -> "English\nspringer")."""
    spaces = [i for i, char in enumerate(label) if char == " "]
    if not spaces:
        return label
    cut = min(spaces, key=lambda i: abs(2 * i - len(label)))
    return f"{label[:cut]}\n{label[cut + 1 :]}"


def mistakes_card(
    images: Tensor,
    true: Tensor,
    pred: Tensor,
    confidence: Tensor,
    class_names: Sequence[str],
    title: str,
    slots: int = 8,
) -> Figure:
    """Up to ``slots`` misclassified images, each labelled with its true class and the prediction's confidence;
    the card has room for ``slots`` whatever the count, so cards of one tag share a size."""
    labels = [
        f"{class_names[t]}\n-> {class_names[p]} {c:.2f}"
        for t, p, c in zip(true.tolist(), pred.tolist(), confidence.tolist(), strict=True)
    ]
    if not labels:
        fig, fig_h = _card_figure(CARD_BOX[0], CARD_BOX[1])
        fig.text(0.5, 1 - 30 / fig_h, f"{title}: no mistakes", ha="center", va="top", fontsize=TITLE)
        return fig
    return _tile_card(to_display_rgb(images), labels, title, label_lines=2, slots=max(slots, len(labels)))


def confusion_card(cm: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A confusion matrix as a heat map that reads in a card: colour = fraction of the true class, rows labelled
    ``<index> <class name>``, columns by index (same order). The exact counts do not fit in cells a card can
    show: they go to the Text tab (:func:`confusion_table`)."""
    rates = row_normalize(cm.detach().cpu().long())
    n = len(class_names)
    note = (
        "colour: % of the true class, white 0 to dark blue 100\nrows: true class, columns: predicted; counts: Text tab"
    )
    rows = [f"{i} {name}" for i, name in enumerate(class_names)]
    top, bottom = 24, 40  # px: title; column labels and the two-line note
    left = int(min(140, max(text_width(row, TEXT - 1) for row in rows) + 8))
    cell = max(4, min(24, (CARD_BOX[1] - top - bottom) // n, (CARD_BOX[0] - left - 8) // n))  # px
    fontsize = TEXT - 1 if cell >= 12 else None  # labels only where a row has room for 9 px text
    width = int(max(left + n * cell + 8, text_width(title, title_size(title)) + 8, text_width(note, NOTE) + 4))
    fig, height = _card_figure(width, top + n * cell + bottom)
    ax = fig.add_axes((left / width, 1 - (top + n * cell) / height, n * cell / width, n * cell / height))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    if fontsize is not None:
        ax.set_yticks(range(n), labels=rows, fontsize=fontsize)
        ax.set_xticks(range(n), labels=[str(i) for i in range(n)], fontsize=fontsize)
    else:
        ax.set_yticks([])
        ax.set_xticks([])
    ax.tick_params(length=0, pad=2)
    fig.text(0.5, 1 - 4 / height, title, ha="center", va="top", fontsize=title_size(title))
    note_top = 1 - (top + n * cell + 16) / height
    fig.text(2 / width, note_top, note, va="top", fontsize=NOTE, color="dimgray", linespacing=1.1)
    return fig


def confusion_table(cm: Tensor, class_names: Sequence[str]) -> str:
    """The confusion matrix's counts as a Markdown table (TensorBoard's Text tab): a row per true class, a column
    per predicted class (by index, named in the first column), the row's total and its recall."""
    counts = cm.detach().cpu().long()
    n = len(class_names)
    header = "| true \\ predicted | " + " | ".join(str(i) for i in range(n)) + " | total | recall |"
    lines = [header, "|" + " --- |" * (n + 3)]
    for i, (name, row) in enumerate(zip(class_names, counts.tolist(), strict=True)):
        total = sum(row)
        recall = f"{row[i] / total:.1%}" if total else "-"
        lines.append(f"| {i} {name} | " + " | ".join(str(v) for v in row) + f" | {total} | {recall} |")
    return "\n".join(lines)


def text_width(text: str, fontsize: float) -> float:
    """Pixels ``text`` takes at ``fontsize`` points in the fonts figures draw with (its widest line)."""
    return _text_extent(text, fontsize)[0]


def text_height(text: str, fontsize: float) -> float:
    """Pixels ``text`` takes from its first line's top to its last line's bottom (line spacing 1, as drawn here)."""
    return _text_extent(text, fontsize)[1]


def _text_extent(text: str, fontsize: float) -> tuple[float, float]:
    fig = new_figure((1.0, 1.0))
    artist = fig.text(0, 0, text, fontsize=fontsize, fontfamily=list(text_fonts()), linespacing=1.0)
    box = artist.get_window_extent(renderer=fig.canvas.get_renderer())
    return box.width, box.height


def title_size(title: str) -> float:
    """:data:`TITLE`, or :data:`TEXT` where a title that size would make the card wider than :data:`CARD_BOX`
    (TensorBoard would then shrink the whole card)."""
    return TITLE if text_width(title, TITLE) + 12 <= CARD_BOX[0] else TEXT


def _card_figure(width: float, height: float) -> tuple[Figure, int]:
    """A figure ``width`` px wide and :data:`CARD_BOX`'s height (or ``height`` if taller: it will be shrunk),
    so TensorBoard shows it at its own size; content is placed from the top. Returns it with its height in px."""
    fig_h = max(CARD_BOX[1], int(math.ceil(height)))
    return new_figure((int(math.ceil(width)) / DPI, fig_h / DPI)), fig_h


@dataclass(frozen=True)
class _Layout:
    """Where :func:`_tile_card` puts things (px): tile size, slot size, columns, the tile labels' band and font
    size, the row labels' form, the card size, and the note under the tiles."""

    tile_h: int
    tile_w: int
    slot_w: int
    slot_h: int
    cols: int
    label_h: int
    label_size: float
    form: _RowLabels
    width: int
    height: int
    note: str


def _tile_layout(
    tile_shape: tuple[int, int],
    labels: Sequence[str],
    title: str,
    columns: int | None = None,
    label_lines: int = 1,
    slots: int = 0,
    row_labels: Sequence[str] = (),
    note: str = "",
) -> _Layout:
    """The layout :func:`_tile_card` draws ``len(labels)`` tiles of ``tile_shape`` (height, width) in; the
    arguments are its own. The largest tiles that fit; at each size the fewest rows (most columns) that fit the
    width. If nothing fits, the smallest tiles in two rows: TensorBoard shrinks that card."""
    count, (image_h, image_w) = len(labels), tile_shape
    pad, title_h = _PAD, _TITLE_H
    label_h = _LABEL_LINE_H * label_lines
    note_h = 14 if note else 0
    label_sizes = (TEXT - (1 if label_lines > 1 else 0), NOTE)  # the smaller one only where the larger cannot fit
    row_forms = _row_label_forms(row_labels)
    title_w = int(text_width(title, title_size(title))) + 2 * pad
    note_w = int(text_width(note, NOTE)) + 2 * pad if note else 0
    lines = [line for label in labels for line in label.split("\n")]
    first_only = columns is not None and len(labels) > columns and not any(labels[columns:])
    slots = max(slots, count)

    def layout(side: int, cols: int, label_size: float, form: _RowLabels) -> _Layout:
        # Slots wide enough for every tile's label (a long class name), so none overlap.
        widest_label = int(max((text_width(line, label_size) for line in lines), default=0))
        tile_h = side if image_h > side else image_h * (side // image_h)
        tile_w = round(tile_h * image_w / image_h)
        slot_w = max(tile_w + pad, widest_label + pad)
        slot_h = max(tile_h, form.height) + pad + (0 if first_only else label_h)
        rows = -(-(slots if columns is None else count) // cols)
        width = max(form.width + cols * slot_w + pad, title_w, note_w)
        height = title_h + rows * slot_h + (label_h if first_only else 0) + note_h
        return _Layout(tile_h, tile_w, slot_w, slot_h, cols, label_h, label_size, form, width, height, note)

    fits = (
        box
        for size in label_sizes
        for side in TILE_SIDES
        for form in row_forms
        for cols in ([columns] if columns is not None else range(slots, 0, -1))
        if (box := layout(side, cols, size, form)).width <= CARD_BOX[0] and box.height <= CARD_BOX[1]
    )
    return next(fits, None) or layout(TILE_SIDES[-1], columns or -(-slots // 2), label_sizes[-1], row_forms[-1])


def _tile_card(tiles: Tensor, labels: Sequence[str], title: str, **options: Any) -> Figure:
    """``tiles`` ``[K, 3, H, W]`` in ``[0, 1]`` on a card: a label above each (an empty label leaves no room: the
    tile rows under a labelled first row), ``row_labels`` at the left of each row, ``note`` under the tiles;
    ``options`` are :func:`_tile_layout`'s (``columns``, ``label_lines``, ``slots``, ``row_labels``, ``note``).

    The tiles are drawn at the largest height in :data:`TILE_SIDES` (whole multiples of a small image, area
    averaging of a large one) at which the card fits :data:`CARD_BOX` (:func:`_tile_layout`): in rows of
    ``columns``, or, with ``columns=None``, in as few rows as fit (room for ``slots`` tiles at least, so cards of a
    tag share a size). At each tile height the row labels are tried as given, then with lines wider than
    :data:`ROW_LABEL_WRAP` broken after their commas, then both at :data:`NOTE` size: long row labels (class
    names) leave room for the tiles. A row is as tall as its label at least.
    """
    return _draw_tiles(tiles, labels, title, _tile_layout(tuple(tiles.shape[2:]), labels, title, **options))


def _draw_tiles(tiles: Tensor, labels: Sequence[str], title: str, box: _Layout) -> Figure:
    """:func:`_tile_card`'s drawing, in a layout already chosen (:func:`_tile_layout` of these tiles and labels)."""
    pad, title_h, label_h, note = _PAD, _TITLE_H, box.label_h, box.note
    tile_h, tile_w, width, form = box.tile_h, box.tile_w, box.width, box.form
    if tiles.shape[2] > tile_h:
        tiles = F.interpolate(tiles, size=(tile_h, tile_w), mode="area")
    elif tile_h > tiles.shape[2]:
        tiles = F.interpolate(tiles, scale_factor=tile_h // tiles.shape[2], mode="nearest")
    fig, fig_h = _card_figure(width, box.height)
    sheet = np.full((fig_h, width, 3), 255, dtype=np.uint8)
    pixels = to_hwc_uint8(tiles)
    inner = max(tile_h, form.height)  # a row's tile and label area; the tiles centred in it
    for r, text in enumerate(form.labels):
        middle = title_h + label_h + r * box.slot_h + inner / 2
        fig.text(3 / width, 1 - middle / fig_h, text, ha="left", va="center", fontsize=form.size, linespacing=1.0)
    for i in range(len(labels)):
        row, col = divmod(i, box.cols)
        top = title_h + label_h + row * box.slot_h + (inner - tile_h) // 2
        left = form.width + pad + col * box.slot_w + (box.slot_w - pad - tile_w) // 2
        sheet[top : top + tile_h, left : left + tile_w] = pixels[i]
        if labels[i]:
            fig.text(
                (left + tile_w / 2) / width,
                1 - (top - 2) / fig_h,
                labels[i],
                ha="center",
                va="bottom",
                fontsize=box.label_size,
                linespacing=1.0,
            )
    fig.figimage(sheet, xo=0, yo=0, origin="upper")
    fig.text(0.5, 1 - 3 / fig_h, title, ha="center", va="top", fontsize=title_size(title))
    if note:
        bottom = 1 - (box.height - 3) / fig_h
        fig.text(pad / width, bottom, note, ha="left", va="bottom", fontsize=NOTE, color="dimgray")
    return fig


@dataclass(frozen=True)
class _RowLabels:
    """One way to draw a card's row labels: the texts, their font size, and the width and height they take (px)."""

    labels: tuple[str, ...]
    size: float
    width: int
    height: int


def _row_label_forms(row_labels: Sequence[str]) -> list[_RowLabels]:
    """The row labels as given, with long lines broken after commas, and both at :data:`NOTE` size, in that order of
    preference (duplicates dropped); the width includes the gap to the tiles."""
    if not row_labels:
        return [_RowLabels((), TEXT - 1, 0, 0)]
    forms: list[_RowLabels] = []
    for size in (TEXT - 1, NOTE):
        for labels in (tuple(row_labels), tuple(_wrap_after_commas(t, size, ROW_LABEL_WRAP) for t in row_labels)):
            if any(form.labels == labels and form.size == size for form in forms):
                continue
            width = int(max((text_width(t, size) for t in labels), default=-6)) + 6
            height = int(math.ceil(max((text_height(t, size) for t in labels if t), default=0)))
            forms.append(_RowLabels(labels, size, width, height))
    return forms


def _wrap_after_commas(text: str, fontsize: float, max_width: float) -> str:
    """``text`` with each line wider than ``max_width`` px broken after commas, greedily (a part wider than that
    stays whole)."""
    lines = []
    for line in text.split("\n"):
        if text_width(line, fontsize) <= max_width:
            lines.append(line)
            continue
        current = ""
        for part in line.split(", "):
            candidate = f"{current}, {part}" if current else part
            if current and text_width(candidate + ",", fontsize) > max_width:
                lines.append(current + ",")
                current = part
            else:
                current = candidate
        lines.append(current)
    return "\n".join(lines)


def channels_card(optimized: Tensor, patches: Tensor, labels: Sequence[str], title: str) -> Figure:
    """Per channel, a row: the optimum of its central unit, then its top-activating patches, all one tile size.

    Args:
        optimized: ``[K, C, h, w]`` in ``[0, 1]``: each channel's central-unit optimum cut to its receptive field
            (:func:`~cnn_explorer.interpret.features.feature_visualization.visualize_fields`).
        patches: uint8 ``[K, k, C, s, s]`` crops at the channel's receptive field.
        labels: one row label per channel (:func:`channel_label`).
        title: what the card shows (layer, epoch).
    """
    rows = channel_rows(optimized, patches)  # [K, 1 + k, 3, s, s]
    columns = rows.shape[1]
    header = ["opt", *(f"#{i + 1}" for i in range(columns - 1))]
    note = "opt: optimum of the central unit, at its field; #k: top patches"
    # A field under 32 px is enlarged first: the card would otherwise only take whole multiples of it (an 18 px
    # field would stay 18 px where 32 px tiles fit).
    tiles = enlarge_small_tiles(rows.flatten(0, 1))
    labels_above = header + [""] * (len(tiles) - columns)
    return _tile_card(tiles, labels_above, title, columns=columns, row_labels=labels, note=note)


SMALL_TILE = 32  # px: a receptive field smaller than this is enlarged to at least this size to be seen


def enlarge_small_tiles(tiles: Tensor) -> Tensor:
    """``[N, C, h, w]`` tiles whose larger side is under :data:`SMALL_TILE` enlarged by the smallest whole factor
    that reaches it (nearest, so that their pixels show as even blocks); larger tiles returned as they are."""
    side = max(tiles.shape[-2:])
    if side >= SMALL_TILE:
        return tiles
    return F.interpolate(tiles, scale_factor=math.ceil(SMALL_TILE / side), mode="nearest")


def channel_rows(optimized: Tensor, patches: Tensor) -> Tensor:
    """Each channel's optimum beside its top patches, at the patches' size, for the card and the report's figure.

    Both are cut to the channel's receptive field, so they usually have one size already; the optimum is
    resampled only where its crop was clipped otherwise at the image's border (nearest when enlarged, area
    averaged when shrunk), so that both are seen at one scale.

    Args:
        optimized: float ``[K, C, h, w]`` in ``[0, 1]``, one optimum per channel.
        patches: uint8 ``[K, k, C, s_h, s_w]``, the channels' top patches.

    Returns:
        float32 RGB ``[K, 1 + k, 3, s_h, s_w]`` in ``[0, 1]``: per channel, the optimum first.

    Raises:
        ValueError: if the two do not hold the same number of channels, or are not 1- or 3-channel images.
    """
    if optimized.ndim != 4 or patches.ndim != 5 or optimized.shape[0] != patches.shape[0]:
        raise ValueError(
            f"need optima [K, C, h, w] and patches [K, k, C, s, s] of the same K, got {tuple(optimized.shape)} and "
            f"{tuple(patches.shape)}"
        )
    count, k = patches.shape[:2]
    size = (patches.shape[-2], patches.shape[-1])
    vis = to_display_rgb(optimized)  # [K, 3, h, w]
    if tuple(vis.shape[-2:]) != size:
        shrink = vis.shape[-2] * vis.shape[-1] > size[0] * size[1]
        vis = F.interpolate(vis, size=size, mode="area" if shrink else "nearest")
    crops = to_display_rgb(patches.flatten(0, 1)).reshape(count, k, 3, *size)
    return torch.cat([vis[:, None], crops], dim=1)


TOP_CLASSES = 2  # classes of the top patches a channel's label names: the most frequent ones


def channel_label(
    channel: int, selectivity: float, class_means: Tensor, patch_counts: Tensor, class_names: Sequence[str]
) -> str:
    """A channel's label in the card and the report: index and class selectivity, the class with the highest mean
    activation, and the classes of its top patches, e.g. ``"ch 12, SI 0.41\nmean: truck\ntop 9: car 7, truck 2"``.

    The two can disagree: the mean class is where the channel is high on average, the patches where it peaks
    (Zeiler & Fergus 2014's top activations), and a channel that prefers trucks on average may peak on red cars.
    The :data:`TOP_CLASSES` most frequent classes among the active patches are named (ties to the lower class
    index); ``top n`` counts the active patches, so ``n`` less the named counts are of other classes.

    Args:
        channel: the channel's index in its layer.
        selectivity: its class selectivity index (Morcos et al. 2018).
        class_means: ``[K]`` its mean activation per class; NaN for a class with no image (never named).
        patch_counts: long ``[K]``, its shown patches per class, active ones only
            (:func:`~cnn_explorer.interpret.features.dataset_examples.example_class_counts`).
        class_names: the ``K`` class names as figures draw them.

    Raises:
        ValueError: if ``class_means`` or ``patch_counts`` does not have one entry per class name.
    """
    if class_means.shape != (len(class_names),) or patch_counts.shape != (len(class_names),):
        raise ValueError(
            f"need one mean and one count per class ({len(class_names)}), got {tuple(class_means.shape)} and "
            f"{tuple(patch_counts.shape)}"
        )
    means = class_means.detach().cpu().double()
    mean_class = class_names[int(torch.where(means.isnan(), -math.inf, means).argmax())]
    counts = patch_counts.detach().cpu().long()
    active = int(counts.sum())
    if active == 0:
        mix = "top: none active"
    else:
        order = counts.argsort(descending=True, stable=True)[:TOP_CLASSES]
        mix = f"top {active}: " + ", ".join(f"{class_names[j]} {int(counts[j])}" for j in order if counts[j] > 0)
    return f"ch {channel}, SI {selectivity:.2f}\nmean: {mean_class}\n{mix}"
