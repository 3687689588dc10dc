"""Per-layer numbers from one pass over a data split: sparsity, dead channels, class selectivity, pooled features.

One forward pass, with forward hooks on several layers, feeds every "observer" at once: the statistics
here, the pooled features a linear probe is trained on (:mod:`.linear_probe`), the running top-k images
per channel (:mod:`.dataset_examples`) and a sample of representations for CKA (:mod:`.cka`). Each
observer reduces a layer's output as soon as the layer emits it, so no layer's full activations for the
whole split are ever held in memory::

    stats = LayerStatsObserver(num_classes=10)
    tops = TopActivations(k=9)                      # .dataset_examples
    sample = ActivationSample(count=1000)           # .cka
    observe_layers(model, batches, names, [stats, tops, sample])  # batches: (images, labels, indices)
    per_layer, examples, representations = stats.result(), tops.result(), sample.result()

Any module with a ``[B, C]`` output can be observed too: hooking ``classifier.fc2`` hands its logits to an
observer, so predictions can come from the same pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from cnn_explorer.interpret.model_state import forward_hooks, model_device, preserved_model_state

Batch = tuple[Tensor, Tensor | None, Tensor | None]
"""``(images [B, C, H, W] normalized float, labels [B] or None, dataset indices [B] or None)``."""


class LayerObserver(Protocol):
    """Something that reduces a layer's output batch by batch, for :func:`observe_layers`."""

    def update(self, layer_name: str, activations: Tensor, labels: Tensor | None, indices: Tensor | None) -> None:
        """Take one batch of one layer: ``activations`` ``[B, C, h, w]`` or ``[B, C]``, detached, on the
        model's device; ``labels`` and ``indices`` ``[B]`` long on the CPU, or None if the batches have none."""
        ...


