"""Where the images come from: torchvision's CIFAR-10, an ImageFolder copy on disk, or synthetic data.

Every source returns the official train and test images as uint8 tensors ``[N, 3, 32, 32]`` with int64
labels, decoded once. The DataModule splits and batches them; nothing here knows about Lightning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from cnn_explorer.errors import UserError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
OFFLINE_HINT = "python train.py data=cifar10_folder data.source.root=/path/to/cifar10-jpeg"


@dataclass(frozen=True)
class ImageSplits:
    """Official train and test images: uint8 ``[N, 3, H, W]``, int64 labels ``[N]``, class names."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


class ImageSource(Protocol):
    """What the DataModule needs from a source."""

    def prepare(self) -> None:
        """Download or otherwise make the data available (called once, on one process)."""

    def load(self) -> ImageSplits:
        """Return the decoded images."""


class TorchvisionCIFAR10:
    """torchvision's CIFAR-10 (the python pickle batches), downloaded into ``root`` if allowed.

    Args:
        root: folder holding (or to receive) ``cifar-10-batches-py``.
        download: fetch the archive when it is not in ``root``.
    """

    def __init__(self, root: str, download: bool = True) -> None:
        self.root = os.path.expanduser(root)
        self.download = download

    def prepare(self) -> None:
        self._dataset(train=True)
        self._dataset(train=False)

    def load(self) -> ImageSplits:
        train, test = self._dataset(train=True), self._dataset(train=False)
        return ImageSplits(
            train_images=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),  # NHWC -> NCHW
            train_labels=torch.tensor(train.targets, dtype=torch.int64),
            test_images=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
            test_labels=torch.tensor(test.targets, dtype=torch.int64),
            classes=tuple(train.classes),
        )

    def _dataset(self, train: bool):  # -> torchvision.datasets.CIFAR10
        from torchvision.datasets import CIFAR10

        try:
            return CIFAR10(self.root, train=train, download=self.download)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ... here
            how = "could not be downloaded" if self.download else "is not there and data.source.download=false"
            raise UserError(
                f"CIFAR-10 is not in {Path(self.root).resolve()} and {how} ({type(err).__name__}: {err}). "
                f"Offline, train on a copy in the ImageFolder layout (train/<class>/*.jpg, test/<class>/*.jpg): "
                f"{OFFLINE_HINT}"
            ) from err


