"""The LightningDataModule of an image classification dataset (CIFAR-10 by default): a fixed stratified
train/val split, in-memory uint8 batches, augmentation and normalization per batch on the training device.

Data path, once per run: a source decodes the official training and test images (CIFAR-10: 50k and 10k)
into uint8 tensors -> a class-stratified split seeded by ``split_seed`` (not the training seed, so every
run and every model of a sweep sees the same validation images) -> index batches drawn from a generator
whose state is checkpointed -> :meth:`ImageClassificationDataModule.on_after_batch_transfer` crops, flips
and normalizes the batch where it lives (GPU or CPU). The probe set, the few validation images every view
shows, is made once per run by :meth:`ImageClassificationDataModule.probe_set`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cnn_explorer.augment import (
    AUGMENTATIONS,
    center_crop_resize,
    normalize,
    random_crop_flip,
    random_resized_crop_flip,
)
from cnn_explorer.errors import UserError, check_positive
from cnn_explorer.safe_config import buildable
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


class ResumableLoader(DataLoader):
    """A DataLoader Lightning treats as resumable mid-epoch. Its position lives in the DataModule's state (the
    generator and the batches done, see :meth:`ResumableDataModule.state_dict`), which Lightning
    checkpoints and restores; the loader itself has nothing more to save."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def first_per_class(labels: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """Indices of the first ``per_class`` entries of each class in ``labels`` ``[N]``, ordered by class.

    A fixed, stratified choice: the same images for every run on the same data, every class represented even
    when the split is stored class by class (an ImageFolder test set is).
    """
    picks = [(labels == cls).nonzero().squeeze(1)[:per_class] for cls in range(num_classes)]
    return torch.cat(picks)


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
    """Yields index tensors of ``batch_size`` in order (the base of the training sampler, which Lightning splits
    across DDP ranks)."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from torch.arange(self.n).split(self.batch_size)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class ShardedBatches(DistributedSampler):
    """Evaluation batches (validation and test): this rank's contiguous share of ``n`` images, in order, in index
    tensors of at most ``batch_size``.

    Rank ``r`` of ``world_size`` gets images ``n * r // world_size`` up to ``n * (r + 1) // world_size``: the
    shares are disjoint, cover every image once and differ by at most one image, so summing the ranks' counts
    (torchmetrics and ``self.log(..., sync_dist=True)`` do) gives exactly the single-process figures. Lightning's
    own DDP sampler pads the ranks to equal batch counts with repeated batches instead, and counts those twice
    (3 test batches on 2 ranks: 699 images of 499); a ``DistributedSampler`` is left as it is by Lightning.
    The ranks may run different numbers of batches, which evaluation allows (its only collectives are at the
    loop's end), but each must run one: ``n >= world_size``.

    Args:
        n: images in the split.
        batch_size: the most images per batch.
        rank: this process's global rank.
        world_size: the processes evaluating (DDP: devices times nodes).

    Raises:
        UserError: if there are fewer images than processes.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if n < world_size:
            raise UserError(
                f"an evaluation split has {n} images for {world_size} processes, which need one each at least: "
                f"use fewer devices or a larger split (data.val_size, the test set)"
            )
        # rank and num_replicas given, so nothing asks torch.distributed; shuffle=False: the order is the split's.
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False)
        self.n, self.batch_size = n, batch_size
        self.start, self.stop = n * rank // world_size, n * (rank + 1) // world_size

    @classmethod
    def for_trainer(cls, n: int, batch_size: int, trainer: L.Trainer | None) -> ShardedBatches:
        """This process's share under ``trainer`` (its global rank of its world size); all ``n`` without one."""
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return cls(n, batch_size, rank, world_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from torch.arange(self.start, self.stop).split(self.batch_size)

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)


class ShuffledBatches(IndexBatches):
    """Yields index tensors of ``batch_size`` from a fresh permutation each epoch, drawn from the DataModule's
    generator; after a mid-epoch checkpoint, the rest of that epoch's permutation (see
    :meth:`ResumableDataModule.state_dict`)."""

    def __init__(self, n: int, batch_size: int, datamodule: ResumableDataModule) -> None:
        super().__init__(n, batch_size)
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[torch.Tensor]:
        dm = self.datamodule
        start, done = dm.begin_epoch(len(self))
        order = torch.randperm(self.n, generator=torch.Generator().set_state(start)) if done else None
        if order is None:  # a new epoch: the permutation advances the shared generator, as it always did
            order = torch.randperm(self.n, generator=dm.generator)
        yield from order.split(self.batch_size)[done:]


