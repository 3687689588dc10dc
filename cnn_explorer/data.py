"""The CIFAR-10 LightningDataModule: a fixed stratified train/val split, in-memory uint8 batches,
augmentation and normalization per batch on the training device.

Data path, once per run: a source decodes the 50k official training and 10k test images into uint8
tensors -> a class-stratified split seeded by ``split_seed`` (not the training seed, so every run and
every model of a sweep sees the same validation images) -> index batches drawn from a generator whose
state is checkpointed -> :meth:`CIFAR10DataModule.on_after_batch_transfer` crops, flips and normalizes
the batch where it lives (GPU or CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cnn_explorer.augment import normalize, random_crop_flip
from cnn_explorer.errors import UserError
from cnn_explorer.sources import ImageSource


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of ``labels`` into (train, val) with class proportions kept in val.

    Each class gives ``val_size * class_count / N`` validation images (largest remainders get the
    rounding), chosen by a permutation from ``seed`` alone.

    Args:
        labels: int64 ``[N]``.
        val_size: number of validation indices, ``0 < val_size < N``.
        seed: split seed.

    Returns:
        Sorted int64 index tensors ``[N - val_size]`` and ``[val_size]``, disjoint, covering ``0..N-1``.

    Raises:
        ValueError: if ``val_size`` is not in ``(0, N)``.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (the training images), got {val_size}")
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    # Hand the leftover images to the classes with the largest fractional parts.
    leftover = val_size - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:leftover]] += 1
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for cls, k in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == cls).nonzero().squeeze(1)
        val_parts.append(members[torch.randperm(len(members), generator=generator)[:k]])
    val = torch.cat(val_parts).sort().values
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return (~is_val).nonzero().squeeze(1), val


class TensorBatches(torch.utils.data.Dataset):
    """A dataset indexed by whole index tensors: ``ds[idx] -> (images[idx], labels[idx])``.

    Used with ``DataLoader(batch_size=None, sampler=IndexBatches(...))`` so a batch is one gather, not
    ``batch_size`` ``__getitem__`` calls and a collate.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class IndexBatches(torch.utils.data.Sampler):
    """Yields index tensors of ``batch_size``: a fresh permutation from ``generator`` each pass, or in order."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None = None) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator) if self.generator is not None else torch.arange(self.n)
        yield from order.split(self.batch_size)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 (or any :class:`~cnn_explorer.sources.ImageSource`) as train/val/test loaders.

    Args:
        source: where the official train and test images come from.
        num_classes: expected number of classes; the source must have exactly these.
        val_size: validation images split off the official training set (stratified).
        split_seed: seed of the split; independent of the training seed on purpose.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        crop_padding: zero padding of the random crop (0 disables it).
        hflip: random horizontal flips.
        mean: per-channel mean used for normalization (of images in [0, 1]).
        std: per-channel standard deviation used for normalization.
        seed: seed of shuffling and augmentation (usually the run's seed).
        on_device: keep the uint8 images on the training device (a no-op on the CPU); batches are then
            gathered there with no host-to-device copy.

    Raises:
        UserError: on a non-positive batch size, or (in setup) a source with the wrong class count or an
            impossible validation size.

    Example::

        dm = CIFAR10DataModule(ImageFolderCIFAR10("../shared/data/cifar10-jpeg"))
        trainer.fit(module, datamodule=dm)
    """

    def __init__(
        self,
        source: ImageSource,
        num_classes: int = 10,
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        crop_padding: int = 4,
        hflip: bool = True,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        seed: int = 0,
        on_device: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value <= 0:
                raise UserError(f"data.{name} must be a positive number of images, got {value}")
        if crop_padding < 0:
            raise UserError(f"data.crop_padding must be >= 0 (0 disables cropping), got {crop_padding}")
        self.source = source
        self.num_classes, self.val_size, self.split_seed = num_classes, val_size, split_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop_padding, self.hflip = crop_padding, hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.on_device = on_device
        self.generator = torch.Generator().manual_seed(seed)
        self.classes: tuple[str, ...] = ()

    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.classes:  # already loaded: fit then test reuse the same tensors
            return
        splits = self.source.load()
        if len(splits.classes) != self.num_classes:
            raise UserError(
                f"the data source has {len(splits.classes)} classes, expected data.num_classes={self.num_classes}"
            )
        try:
            train_idx, val_idx = stratified_split(splits.train_labels, self.val_size, self.split_seed)
        except ValueError as err:
            raise UserError(f"data.val_size: {err}") from err
        device = self._device()
        self.train_images, self.train_labels = (
            splits.train_images[train_idx].to(device),
            splits.train_labels[train_idx].to(device),
        )
        self.val_images, self.val_labels = (
            splits.train_images[val_idx].to(device),
            splits.train_labels[val_idx].to(device),
        )
        self.test_images, self.test_labels = splits.test_images.to(device), splits.test_labels.to(device)
        self.classes = splits.classes

    def _device(self) -> torch.device:
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_images, self.train_labels, self.batch_size, self.generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_images, self.val_labels, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_images, self.test_labels, self.eval_batch_size)

    def _loader(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
    ) -> DataLoader:
        # The images are already in memory: worker processes would only add start-up and copies.
        # DataLoader draws a worker base seed from its own generator each epoch; a private one keeps that
        # draw off the global RNG, so resuming from a checkpoint replays the same random stream.
        return DataLoader(
            TensorBatches(images, labels),
            batch_size=None,
            sampler=IndexBatches(len(labels), batch_size, generator),
            generator=torch.Generator(),
        )

    def prepare_batch(self, batch: tuple[torch.Tensor, torch.Tensor], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> (augmented if ``train``) normalized float32; labels unchanged."""
        images, labels = batch
        if train:
            images = random_crop_flip(images, self.crop_padding, self.hflip, self.generator)
        return normalize(images, self.mean, self.std), labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.prepare_batch(batch, train=self.trainer is not None and self.trainer.training)

    def probe(self, per_class: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``per_class`` validation images of each class, ordered by class.

        Deterministic given the split, so every run of a sweep is shown the same images.

        Returns:
            uint8 images ``[K, 3, H, W]`` and int64 labels ``[K]`` on the CPU, ``K <= per_class * num_classes``.
        """
        picks = [(self.val_labels == cls).nonzero().squeeze(1)[:per_class] for cls in range(self.num_classes)]
        index = torch.cat(picks)
        return self.val_images[index].cpu(), self.val_labels[index].cpu()

    def normalized_probe(self, per_class: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`probe` plus the network's input for it: (uint8 images, normalized float images, labels)."""
        images, labels = self.probe(per_class)
        return images, self.prepare_batch((images, labels), train=False)[0], labels

    def state_dict(self) -> dict[str, Any]:
        # Saved in every checkpoint, so a resumed run shuffles and augments exactly as an uninterrupted one.
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