def observe_layers(
    model: nn.Module, batches: Iterable[Batch], layer_names: Sequence[str], observers: Sequence[LayerObserver]
) -> None:
    """Run ``model`` once over ``batches`` and hand each named layer's output to every observer.

    The model runs in eval mode under ``torch.no_grad()``, inside :func:`preserved_model_state`; hooks are
    registered only for the pass, through :func:`forward_hooks`. Observers are called inside the hook, so a
    later in-place op cannot change what they saw and no layer output outlives its batch.

    Args:
        model: the network; modes, grads and hooks are left as they were.
        batches: ``(images, labels, indices)`` per batch: images ``[B, C, H, W]`` float, normalized as the
            model expects (moved to the model's device); labels and indices ``[B]`` integer or None.
        layer_names: dotted submodule names, e.g. :func:`cnn_explorer.interpret.layers.stages`.
        observers: each gets ``update(name, activations, labels, indices)`` per layer per batch.

    Raises:
        ValueError: on an unknown layer name, images that are not 4-D float, labels or indices that are not
            ``[B]`` integers, a layer whose output is not a ``[B, C, h, w]`` or ``[B, C]`` tensor, or a layer that
            runs more than once per forward pass.
    """
    current: dict[str, Tensor | None] = {}
    ran: set[str] = set()  # layers that ran in this batch's forward pass

    def hand_over(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if name in ran:
            # A module called twice per pass (a torchvision ResNet block's one ReLU) would be counted twice.
            raise ValueError(
                f"layer {name!r} ran more than once in one forward pass; name a layer that runs once, such as a "
                "whole block or stage (cnn_explorer.interpret.layers.stages lists them)"
            )
        ran.add(name)
        if not isinstance(output, Tensor) or output.ndim not in (2, 4):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"layer {name!r} must output [B, C, h, w] or [B, C], got {shape}")
        for observer in observers:
            observer.update(name, output.detach(), current["labels"], current["indices"])

    # A name listed twice would be hooked twice and counted twice.
    unique_names = list(dict.fromkeys(layer_names))
    with preserved_model_state(model), forward_hooks(model, unique_names, hand_over), torch.no_grad():
        model.eval()
        device = model_device(model)
        for images, labels, indices in batches:
            if images.ndim != 4 or not images.is_floating_point():
                raise ValueError(f"images must be float [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
            current["labels"] = _batch_vector(labels, images.shape[0], "labels")
            current["indices"] = _batch_vector(indices, images.shape[0], "indices")
            ran.clear()
            model(images.to(device))


@dataclass(frozen=True)
class LayerStats:
    """What one layer does over a data split; ``C`` channels, ``N`` images, ``K`` classes.

    Attributes:
        sparsity: fraction of exact zeros over all images, channels and positions.
        channel_sparsity: ``[C]`` float, the same per channel.
        dead: ``[C]`` bool, True for a channel that is never > 0 at any position of any image.
        class_means: ``[K, C]`` float64, mean over each class's images of the channel's spatially averaged
            activation; a row of NaN for a class with no image in the split.
        selectivity: ``[C]`` float64 class selectivity index (see :func:`class_selectivity`).
        pooled: ``[N, C]`` float32 globally average-pooled activations, in batch order (probe input);
            None if the observer was told not to keep them.
        labels: ``[N]`` long, the labels of ``pooled``'s rows.
    """

    sparsity: float
    channel_sparsity: Tensor
    dead: Tensor
    class_means: Tensor
    selectivity: Tensor
    pooled: Tensor | None
    labels: Tensor

    @property
    def dead_count(self) -> int:
        """Number of dead channels."""
        return int(self.dead.sum())

    @property
    def live_count(self) -> int:
        """Number of channels that are > 0 somewhere: those with a class selectivity."""
        return int((~self.dead).sum())

    @property
    def selectivity_mean(self) -> float:
        """Mean selectivity over the live channels where it is defined; NaN if there is none.

        A dead channel's index is 0/0 in Morcos et al.'s definition: it has no class preference to measure,
        so it is left out rather than counted as 0 (which would make a layer with more dead channels look
        less class-specific). :attr:`dead_count` says how many were left out.
        """
        live = self.selectivity[~self.dead]
        return float(live.nanmean()) if live.numel() else math.nan

    @property
    def selectivity_median(self) -> float:
        """Median selectivity (:func:`median`) over the live channels where it is defined."""
        return median(self.selectivity[~self.dead])


class LayerStatsObserver:
    """Accumulates :class:`LayerStats` per layer, batch by batch, for :func:`observe_layers`.

    Memory: per layer ``O(K * C)`` running sums, plus the ``[N, C]`` pooled features if ``keep_pooled``.

    Args:
        num_classes: number of classes ``K`` the labels index.
        keep_pooled: keep the pooled ``[N, C]`` features (for the linear probe).

    Raises:
        ValueError: if ``num_classes`` < 2.
    """

    def __init__(self, num_classes: int, keep_pooled: bool = True) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for class selectivity, got {num_classes}")
        self.num_classes = num_classes
        self.keep_pooled = keep_pooled
        self._zeros: dict[str, Tensor] = {}  # [C] int64 count of exact zeros
        self._positions: dict[str, int] = {}  # positions per channel seen so far (N * h * w)
        self._positive: dict[str, Tensor] = {}  # [C] bool, ever > 0
        self._class_sums: dict[str, Tensor] = {}  # [K, C] float64
        self._class_counts: dict[str, Tensor] = {}  # [K] int64
        self._pooled: dict[str, list[Tensor]] = {}
        self._labels: dict[str, list[Tensor]] = {}

    def update(self, layer_name: str, activations: Tensor, labels: Tensor | None, indices: Tensor | None) -> None:
        """Add one batch of ``layer_name``'s output ``[B, C, h, w]`` (or ``[B, C]``) with its ``[B]`` labels.

        Raises:
            ValueError: if ``labels`` is None or outside ``[0, num_classes)``, or the channel count changes.
        """
        if labels is None:
            raise ValueError("LayerStatsObserver needs labels: batches must be (images, labels, indices)")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}), got {labels.unique().tolist()}")
        maps = activations if activations.ndim == 4 else activations[:, :, None, None]  # [B, C, h, w]
        batch, channels, height, width = maps.shape
        if layer_name not in self._zeros:
            self._zeros[layer_name] = torch.zeros(channels, dtype=torch.long)
            self._positions[layer_name] = 0
            self._positive[layer_name] = torch.zeros(channels, dtype=torch.bool)
            self._class_sums[layer_name] = torch.zeros(self.num_classes, channels, dtype=torch.float64)
            self._class_counts[layer_name] = torch.zeros(self.num_classes, dtype=torch.long)
            self._pooled[layer_name], self._labels[layer_name] = [], []
        elif self._zeros[layer_name].shape[0] != channels:
            raise ValueError(f"layer {layer_name!r} had {self._zeros[layer_name].shape[0]} channels, now {channels}")
        # Reduce on the model's device; only [C] and [B, C] results travel to the CPU. |sign| summed over the
        # spatial dims counts non-zeros exactly (per image h * w < 2^24), then in int64 over the batch; on CPU
        # this runs about 3x faster than (maps == 0).sum(dim=(0, 2, 3)), a bool reduction across dims.
        nonzero = maps.sign().abs_().sum(dim=(2, 3), dtype=torch.float32).long().sum(dim=0)  # [C]
        self._zeros[layer_name] += batch * height * width - nonzero.cpu()
        self._positions[layer_name] += batch * height * width
        self._positive[layer_name] |= (maps.amax(dim=(0, 2, 3)) > 0).cpu()
        pooled = maps.float().mean(dim=(2, 3)).cpu()  # [B, C]
        self._class_sums[layer_name].index_add_(0, labels, pooled.double())
        self._class_counts[layer_name] += torch.bincount(labels, minlength=self.num_classes)
        if self.keep_pooled:
            self._pooled[layer_name].append(pooled)
        self._labels[layer_name].append(labels)

    def result(self) -> dict[str, LayerStats]:
        """Statistics per layer seen so far, in the order the layers first ran.

        Raises:
            ValueError: if no batch was seen.
        """
        if not self._zeros:
            raise ValueError("LayerStatsObserver saw no batch")
        stats = {}
        for name, zeros in self._zeros.items():
            positions = self._positions[name]
            counts = self._class_counts[name]
            means = self._class_sums[name] / counts[:, None].clamp_min(1)
            means[counts == 0] = float("nan")
            present = means[counts > 0]
            selectivity = (
                class_selectivity(present)
                if present.shape[0] >= 2
                else torch.full((zeros.shape[0],), float("nan"), dtype=torch.float64)
            )
            stats[name] = LayerStats(
                sparsity=float(zeros.sum()) / max(positions * zeros.shape[0], 1),
                channel_sparsity=zeros.double().div(max(positions, 1)).float(),
                dead=~self._positive[name],
                class_means=means,
                selectivity=selectivity,
                pooled=torch.cat(self._pooled[name]) if self.keep_pooled else None,
                labels=torch.cat(self._labels[name]),
            )
        return stats


