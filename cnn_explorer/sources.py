"""Where the images come from: torchvision's CIFAR-10, any ImageFolder dataset on disk, or synthetic data.

Every source returns the official train and test images as uint8 tensors ``[N, C, H, W]`` with int64
labels, decoded once. The DataModule splits and batches them; nothing here knows about Lightning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from cnn_explorer.errors import UserError
from cnn_explorer.safe_config import buildable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
OFFLINE_HINT = "python train.py data=cifar10_folder data.source.root=/path/to/cifar10-jpeg"

IMAGENETTE_IMAGENET_INDEX: dict[str, int] = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}
"""Imagenette's class folders (WordNet ids, sorted = Imagenette's label order) -> their ImageNet-1k class index:
``list(IMAGENETTE_IMAGENET_INDEX.values())`` picks, in label order, the ten logits of an ImageNet-pretrained
model that answer for Imagenette's ten classes (conf/data/imagenette.yaml gives their display names)."""


@dataclass(frozen=True)
class ImageSplits:
    """Official train and test images: uint8 ``[N, C, H, W]``, int64 labels ``[N]``, class names."""

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


@buildable("data")
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


@buildable("data", "cnn_explorer.sources.ImageFolderCIFAR10")  # its name before a rename
class ImageFolderSource:
    """An image classification dataset stored as ``root/train/<class>/*.jpg`` and ``root/<test_split>/<class>/*.jpg``
    (CIFAR-10's JPEG copy, Imagenette, or any other dataset laid out the same way; .jpg, .jpeg and .png files).

    Class indices follow the sorted folder names (which is CIFAR-10's and Imagenette's label order); hidden folders
    and files (names starting with ``.``) are left out. The classes are shown by their folder names, or by the names
    ``class_names`` gives the folders (Imagenette's folders are WordNet ids: ``n01440764`` is shown as ``tench``).

    Images are decoded straight into one preallocated uint8 tensor per split, so loading peaks at about the size of
    the decoded data (``N * C * image_size**2`` bytes), not twice that. With ``resize``, each image is resized once
    to ``image_size`` x ``image_size`` (PIL's bicubic, antialiased when shrinking); without it, an image of another
    size is an error. The decoded tensors are cached in ``cache_dir`` under a key made of the root path, the
    channels, the size when resizing, and every file's name, size and mtime, so a second run loads them in a
    fraction of a second and a changed copy is decoded again.

    Args:
        root: the folder with ``train/`` and the test folder.
        cache_dir: where to keep decoded tensors; ``None`` decodes every time.
        num_classes: the number of class folders expected.
        image_size: height and width of every image: expected, or made by ``resize``.
        channels: 3 decodes as RGB, 1 as grayscale (PIL's "L").
        test_split: the name of the test folder (``test``; Imagenette's is ``val``). The validation set is split
            off ``train/`` by the DataModule.
        resize: resize every image to ``image_size`` instead of requiring that size.
        class_names: display name of each class folder, ``{folder: name}``, one entry per folder; ``None``
            shows the folder names.

    Raises:
        UserError: on channels other than 1 or 3, or a test folder named ``train``.
    """

    def __init__(
        self,
        root: str,
        cache_dir: str | None = None,
        num_classes: int = 10,
        image_size: int = 32,
        channels: int = 3,
        test_split: str = "test",
        resize: bool = False,
        class_names: Mapping[str, str] | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise UserError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if test_split == "train" or not test_split:
            raise UserError(
                f"data.source.test_split={test_split!r} must name the test folder beside train/ (e.g. test or val)"
            )
        self.root = Path(os.path.expanduser(root))
        self.cache_dir = Path(os.path.expanduser(cache_dir)) if cache_dir else None
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.test_split = test_split
        self.resize = resize
        self.class_names = {str(k): str(v) for k, v in class_names.items()} if class_names is not None else None

    def prepare(self) -> None:
        self.load()

    def load(self) -> ImageSplits:
        files = {"train": self._list("train"), "test": self._list(self.test_split)}
        classes = self._display_names(tuple(sorted({path.parent.name for path, _ in files["train"]})))
        cache = self._cache_path(files)
        if cache is not None and cache.is_file():
            try:
                # The names come from the config, not the cache: renaming a class needs no new decode.
                return ImageSplits(**{**torch.load(cache, weights_only=True), "classes": classes})
            except Exception as err:  # a truncated or foreign cache file is rebuilt, never trusted
                log.warning("ignoring unreadable cache %s (%s); decoding again", cache, err)
        log.info("decoding %d images from %s (cached afterwards)", sum(map(len, files.values())), self.root)
        train_images, train_labels = self._decode(files["train"])
        test_images, test_labels = self._decode(files["test"])
        splits = ImageSplits(train_images, train_labels, test_images, test_labels, classes)
        if cache is not None:
            self._write_cache(cache, splits)
        return splits

    def _display_names(self, folders: tuple[str, ...]) -> tuple[str, ...]:
        """The classes' names as shown: ``class_names[folder]``, or the folder names when none are given."""
        if self.class_names is None:
            return folders
        missing = [f for f in folders if f not in self.class_names]
        unknown = [f for f in self.class_names if f not in folders]
        if missing or unknown:
            raise UserError(
                f"data.source.class_names must name every class folder of {self.root / 'train'} once: "
                f"{'no name for ' + ', '.join(missing) if missing else ''}"
                f"{'; ' if missing and unknown else ''}"
                f"{'no folder ' + ', '.join(unknown) if unknown else ''}. "
                f"Fix the mapping, or set data.source.class_names=null to show the folder names."
            )
        return tuple(self.class_names[f] for f in folders)

    def _write_cache(self, cache: Path, splits: ImageSplits) -> None:
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise UserError(
                f"data.source.cache_dir={self.cache_dir} is a file, not a folder; point it at a folder "
                f"(it is created if missing), or set data.source.cache_dir=null to decode every run."
            )
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(splits.__dict__, partial)
        partial.replace(cache)  # atomic: a crashed run never leaves half a cache

    def _list(self, split: str) -> list[tuple[Path, int]]:
        """(path, label) for every image of ``split``, in sorted order."""
        folder = self.root / split
        if not folder.is_dir():
            raise UserError(
                f"{self.root.resolve()} is not an ImageFolder dataset: it has no '{split}/' folder. "
                f"Expected {self.root}/train/<class>/*.jpg and {self.root}/{self.test_split}/<class>/*.jpg; "
                f"set data.source.root to such a folder (and data.source.test_split to its test folder's name)."
            )
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))
        if len(class_dirs) != self.num_classes:
            raise UserError(
                f"{folder.resolve()} has {len(class_dirs)} class folders ({', '.join(p.name for p in class_dirs)}); "
                f"expected {self.num_classes} (data.num_classes). Point data.source.root at a dataset with one "
                f"folder per class, or set data.num_classes."
            )
        files = []
        for label, class_dir in enumerate(class_dirs):
            images = [p for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p)]
            if not images:
                raise UserError(
                    f"{class_dir.resolve()} holds no .jpg/.jpeg/.png image: every class folder of {split}/ needs "
                    f"images. Add them, or remove the folder and set data.num_classes to the remaining classes."
                )
            files += [(path, label) for path in images]
        return files

    def _cache_path(self, files: dict[str, list[tuple[Path, int]]]) -> Path | None:
        if self.cache_dir is None:
            return None
        # The size enters the key only when resizing, so caches made before the option existed stay valid.
        resized = f"|resize{self.image_size}" if self.resize else ""
        key = hashlib.sha256(f"{self.root.resolve()}|{self.channels}{resized}".encode())
        for split, entries in files.items():
            for path, label in entries:
                stat = path.stat()
                key.update(f"{split}/{label}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return self.cache_dir / f"imagefolder-{key.hexdigest()[:20]}.pt"

    def _decode(self, entries: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        mode, size = ("RGB" if self.channels == 3 else "L"), self.image_size
        # One preallocated tensor, filled image by image: a list of arrays then a stack would hold the data twice.
        images = torch.empty(len(entries), self.channels, size, size, dtype=torch.uint8)
        pixels = images.numpy()  # the same memory; numpy takes PIL's read-only arrays without a torch warning

        def fill(i: int) -> None:
            path = entries[i][0]
            array = _read_image(path, mode, size if self.resize else None)
            if array.shape[:2] != (size, size):
                raise UserError(
                    f"{path} is {array.shape[1]}x{array.shape[0]} pixels, expected {size}x{size} (data.image_size). "
                    f"Set data.image_size to the dataset's image size, or data.source.resize=true to resize them."
                )
            pixels[i] = array.reshape(size, size, -1).transpose(2, 0, 1)  # HWC -> CHW

        # PIL releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(fill, range(len(entries))))  # re-raises the first file's error, in file order
        return images, torch.tensor([label for _, label in entries], dtype=torch.int64)


def _hidden(path: Path) -> bool:
    """Whether ``path`` is hidden (``.git/``, ``.ipynb_checkpoints/``, macOS's ``._photo.png``): no class, no image."""
    return path.name.startswith(".")


def _read_image(path: Path, mode: str, size: int | None = None) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (mode "RGB") or ``[H, W]`` (mode "L") pixels of one image file, resized to
    ``size`` x ``size`` (bicubic, antialiased) unless ``size`` is None.

    Raises:
        UserError: naming the file, if it is not a readable image (truncated, or another kind of file).
    """
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated data, bad headers
        raise UserError(
            f"{path} is not a readable image ({type(err).__name__}: {err}). Replace or remove the file; "
            f"nothing was cached, so the next run decodes the folder again."
        ) from err


@buildable("data")
class SyntheticImages:
    """Small learnable data for tests and smoke runs: each class is a fixed coarse colour pattern plus noise.

    A class template is a random 4x4 pattern (per channel) blown up to the image size; an image is
    ``signal * template + (1 - signal) * uniform noise``. Cropping shifts by up to a few pixels keep the
    pattern recognizable, so a small CNN learns it in an epoch, while the noise keeps it from being trivial.

    Args:
        train_size: number of "official training" images (the DataModule splits off validation from these).
        test_size: number of test images.
        num_classes: number of classes (names ``class0``, ``class1``, ...).
        signal: weight of the class template in [0, 1].
        seed: seed of the templates and the noise; the data do not depend on the training seed.
        image_size: height and width.
        channels: colour channels (1 or 3).
    """

    def __init__(
        self,
        train_size: int = 2000,
        test_size: int = 500,
        num_classes: int = 10,
        signal: float = 0.5,
        seed: int = 0,
        image_size: int = 32,
        channels: int = 3,
    ) -> None:
        if min(train_size, test_size) < num_classes:
            raise UserError(f"synthetic data needs at least one image per class, got {train_size=} {test_size=}")
        if image_size % 4:
            raise UserError(
                f"synthetic images are 4x4 patterns blown up: image_size must be a multiple of 4, got {image_size}"
            )
        self.train_size, self.test_size = train_size, test_size
        self.num_classes, self.signal, self.seed, self.image_size = num_classes, signal, seed, image_size
        self.channels = channels

    def prepare(self) -> None:
        pass

    def load(self) -> ImageSplits:
        generator = torch.Generator().manual_seed(self.seed)
        templates = torch.rand(self.num_classes, self.channels, 4, 4, generator=generator)
        templates = templates.repeat_interleave(self.image_size // 4, 2).repeat_interleave(self.image_size // 4, 3)
        train_images, train_labels = self._sample(templates, self.train_size, generator)
        test_images, test_labels = self._sample(templates, self.test_size, generator)
        classes = tuple(f"class{i}" for i in range(self.num_classes))
        return ImageSplits(train_images, train_labels, test_images, test_labels, classes)

    def _sample(self, templates: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % self.num_classes  # balanced classes
        noise = torch.rand(n, self.channels, self.image_size, self.image_size, generator=generator)
        images = self.signal * templates[labels] + (1 - self.signal) * noise
        return (images * 255).round().to(torch.uint8), labels
