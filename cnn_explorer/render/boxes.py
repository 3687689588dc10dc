"""Detections drawn on their image: ground-truth boxes in one colour, predicted boxes with their scores in another,
for TensorBoard's card (:func:`detections_card`), the written report (:func:`detections_figure`), and the
precision-recall curve of a detector (:func:`precision_recall_figure`).

Boxes are drawn after the image is resized to the size it is shown at, so lines stay 2 px wide and score labels
readable whatever the photo's size (drawn first, a 2 px line on a 640 px photo shrunk into a 215 px card fades).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from matplotlib import font_manager
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from cnn_explorer.render.cards import CARD_BOX, NOTE, TITLE
from cnn_explorer.render.figures import DPI, new_figure
from cnn_explorer.render.image import to_hwc_uint8

if TYPE_CHECKING:  # the detection package imports Lightning: rendering does not
    from cnn_explorer.detection.analysis import ThresholdRow

# Blue-cyan against orange: told apart with the common colour-vision deficiencies (red-green), unlike green vs red.
GT_COLOR = (0, 220, 255)
PREDICTION_COLOR = (255, 140, 0)
PREDICTION_COLOR_MPL = tuple(c / 255 for c in PREDICTION_COLOR)
LINE = 2  # px
LABEL_PX = 11  # px: score labels' font size on the image as shown
REPORT_IMAGE_HEIGHT = 300  # px: each image's height in the report's figure
REPORT_COLUMNS = 3


@dataclass(frozen=True)
class BoxesOnImage:
    """One image and what to draw on it.

    Attributes:
        image: ``[3, H, W]`` uint8 or float in ``[0, 1]``.
        truth: float ``[M, 4]`` ground-truth boxes, xyxy pixels of ``image``.
        boxes: float ``[K, 4]`` predicted boxes.
        scores: float ``[K]`` their scores (written on each box).
        title: above the image.
    """

    image: Tensor
    truth: Tensor
    boxes: Tensor
    scores: Tensor
    title: str = ""


@functools.cache
def _label_font() -> str:
    """The file of matplotlib's default sans-serif font (DejaVu Sans, shipped with matplotlib): PIL's built-in
    bitmap font cannot be sized."""
    return font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]))


def draw_boxes(item: BoxesOnImage, height: int | None = None) -> Tensor:
    """The image resized to ``height`` px (keeping its aspect; None: as it is), the ground-truth boxes in
    :data:`GT_COLOR` and the predictions in :data:`PREDICTION_COLOR` drawn on it, :data:`LINE` px wide, each
    prediction labelled with its score (two decimals) at its top-left corner.

    Returns:
        uint8 ``[3, h, w]``.
    """
    image = item.image.detach().cpu()
    image = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    scale = 1.0
    if height is not None and height != image.shape[1]:
        scale = height / image.shape[1]
        size = (height, max(1, round(image.shape[2] * scale)))
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        image = image[0].round().clamp(0, 255).to(torch.uint8)
    truth, boxes = item.truth.detach().float().cpu() * scale, item.boxes.detach().float().cpu() * scale
    if len(truth):
        image = draw_bounding_boxes(image, truth.reshape(-1, 4), colors=GT_COLOR, width=LINE)
    if len(boxes):
        labels = [f"{s:.2f}" for s in item.scores.detach().float().cpu().tolist()]
        image = draw_bounding_boxes(
            image,
            boxes.reshape(-1, 4),
            labels=labels,
            colors=PREDICTION_COLOR,
            width=LINE,
            font=_label_font(),
            font_size=LABEL_PX,
            label_colors=(0, 0, 0),
            fill_labels=True,  # black text on an orange tab: readable on any photo
        )
    return image


def legend(score_threshold: float) -> str:
    """The colour key under a picture of boxes."""
    return f"cyan: ground truth; orange: predictions scored >= {score_threshold:g}, with their scores"


def detections_card(item: BoxesOnImage, note: str) -> Figure:
    """One image with its boxes on a TensorBoard card: :data:`~cnn_explorer.render.cards.CARD_BOX` high, the
    image as large as fits under the title and above ``note`` (boxes drawn at that size)."""
    pad, title_h, note_h = 4, 20, 14
    room_w, room_h = CARD_BOX[0] - 2 * pad, CARD_BOX[1] - title_h - note_h
    _, h, w = item.image.shape
    height = max(1, min(room_h, math.floor(room_w * h / w)))
    pixels = to_hwc_uint8(draw_boxes(item, height)[None])[0]
    width = CARD_BOX[0]
    fig = new_figure((width / DPI, CARD_BOX[1] / DPI))
    fig.figimage(pixels, xo=(width - pixels.shape[1]) // 2, yo=CARD_BOX[1] - title_h - pixels.shape[0])
    fig.text(0.5, 1 - 3 / CARD_BOX[1], item.title, ha="center", va="top", fontsize=TITLE - 1)
    fig.text(pad / width, 2 / CARD_BOX[1], note, ha="left", va="bottom", fontsize=NOTE, color="dimgray")
    return fig


def detections_figure(items: Sequence[BoxesOnImage], title: str, note: str, columns: int = REPORT_COLUMNS) -> Figure:
    """Images with their boxes for the written report: ``columns`` per row, each :data:`REPORT_IMAGE_HEIGHT` px
    high (boxes drawn at that size), titled, ``note`` (the colour key) under the title."""
    drawn = [draw_boxes(item, REPORT_IMAGE_HEIGHT) for item in items]
    if not drawn:
        fig = new_figure((6.0, 1.0))
        fig.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
        return fig
    columns = min(columns, len(drawn))
    rows = -(-len(drawn) // columns)
    cell_w = max(d.shape[2] for d in drawn) / DPI + 0.1
    cell_h = REPORT_IMAGE_HEIGHT / DPI + 0.35  # the image and its title
    fig = new_figure((columns * cell_w, rows * cell_h + 0.6), constrained=True)
    fig.suptitle(f"{title}\n{note}", fontsize=10)
    for i, (item, image) in enumerate(zip(items, drawn, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(to_hwc_uint8(image[None])[0], interpolation="nearest")
        ax.set_title(item.title, fontsize=8)
        ax.set_axis_off()
    return fig


def precision_recall_figure(
    recall: Tensor,
    precision: Tensor,
    scores: Tensor,
    average_precision: float,
    marked: Sequence[float],
    title: str,
    size: tuple[float, float] = (6.0, 4.5),
) -> Figure:
    """The precision-recall curve of detections ranked by score (one point per detection, from
    :func:`~cnn_explorer.detection.analysis.precision_recall`), a dot where the score passes each threshold in
    ``marked``, labelled with it. ``size`` in inches (``CARD_BOX / DPI`` for a TensorBoard card)."""
    fig = new_figure(size, constrained=True)
    ax = fig.add_subplot()
    r, p, s = recall.double().tolist(), precision.double().tolist(), scores.double().tolist()
    ax.plot([0.0, *r], [1.0 if p else 0.0, *p], color="tab:blue", drawstyle="steps-post", linewidth=1.5)
    for t in marked:
        kept = [i for i, score in enumerate(s) if score >= t]
        if kept:
            ax.plot(r[kept[-1]], p[kept[-1]], "o", color=PREDICTION_COLOR_MPL, markersize=5)
            ax.annotate(f"{t:g}", (r[kept[-1]], p[kept[-1]]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.1)  # room for the labels of dots at precision 1
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    small = size[1] < 3
    ax.set_title(f"{title}\nAP@.5 {average_precision:.3f}; dots: score thresholds", fontsize=8 if small else 10)
    if small:
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
    return fig


def threshold_markdown(rows: Sequence[ThresholdRow]) -> str:
    """The score-threshold table (:func:`~cnn_explorer.detection.analysis.threshold_table`) as Markdown, for
    TensorBoard's Text tab and the report alike."""
    lines = [
        "| score >= | found | precision | recall | F1 | detections / image | false positives / image |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [f"{r.threshold:g}", f"{r.true_positives} of {r.objects}", *map(_fraction, (r.precision, r.recall))]
        cells += [_fraction(r.f1), f"{r.detections_per_image:.2f}", f"{r.false_positives_per_image:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fraction(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"
