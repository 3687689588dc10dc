"""Dataset examples: for each channel, the images that excite it most, cropped to what it sees.

Zeiler, Fergus (2014), "Visualizing and Understanding Convolutional Networks", section 4 (Fig. 2): show,
for each feature map, the top-9 activations over the validation set with the corresponding image patches.
Olah, Mordvintsev, Schubert (2017), "Feature Visualization", Distill, "Why visualize by optimization?":
dataset examples, the real images that activate a channel most, shown beside the optimized ones.

A channel's score for an image is its largest activation over positions (the spatial max); the crop is the
receptive field of the output pixel where that max sits. Top-k buffers are kept RUNNING during one pass
(:class:`TopActivations`, an observer for :func:`.layer_stats.observe_layers`), so only ``C * k`` numbers
per layer are held, never the split's activations or a second copy of its images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.features.layer_stats import observe_layers
from cnn_explorer.interpret.features.receptive_field import ReceptiveField

NEUTRAL_GREY = 128
"""Fill for crop pixels outside the image: mid-grey, so that padding reads as "no image here" and not as black
content (a channel that likes dark corners would otherwise look as if it liked the padding)."""


@dataclass(frozen=True)
class ChannelExamples:
    """The top images per channel of one layer; ``C`` channels, ``k' = min(k, N)`` examples each, best first.

    Attributes:
        values: ``[C, k']`` float32, the channel's spatial max on each example.
        indices: ``[C, k']`` long, the dataset index of each example (as given in the batches).
        rows: ``[C, k']`` long, output row of the arg-max in the layer's feature map.
        cols: ``[C, k']`` long, output column of the arg-max.

    Ties keep the image seen first. A dead channel still lists ``k'`` images, all with value 0: check
    ``values > 0`` before showing them as that channel's preference.
    """

    values: Tensor
    indices: Tensor
    rows: Tensor
    cols: Tensor


class TopActivations:
    """Running top-``k`` images per channel for every observed layer, for :func:`.layer_stats.observe_layers`.

    Each batch's per-image, per-channel spatial max and arg-max (``[B, C]``) is merged into ``[C, k]`` buffers
    with a stable sort, so the result does not depend on how the split is cut into batches.

    Args:
        k: examples kept per channel.

    Raises:
        ValueError: if ``k`` < 1.
    """

    def __init__(self, k: int = 9) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self._values: dict[str, Tensor] = {}  # [C, m] float32, m <= k, descending
        self._indices: dict[str, Tensor] = {}  # [C, m] long
        self._where: dict[str, Tensor] = {}  # [C, m] long, flat position h * width + w
        self._width: dict[str, int] = {}

    def update(self, layer_name: str, activations: Tensor, labels: Tensor | None, indices: Tensor | None) -> None:
        """Merge one batch of ``layer_name``'s output ``[B, C, h, w]`` (or ``[B, C]``) into the buffers.

        Raises:
            ValueError: if ``indices`` is None, or the layer's channel count or width changes.
        """
        if indices is None:
            raise ValueError("TopActivations needs dataset indices: batches must carry the images' indices")
        maps = activations if activations.ndim == 4 else activations[:, :, None, None]  # [B, C, h, w]
        batch, channels, _, width = maps.shape
        peak, where = maps.flatten(2).max(dim=2)  # [B, C] each; max() returns the first arg-max on ties
        candidates = (peak.float().T.cpu(), indices.expand(channels, batch), where.T.cpu())  # [C, B] each
        if layer_name in self._values:
            if self._values[layer_name].shape[0] != channels or self._width[layer_name] != width:
                raise ValueError(f"layer {layer_name!r} changed shape between batches")
            # Buffers first: on a tie the stable sort keeps the earlier image.
            candidates = tuple(
                torch.cat([kept, new], dim=1)
                for kept, new in zip(
                    (self._values[layer_name], self._indices[layer_name], self._where[layer_name]),
                    candidates,
                    strict=True,
                )
            )
        values, image_indices, where = candidates
        order = values.sort(dim=1, descending=True, stable=True).indices[:, : self.k]  # [C, m]
        self._values[layer_name] = values.gather(1, order)
        self._indices[layer_name] = image_indices.gather(1, order)
        self._where[layer_name] = where.gather(1, order)
        self._width[layer_name] = width

    def result(self) -> dict[str, ChannelExamples]:
        """The examples per layer seen so far, in the order the layers first ran.

        Raises:
            ValueError: if no batch was seen.
        """
        if not self._values:
            raise ValueError("TopActivations saw no batch")
        return {
            name: ChannelExamples(
                values=self._values[name],
                indices=self._indices[name],
                rows=self._where[name] // self._width[name],
                cols=self._where[name] % self._width[name],
            )
            for name in self._values
        }


def top_activating_examples(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], layer_names: Sequence[str], k: int = 9
) -> dict[str, ChannelExamples]:
    """The ``k`` images of a split that excite each channel of each named layer most, in one pass.

    A shortcut for :func:`.layer_stats.observe_layers` with a single :class:`TopActivations`; to compute the
    layer statistics in the same pass, call ``observe_layers`` with both observers.

    Args:
        model: the network; modes, grads and hooks are left as they were (eval mode, no grad inside).
        batches: ``(images [B, C, H, W] normalized float, indices [B] long)`` per batch; ``indices`` are the
            images' positions in the uint8 tensor later given to :func:`crop_examples`.
        layer_names: dotted names of the layers, e.g. :func:`cnn_explorer.interpret.layers.stages`.
        k: examples per channel.

    Returns:
        ``{layer name: ChannelExamples}``.

    Raises:
        ValueError: on an unknown layer, malformed batches, ``k`` < 1, or no batch at all.
    """
    observer = TopActivations(k)
    observe_layers(model, ((images, None, indices) for images, indices in batches), layer_names, [observer])
    return observer.result()


def crop_examples(images: Tensor, examples: ChannelExamples, field: ReceptiveField, fill: int = NEUTRAL_GREY) -> Tensor:
    """Cut each example to the receptive field of the output pixel where its channel peaked, clipped to the image.

    Along an axis where the field fits in the image, the crop of example ``(c, i)`` is the ``field.size``-pixel
    span starting at ``field.start + field.stride * (rows[c, i], cols[c, i])`` (the unclipped box of
    :func:`.receptive_field.field_box`), so the activation's field centre sits at the crop's centre; the part of
    it beyond the image's border (where the layer saw zero padding) is filled with ``fill``, at most
    ``field.size - 1`` pixels. Along an axis where the field is larger than the image (``field.exceeds``, common
    for ResNet's layer3 and layer4 at 32 to 160 px: fields of 211 and 435 px), the crop is the whole image along
    that axis: the field clipped to the image, never a frame of padding around a small image. Callers say so
    beside the crops (``field.exceeds(image size)``).

    Args:
        images: the split's images, uint8 ``[N, C_img, H, W]``, indexed by ``examples.indices``.
        examples: one layer's examples, from :class:`TopActivations` or :func:`top_activating_examples`.
        field: that layer's receptive field, from :func:`.receptive_field.receptive_fields`.
        fill: uint8 value for pixels outside the image (default mid-grey, :data:`NEUTRAL_GREY`).

    Returns:
        uint8 ``[C, k', C_img, min(field.size, H), min(field.size, W)]``.

    Raises:
        ValueError: if ``images`` is not uint8 ``[N, C_img, H, W]``, an index is outside ``[0, N)``, or
            ``fill`` is outside ``[0, 255]``.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if not 0 <= fill <= 255:
        raise ValueError(f"fill must be a uint8 value in [0, 255], got {fill}")
    count, image_channels, height, width = images.shape
    channels, k = examples.indices.shape
    flat_index = examples.indices.reshape(-1)  # [C * k]
    if flat_index.numel() and (int(flat_index.min()) < 0 or int(flat_index.max()) >= count):
        raise ValueError(f"examples index images outside [0, {count}); pass the images the pass was run on")
    side_y, side_x = min(field.size, height), min(field.size, width)
    if flat_index.numel() == 0:
        return torch.empty(channels, k, image_channels, side_y, side_x, dtype=torch.uint8)
    # An axis the field overflows is shown whole: its crops start at 0.
    tops = (
        field.start + field.stride * examples.rows.reshape(-1) if field.size <= height else examples.rows.new_zeros(1)
    )
    lefts = (
        field.start + field.stride * examples.cols.reshape(-1) if field.size <= width else examples.cols.new_zeros(1)
    )
    tops, lefts = tops.expand(flat_index.shape[0]), lefts.expand(flat_index.shape[0])  # [C * k] each
    # Pad once by the largest overshoot on any side, then gather every crop with one advanced index.
    pad = max(
        0,
        -int(tops.min()),
        -int(lefts.min()),
        int(tops.max()) + side_y - height,
        int(lefts.max()) + side_x - width,
    )
    chosen = images.index_select(0, flat_index).permute(0, 2, 3, 1)  # [M, H, W, C_img]
    padded = torch.full((chosen.shape[0], height + 2 * pad, width + 2 * pad, image_channels), fill, dtype=torch.uint8)
    padded[:, pad : pad + height, pad : pad + width] = chosen
    ys = (tops + pad)[:, None] + torch.arange(side_y)  # [M, side_y]
    xs = (lefts + pad)[:, None] + torch.arange(side_x)  # [M, side_x]
    rows = torch.arange(chosen.shape[0])[:, None, None]
    crops = padded[rows, ys[:, :, None], xs[:, None, :]]  # [M, side_y, side_x, C_img]
    return crops.permute(0, 3, 1, 2).reshape(channels, k, image_channels, side_y, side_x)


def example_class_counts(examples: ChannelExamples, labels: Tensor, num_classes: int, k: int | None = None) -> Tensor:
    """How many of each channel's first ``k`` examples belong to each class, counting only active ones.

    A channel's preferred class by mean activation (:attr:`.layer_stats.LayerStats.class_means`) and its top
    examples (the largest single activations) answer different questions and can disagree: a channel whose mean
    is highest on trucks may peak on red cars. These counts say what the shown examples are, to set beside it.
    An example with value 0 (a dead channel lists ``k'`` of them, :class:`ChannelExamples`) is no preference
    and is not counted, so a row sums to the number of active examples among the first ``k``.

    Args:
        examples: one layer's examples, ``[C, k']``, best first.
        labels: long ``[N]``, the class of each image the examples index (the split's labels).
        num_classes: ``K``, the number of classes.
        k: count the first ``k`` examples per channel (those shown); None for all ``k'``.

    Returns:
        long ``[C, K]``: ``counts[c, j]`` = examples of channel ``c`` among its first ``k`` with value > 0 whose
        image is of class ``j``.

    Raises:
        ValueError: if ``labels`` is not 1-D, an index is outside it, a label is outside ``[0, K)``, or ``k`` < 1.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(labels.shape)}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    indices, values = examples.indices[:, :k].cpu(), examples.values[:, :k].cpu()  # [C, k] each
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= labels.shape[0]):
        raise ValueError(f"examples index images outside [0, {labels.shape[0]}); pass the split's labels")
    classes = labels.cpu().long()[indices]  # [C, k]
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        low, high = int(classes.min()), int(classes.max())
        raise ValueError(f"labels must be in [0, {num_classes}), got labels from {low} to {high}")
    counts = torch.zeros(indices.shape[0], num_classes, dtype=torch.long)
    return counts.scatter_add_(1, classes, (values > 0).long())