@dataclass(frozen=True)
class ProbeSet:
    """The probe set: the first ``per_class`` validation images of each class, the images every view shows.

    Fixed by the split (``split_seed``), not by the training seed, so every run of a sweep is shown the same
    images. Made once per run; the network's input is made once too, on the device the data live on.

    Attributes:
        images: uint8 ``[K, C, H, W]`` on the CPU, as stored: what a person is shown.
        inputs: float ``[K, C, H, W]``, normalized: what the network is given; on the data's device.
        labels: int64 ``[K]`` on the CPU, ordered by class.
    """

    images: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor


class ResumableDataModule(L.LightningDataModule):
    """A DataModule whose training batches come from :class:`ShuffledBatches` and whose augmentation draws from the
    same generator: that generator, and where in the epoch training stands, are in every checkpoint
    (:meth:`state_dict`), so a run resumed mid-epoch shuffles and augments exactly as an uninterrupted one.

    Subclasses call :meth:`seed_generator` in ``setup`` and count each augmented training batch in
    ``_batches_done``.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        # Made in setup(), not here: ddp_spawn pickles the DataModule, and a torch.Generator cannot be pickled.
        self.generator: torch.Generator | None = None
        # Where the training epoch stands, for mid-epoch checkpoints: the generator's state before this epoch's
        # permutation, and the batches augmented since (prepare_batch counts them: Lightning prefetches a batch
        # before the previous one is trained on, so the sampler's count would run one ahead).
        self._epoch_start: torch.Tensor | None = None
        self._batches_done = 0
        self._resume: tuple[torch.Tensor, int] | None = None

    def seed_generator(self) -> None:
        """Make the generator from ``seed``, once (a restored one is kept)."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def begin_epoch(self, batches: int) -> tuple[torch.Tensor, int]:
        """Called by the training sampler as an epoch's iteration starts: returns the generator state its permutation
        starts from and the batches already trained (0, or where a mid-epoch checkpoint left off)."""
        resume, self._resume = self._resume, None
        if resume is not None and 0 < resume[1] < self._epoch_length(batches):
            self._epoch_start, self._batches_done = resume
        else:
            self._epoch_start, self._batches_done = self.generator.get_state(), 0
        return self._epoch_start, self._batches_done

    def _epoch_length(self, batches: int) -> int:
        """The batches Lightning trains per epoch: the sampler's ``batches``, or fewer under
        ``trainer.limit_train_batches``. A checkpoint that has done that many was taken at the epoch's end, and the
        next epoch draws a new permutation, as an uninterrupted run does, rather than the old one's rest."""
        limit = self.trainer.num_training_batches if self.trainer is not None else batches
        return min(batches, limit) if isinstance(limit, int) else batches

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint, so a resumed run shuffles and augments exactly as an uninterrupted one: the
        generator, and for a checkpoint taken mid-epoch (on SIGTERM) where in the epoch's permutation it was."""
        if self.generator is None:
            return {}
        state = {"generator": self.generator.get_state(), "batches_done": self._batches_done}
        if self._epoch_start is not None:
            state["epoch_start"] = self._epoch_start
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state_dict["generator"])
        if "epoch_start" in state_dict:
            self._resume = (state_dict["epoch_start"], int(state_dict.get("batches_done", 0)))