class ImageFolderCIFAR10:
    """CIFAR-10 stored as ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``.

    Class indices follow the sorted folder names (which is CIFAR-10's label order). The decoded tensors are
    cached in ``cache_dir`` under a key made of the root path and every file's name, size and mtime, so a
    second run loads them in a fraction of a second and a changed copy is decoded again.

    Args:
        root: the folder with ``train/`` and ``test/``.
        cache_dir: where to keep decoded tensors; ``None`` decodes every time.
        num_classes: the number of class folders expected.
        image_size: expected height and width of every image.
    """

    def __init__(self, root: str, cache_dir: str | None = None, num_classes: int = 10, image_size: int = 32) -> None:
        self.root = Path(os.path.expanduser(root))
        self.cache_dir = Path(os.path.expanduser(cache_dir)) if cache_dir else None
        self.num_classes = num_classes
        self.image_size = image_size

    def prepare(self) -> None:
        self.load()

    def load(self) -> ImageSplits:
        files = {split: self._list(split) for split in ("train", "test")}
        classes = tuple(sorted({path.parent.name for path, _ in files["train"]}))
        cache = self._cache_path(files)
        if cache is not None and cache.is_file():
            try:
                return ImageSplits(**torch.load(cache, weights_only=True))
            except Exception as err:  # a truncated or foreign cache file is rebuilt, never trusted
                log.warning("ignoring unreadable cache %s (%s); decoding again", cache, err)
        log.info("decoding %d images from %s (cached afterwards)", sum(map(len, files.values())), self.root)
        train_images, train_labels = self._decode(files["train"])
        test_images, test_labels = self._decode(files["test"])
        splits = ImageSplits(train_images, train_labels, test_images, test_labels, classes)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")
            torch.save(splits.__dict__, partial)
            partial.replace(cache)  # atomic: a crashed run never leaves half a cache
        return splits

    def _list(self, split: str) -> list[tuple[Path, int]]:
        """(path, label) for every image of ``split``, in sorted order."""
        folder = self.root / split
        if not folder.is_dir():
            raise UserError(
                f"{self.root.resolve()} is not a CIFAR-10 ImageFolder copy: it has no '{split}/' folder. "
                f"Expected {self.root}/train/<class>/*.jpg and {self.root}/test/<class>/*.jpg; "
                f"set data.source.root to such a folder."
            )
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if len(class_dirs) != self.num_classes:
            raise UserError(
                f"{folder.resolve()} has {len(class_dirs)} class folders ({', '.join(p.name for p in class_dirs)}); "
                f"expected {self.num_classes}. Point data.source.root at a CIFAR-10 copy with one folder per class."
            )
        files = [
            (path, label)
            for label, class_dir in enumerate(class_dirs)
            for path in sorted(class_dir.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not files:
            raise UserError(f"{folder.resolve()} has class folders but no .jpg/.png images in them.")
        return files

    def _cache_path(self, files: dict[str, list[tuple[Path, int]]]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(str(self.root.resolve()).encode())
        for split, entries in files.items():
            for path, label in entries:
                stat = path.stat()
                key.update(f"{split}/{label}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return self.cache_dir / f"imagefolder-{key.hexdigest()[:20]}.pt"

    def _decode(self, entries: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        # PIL releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            arrays = list(pool.map(_read_rgb, (path for path, _ in entries)))
        for array, (path, _) in zip(arrays, entries, strict=True):
            if array.shape[:2] != (self.image_size, self.image_size):
                raise UserError(
                    f"{path} is {array.shape[1]}x{array.shape[0]}, expected {self.image_size}x{self.image_size}: "
                    f"this is not a CIFAR-10 copy."
                )
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images, torch.tensor([label for _, label in entries], dtype=torch.int64)


def _read_rgb(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` pixels of one image file."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class SyntheticImages:
    """Small learnable data for tests and smoke runs: each class is a fixed coarse colour pattern plus noise.

    A class template is a random 4x4 RGB pattern blown up to the image size; an image is
    ``signal * template + (1 - signal) * uniform noise``. Cropping shifts by up to a few pixels keep the
    pattern recognizable, so a small CNN learns it in an epoch, while the noise keeps it from being trivial.

    Args:
        train_size: number of "official training" images (the DataModule splits off validation from these).
        test_size: number of test images.
        num_classes: number of classes (names ``class0``, ``class1``, ...).
        signal: weight of the class template in [0, 1].
        seed: seed of the templates and the noise; the data do not depend on the training seed.
        image_size: height and width.
    """

    def __init__(
        self,
        train_size: int = 2000,
        test_size: int = 500,
        num_classes: int = 10,
        signal: float = 0.5,
        seed: int = 0,
        image_size: int = 32,
    ) -> None:
        if min(train_size, test_size) < num_classes:
            raise UserError(f"synthetic data needs at least one image per class, got {train_size=} {test_size=}")
        self.train_size, self.test_size = train_size, test_size
        self.num_classes, self.signal, self.seed, self.image_size = num_classes, signal, seed, image_size

    def prepare(self) -> None:
        pass

    def load(self) -> ImageSplits:
        generator = torch.Generator().manual_seed(self.seed)
        templates = torch.rand(self.num_classes, 3, 4, 4, generator=generator)
        templates = templates.repeat_interleave(self.image_size // 4, 2).repeat_interleave(self.image_size // 4, 3)
        train_images, train_labels = self._sample(templates, self.train_size, generator)
        test_images, test_labels = self._sample(templates, self.test_size, generator)
        classes = tuple(f"class{i}" for i in range(self.num_classes))
        return ImageSplits(train_images, train_labels, test_images, test_labels, classes)

    def _sample(self, templates: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % self.num_classes  # balanced classes
        noise = torch.rand(n, 3, self.image_size, self.image_size, generator=generator)
        images = self.signal * templates[labels] + (1 - self.signal) * noise
        return (images * 255).round().to(torch.uint8), labels
