"""The LightningDataModule of a detection dataset (Penn-Fudan by default): images resized once, a seeded train/val
split beside a fixed test split, flips with their boxes and masks applied per batch on the training device.

Data path, once per run: a source decodes the annotated images (:mod:`cnn_explorer.detection.sources`) -> each is
resized so its shorter side is ``min_size`` (boxes and masks with it) and kept as uint8 -> the test split is fixed by
sorted name, train/val by ``split_seed`` -> index batches drawn from a generator whose state is checkpointed (the
classification DataModule's samplers, reused) -> :meth:`DetectionDataModule.on_after_batch_transfer` makes floats
in [0, 1] and flips training images where they live. A batch is torchvision's detection format: a list of images
``[3, H_i, W_i]`` and a list of targets ``{"boxes": [K, 4] xyxy float, "labels": [K] int64, "masks": [K, H_i, W_i]
uint8}`` (no "masks" when the source has none); the detector normalizes the images itself.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from cnn_explorer.data import ResumableDataModule, ResumableLoader, ShardedBatches, ShuffledBatches
from cnn_explorer.detection.sources import DetectionSample, DetectionSource
from cnn_explorer.errors import UserError
from cnn_explorer.safe_config import buildable

Target = dict[str, torch.Tensor]


def resize_sample(sample: DetectionSample, min_size: int, max_size: int) -> DetectionSample:
    """``sample`` scaled so its shorter side is ``min_size`` px, unless that would make the longer side exceed
    ``max_size`` (then the longer side is ``max_size``), as torchvision's GeneralizedRCNNTransform scales.

    The image is resampled bilinearly with antialiasing, the masks by nearest neighbour; each box coordinate is
    multiplied by its axis' exact factor (new width / old width, new height / old height), so a box still
    bounds its object's resized pixels.
    """
    _, h, w = sample.image.shape
    scale = min(min_size / min(h, w), max_size / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return sample
    image = F.interpolate(sample.image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    factors = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
    masks = sample.masks
    if masks is not None and len(masks):
        masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0].to(torch.uint8)
    elif masks is not None:
        masks = torch.zeros(0, *size, dtype=torch.uint8)
    return replace(
        sample, image=image[0].round().clamp(0, 255).to(torch.uint8), boxes=sample.boxes * factors, masks=masks
    )


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """The image ``[C, H, W]`` mirrored left-right, with its boxes (``x1, x2 -> W - x2, W - x1``) and masks."""
    width = image.shape[-1]
    flipped = dict(target)
    boxes = target["boxes"]
    flipped["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped


def detection_split(count: int, val_size: int, test_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Indices of ``count`` name-sorted images split into (train, val, test).

    The test split is fixed by the names alone: ``test_size`` images evenly spaced through the sorted order
    (image ``floor((i + 1/2) * count / test_size)`` for ``i < test_size``), so it samples every part of a set
    stored in parts (Penn-Fudan: the Fudan then the Penn photos) and no seed can move an image into or out of
    it. Validation is ``val_size`` of the rest, drawn by a permutation from ``seed``.

    Returns:
        Sorted int64 ``[count - val_size - test_size]``, ``[val_size]``, ``[test_size]``: disjoint, covering all.

    Raises:
        ValueError: if the sizes leave no training image or are negative (val and test need at least one each).
    """
    if val_size < 1 or test_size < 1 or val_size + test_size >= count:
        raise ValueError(
            f"val_size ({val_size}) and test_size ({test_size}) must be >= 1 and leave training images of the {count}"
        )
    test = torch.tensor([math.floor((i + 0.5) * count / test_size) for i in range(test_size)])
    rest = torch.ones(count, dtype=torch.bool)
    rest[test] = False
    rest_idx = rest.nonzero().squeeze(1)
    order = torch.randperm(len(rest_idx), generator=torch.Generator().manual_seed(seed))
    val = rest_idx[order[:val_size]].sort().values
    train = rest_idx[order[val_size:]].sort().values
    return train, val, test


class DetectionBatches(Dataset):
    """A dataset indexed by whole index tensors: ``ds[idx] -> (images, targets)`` as two lists."""

    def __init__(self, images: list[torch.Tensor], targets: list[Target]) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> tuple[list[torch.Tensor], list[Target]]:
        return [self.images[i] for i in index.tolist()], [self.targets[i] for i in index.tolist()]