def class_selectivity(class_means: Tensor) -> Tensor:
    """Class selectivity index per channel from class-conditional mean activations.

    Morcos, Barrett, Rabinowitz, Botvinick (2018), "On the importance of single directions for
    generalization", section 2 (Approach), the class selectivity index
    ``SI = (mu_max - mu_-max) / (mu_max + mu_-max)``, where ``mu_max`` is the
    largest class-conditional mean and ``mu_-max`` the mean of the other classes' means. With non-negative
    (post-ReLU) activations it lies in ``[0, 1]``: 0 when every class drives the channel equally, 1 when
    only one class drives it at all. Conventions: a channel whose class means are all 0 (dead on these data)
    gets 0, not 0/0; a channel with a negative class mean (a layer before its ReLU), where the index has
    no meaning, gets NaN.

    Args:
        class_means: ``[K, C]`` mean activation of each of ``C`` channels over each of ``K >= 2`` classes.

    Returns:
        float64 ``[C]``.

    Raises:
        ValueError: if ``class_means`` is not 2-D with at least 2 rows, or contains NaN.
    """
    if class_means.ndim != 2 or class_means.shape[0] < 2:
        raise ValueError(f"class_means must be [K >= 2, C], got {tuple(class_means.shape)}")
    if class_means.isnan().any():
        raise ValueError("class_means must not contain NaN (drop the rows of classes with no images)")
    means = class_means.double()
    top = means.amax(dim=0)  # [C]
    rest = (means.sum(dim=0) - top) / (means.shape[0] - 1)  # [C], mean of the other K - 1 classes
    total = top + rest
    index = torch.where(total > 0, (top - rest) / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return torch.where((means < 0).any(dim=0), float("nan"), index)


def median(values: Tensor) -> float:
    """The usual median of the finite-or-infinite values (NaN skipped): for an even count, the mean of the two
    middle values, not torch's lower one (``torch.tensor([1., 2.]).median()`` is 1, this is 1.5).

    Args:
        values: a float tensor of any shape, flattened.

    Returns:
        the median; NaN if no value is left.
    """
    kept = values.detach().flatten().double().cpu()
    kept = kept[~kept.isnan()].sort().values
    count = kept.numel()
    if count == 0:
        return math.nan
    return float((kept[(count - 1) // 2] + kept[count // 2]) / 2)


def _batch_vector(values: Tensor | None, batch: int, what: str) -> Tensor | None:
    if values is None:
        return None
    if values.shape != (batch,) or values.is_floating_point() or values.is_complex():
        raise ValueError(f"{what} must be integer [B] = [{batch}], got {values.dtype} {tuple(values.shape)}")
    return values.detach().to("cpu", torch.long)