@buildable("data", "cnn_explorer.data.CIFAR10DataModule")  # its name before a rename
class ImageClassificationDataModule(ResumableDataModule):
    """Train/val/test loaders over any :class:`~cnn_explorer.sources.ImageSource` (CIFAR-10, an ImageFolder
    dataset, synthetic images), with the image format stated once: size, channels, normalization.

    Args:
        source: where the official train and test images come from.
        num_classes: expected number of classes; the source must have exactly these.
        image_size: height and width of the images the net sees (square).
        load_size: height and width of the source's images, when larger than ``image_size`` (``None``: the same):
            training crops are cut from these (``augment: resized_crop_flip`` only), and the validation and test
            images are resized to ``image_size`` once, in setup (with ``eval_crop``), so a crop is never upsampled
            from an already shrunk image.
        channels: expected colour channels of every image (1 grayscale or 3 RGB).
        val_size: validation images split off the official training set (stratified).
        split_seed: seed of the split; independent of the training seed on purpose.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        crop_padding: zero padding of the random crop (0 disables it); ``augment: crop_flip`` only.
        hflip: random horizontal flips.
        augment: the training augmentation, on whole batches: ``crop_flip`` (pad, crop back to the image size:
            CIFAR's) or ``resized_crop_flip`` (a random box of ``crop_scale`` of the image's area, aspect 3/4 to
            4/3, resized to the image size: ImageNet's; see :func:`~cnn_explorer.augment.random_resized_crop_flip`).
        crop_scale: (min, max) fraction of the image each ``resized_crop_flip`` box covers.
        eval_crop: evaluation images are the centred ``eval_crop`` of their side, resized to ``image_size``
            (:func:`~cnn_explorer.augment.center_crop_resize`); 1 keeps the whole image. Done once, in setup, so
            every view shows the pixels the net is evaluated on.
        mean: per-channel mean used for normalization (of images in [0, 1]); ``channels`` values.
        std: per-channel standard deviation used for normalization; ``channels`` values.
        seed: seed of shuffling and augmentation (usually the run's seed).
        on_device: keep the uint8 images on the training device (a no-op on the CPU); batches are then
            gathered there with no host-to-device copy.
        random_labels_seed: if set, the training and the validation labels are each randomly permuted with this
            seed (class counts kept; test labels unchanged): the model can only memorize. The data randomization
            test of Adebayo et al. (2018), "Sanity Checks for Saliency Maps", compares its maps with a model
            trained on the true labels (``analyze.py RUN --random-labels-run THIS_RUN``).

    Raises:
        UserError: on a non-positive batch size, an unknown augmentation or crop scale, a load size below the
            image size or with an augmentation that does not resize, an evaluation crop outside (0, 1], mean/std
            that do not have one value per channel, or (in setup) a source with the wrong class count, image size
            or channels, or an impossible validation size.

    Example::

        dm = ImageClassificationDataModule(ImageFolderSource("~/data/my-dataset"), num_classes=5, image_size=64)
        trainer.fit(module, datamodule=dm)
    """

    def __init__(
        self,
        source: ImageSource,
        num_classes: int = 10,
        image_size: int = 32,
        channels: int = 3,
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        crop_padding: int = 4,
        hflip: bool = True,
        augment: str = "crop_flip",
        crop_scale: Sequence[float] = (0.35, 1.0),
        load_size: int | None = None,
        eval_crop: float = 1.0,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        seed: int = 0,
        on_device: bool = True,
        random_labels_seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"data.{name} must be a positive number of images, got {value!r}")
        if crop_padding < 0:
            raise UserError(f"data.crop_padding must be >= 0 (0 disables cropping), got {crop_padding}")
        if augment not in AUGMENTATIONS:
            raise UserError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise UserError(f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(crop_scale)}")
        load_size = image_size if load_size is None else load_size
        if load_size < image_size:
            raise UserError(f"data.load_size ({load_size}) must be >= data.image_size ({image_size}), or null")
        if load_size != image_size and augment != "resized_crop_flip":
            raise UserError(
                f"data.load_size={load_size} with data.image_size={image_size} needs data.augment=resized_crop_flip "
                f"(training crops resized to the image size); {augment} keeps the loaded size"
            )
        if not 0 < eval_crop <= 1:
            raise UserError(f"data.eval_crop must be in (0, 1] (1: the whole image), got {eval_crop!r}")
        if channels not in (1, 3):
            raise UserError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != channels:
                raise UserError(
                    f"data.{name} needs one value per channel (data.channels={channels}), got {list(values)}"
                )
        if any(v <= 0 for v in std):
            raise UserError(f"data.std values must be positive, got {list(std)}")
        self.source = source
        self.num_classes, self.image_size, self.channels = num_classes, image_size, channels
        self.val_size, self.split_seed = val_size, split_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop_padding, self.hflip = crop_padding, hflip
        self.augment, self.crop_scale = augment, (float(crop_scale[0]), float(crop_scale[1]))
        self.load_size, self.eval_crop = load_size, float(eval_crop)
        self.mean, self.std = tuple(mean), tuple(std)
        self.on_device = on_device
        self.random_labels_seed = random_labels_seed
        self.classes: tuple[str, ...] = ()
        self._probe_sets: dict[int, ProbeSet] = {}

    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.seed_generator()
        if self.classes:  # already loaded: fit then test reuse the same tensors
            return
        splits = self.source.load()
        if len(splits.classes) != self.num_classes:
            raise UserError(
                f"the data source has {len(splits.classes)} classes, expected data.num_classes={self.num_classes}"
            )
        shape = tuple(splits.train_images.shape[1:])
        if shape != (self.channels, self.load_size, self.load_size):
            size_key = "data.load_size" if self.load_size != self.image_size else "data.image_size"
            raise UserError(
                f"the data source's images are {shape[0]} x {shape[1]} x {shape[2]} (channels x height x width); "
                f"the data config says data.channels={self.channels}, {size_key}={self.load_size}. "
                f"Set those two keys to the images' format."
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
            self.eval_view(splits.train_images[val_idx]).to(device),
            splits.train_labels[val_idx].to(device),
        )
        self.test_images = self.eval_view(splits.test_images).to(device)
        self.test_labels = splits.test_labels.to(device)
        if self.random_labels_seed is not None:
            # After the split, so the images of each split are the true-label run's; a CPU generator, so any device
            # gives the same permutation.
            permute = torch.Generator().manual_seed(self.random_labels_seed)
            for split in ("train", "val"):
                labels = getattr(self, f"{split}_labels")
                setattr(self, f"{split}_labels", labels[torch.randperm(len(labels), generator=permute).to(device)])
        self.classes = splits.classes

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, load_size, load_size]`` -> ``[N, C, image_size, image_size]`` as evaluated: the centred
        ``eval_crop`` of each image resized to ``image_size`` (the images themselves when neither applies)."""
        return center_crop_resize(images, self.eval_crop, self.image_size)

    def _device(self) -> torch.device:
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def train_dataloader(self) -> DataLoader:
        sampler = ShuffledBatches(len(self.train_labels), self.batch_size, self)
        return self._loader(self.train_images, self.train_labels, sampler)

    # Under DDP each rank evaluates its own share of the images, every image once (see ShardedBatches).
    def val_dataloader(self) -> DataLoader:
        sampler = ShardedBatches.for_trainer(len(self.val_labels), self.eval_batch_size, self.trainer)
        return self._loader(self.val_images, self.val_labels, sampler)

    def test_dataloader(self) -> DataLoader:
        sampler = ShardedBatches.for_trainer(len(self.test_labels), self.eval_batch_size, self.trainer)
        return self._loader(self.test_images, self.test_labels, sampler)

    def _loader(self, images: torch.Tensor, labels: torch.Tensor, sampler: torch.utils.data.Sampler) -> DataLoader:
        # The images are already in memory: worker processes would only add start-up and copies.
        # DataLoader draws a worker base seed from its own generator each epoch; a private one keeps that
        # draw off the global RNG, so resuming from a checkpoint replays the same random stream.
        return ResumableLoader(
            TensorBatches(images, labels), batch_size=None, sampler=sampler, generator=torch.Generator()
        )

    def prepare_batch(self, batch: tuple[torch.Tensor, torch.Tensor], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> (augmented if ``train``) normalized float32; labels unchanged."""
        images, labels = batch
        if train:
            if self.augment == "resized_crop_flip":
                images = random_resized_crop_flip(images, self.image_size, self.hflip, self.crop_scale, self.generator)
            else:
                images = random_crop_flip(images, self.crop_padding, self.hflip, self.generator)
            self._batches_done += 1
        return normalize(images, self.mean, self.std), labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.prepare_batch(batch, train=self.trainer is not None and self.trainer.training)

    def eval_batches(
        self, split: str, limit: int | None = None, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """A split's images as the network sees them in evaluation (normalized, not augmented), in batches of
        ``eval_batch_size``: ``(inputs [B, C, H, W], labels [B], indices into the split [B])``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"`` (after :meth:`setup`).
            limit: at most this many images, a random subset drawn with ``seed`` (the whole split if None).
        """
        images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
        index = torch.arange(len(labels))
        if limit is not None and limit < len(labels):
            index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        for part in index.split(self.eval_batch_size):
            batch_images = images[part.to(images.device)]
            if split == "train":  # val and test were made evaluation views in setup
                batch_images = self.eval_view(batch_images)
            inputs, batch_labels = self.prepare_batch((batch_images, labels[part.to(labels.device)]), False)
            yield inputs, batch_labels, part

    def probe_set(self, per_class: int = 1) -> ProbeSet:
        """The :class:`ProbeSet` of the first ``per_class`` validation images of each class (after :meth:`setup`).

        ``K <= per_class * num_classes`` images (fewer if a class has fewer validation images); made on the
        first call and kept, so every view of every epoch uses the same tensors.
        """
        check_positive(per_class=per_class)
        if per_class not in self._probe_sets:
            index = first_per_class(self.val_labels, per_class, self.num_classes)
            images, labels = self.val_images[index], self.val_labels[index]
            inputs, _ = self.prepare_batch((images, labels), train=False)
            self._probe_sets[per_class] = ProbeSet(images.cpu(), inputs, labels.cpu())
        return self._probe_sets[per_class]