@buildable("data")
class DetectionDataModule(ResumableDataModule):
    """Train/val/test loaders over a :class:`~cnn_explorer.detection.sources.DetectionSource`.

    Args:
        source: where the annotated images come from.
        num_classes: object classes, background not counted (Penn-Fudan: 1); the source must have these many.
        min_size: shorter side of every image after resizing, px (320 default: one epoch of Penn-Fudan took 600 CPU-s
            on 2 shared cores, about 5 min alone; pedestrians stay 50-300 px tall).
        max_size: cap on the longer side, px.
        val_size: validation images, drawn from the non-test images by ``split_seed``.
        test_size: test images, fixed by sorted name (see :func:`detection_split`).
        split_seed: seed of the train/val split; independent of the training seed on purpose.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        hflip: random horizontal flips (boxes and masks flipped with the image).
        seed: seed of shuffling and flips (usually the run's seed).

    Raises:
        UserError: on a non-positive size, or (in setup) a source with another class count or impossible splits.
    """

    def __init__(
        self,
        source: DetectionSource,
        num_classes: int = 1,
        min_size: int = 320,
        max_size: int = 640,
        val_size: int = 20,
        test_size: int = 30,
        split_seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        for name, value in (
            ("num_classes", num_classes),
            ("min_size", min_size),
            ("max_size", max_size),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"data.{name} must be a positive whole number, got {value!r}")
        if max_size < min_size:
            raise UserError(f"data.max_size ({max_size}) must be >= data.min_size ({min_size})")
        self.source, self.num_classes = source, num_classes
        self.min_size, self.max_size = min_size, max_size
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.batch_size, self.eval_batch_size, self.hflip = batch_size, eval_batch_size, hflip
        self.classes: tuple[str, ...] = ()

    def setup(self, stage: str | None = None) -> None:
        self.seed_generator()
        if self.classes:  # already loaded: fit then test reuse the same tensors
            return
        loaded = self.source.load()
        if len(loaded.classes) != self.num_classes:
            raise UserError(
                f"the data source has {len(loaded.classes)} classes {list(loaded.classes)}, expected "
                f"data.num_classes={self.num_classes}"
            )
        samples = [resize_sample(s, self.min_size, self.max_size) for s in loaded.samples]
        try:
            splits = detection_split(len(samples), self.val_size, self.test_size, self.split_seed)
        except ValueError as err:
            raise UserError(f"data.val_size/data.test_size: {err}") from err
        for split, index in zip(("train", "val", "test"), splits, strict=True):
            chosen = [samples[i] for i in index.tolist()]
            setattr(self, f"{split}_names", [s.name for s in chosen])
            setattr(self, f"{split}_images", [s.image for s in chosen])
            setattr(self, f"{split}_targets", [self._target(s) for s in chosen])
        self.classes = loaded.classes

    @staticmethod
    def _target(sample: DetectionSample) -> Target:
        target = {"boxes": sample.boxes.float(), "labels": sample.labels}
        if sample.masks is not None:
            target["masks"] = sample.masks
        return target

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", ShuffledBatches(len(self.train_images), self.batch_size, self))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", ShardedBatches.for_trainer(len(self.val_images), self.eval_batch_size, self.trainer))

    def test_dataloader(self) -> DataLoader:
        return self._loader(
            "test", ShardedBatches.for_trainer(len(self.test_images), self.eval_batch_size, self.trainer)
        )

    def _loader(self, split: str, sampler: Sampler) -> DataLoader:
        # Lists of tensors in memory: workers would only add start-up and copies. A private generator keeps the
        # loader's seed draw off the global RNG (resuming replays the same stream), as in the classification half.
        dataset = DetectionBatches(getattr(self, f"{split}_images"), getattr(self, f"{split}_targets"))
        return ResumableLoader(dataset, batch_size=None, sampler=sampler, generator=torch.Generator())

    def prepare_batch(
        self, batch: tuple[list[torch.Tensor], list[Target]], train: bool
    ) -> tuple[list[torch.Tensor], list[Target]]:
        """uint8 images -> float in [0, 1], each flipped (with its target) with probability 1/2 if ``train``."""
        images, targets = [image.float() / 255 for image in batch[0]], list(batch[1])
        if train:
            if self.hflip:
                flips = torch.rand(len(images), generator=self.generator) < 0.5
                for i in flips.nonzero().squeeze(1).tolist():
                    images[i], targets[i] = hflip(images[i], targets[i])
            self._batches_done += 1
        return images, targets

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.prepare_batch(batch, train=self.trainer is not None and self.trainer.training)
