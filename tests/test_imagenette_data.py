"""Imagenette and larger ImageFolder datasets: the test folder's name, display names for class folders, resizing at
load, the resized-crop augmentation, and the real 160 px copy when it is present."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from cnn_explorer.augment import center_crop_resize, random_resized_boxes, random_resized_crop_flip, resized_crop
from cnn_explorer.data import ImageClassificationDataModule, stratified_split
from cnn_explorer.errors import UserError
from cnn_explorer.models import ConvNet
from cnn_explorer.module import Classifier
from cnn_explorer.sources import IMAGENETTE_IMAGENET_INDEX, ImageFolderSource
from tests.conftest import ROOT, compose_train_config, write_image_folder

SHARED_IMAGENETTE = Path(os.environ.get("IMAGENETTE_FOLDER", ROOT.parent / "shared" / "data" / "imagenette-160"))
needs_imagenette = pytest.mark.skipif(
    not (SHARED_IMAGENETTE / "train").is_dir(),
    reason=f"the Imagenette 160 px copy is not at {SHARED_IMAGENETTE} (set IMAGENETTE_FOLDER to use another path)",
)
WNIDS = list(IMAGENETTE_IMAGENET_INDEX)
NAMES = [
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
]  # fmt: skip


# --- the resized-crop augmentation ---------------------------------------------------------------------------


def test_a_whole_image_box_at_its_own_size_is_the_image_and_a_flip_mirrors_it():
    square = torch.randint(0, 256, (3, 2, 6, 6), dtype=torch.uint8)
    assert torch.equal(resized_crop(square, torch.tensor([[0.0, 0.0, 6.0, 6.0]]).expand(3, 4), 6), square)
    # scale (1, 1) on a square image: every box is the whole image (ratio 1 is the only one that fits).
    flips = random_resized_crop_flip(
        square, 6, hflip=True, scale=(1.0, 1.0), generator=torch.Generator().manual_seed(0)
    )
    for out, image in zip(flips, square, strict=True):
        assert torch.equal(out, image) or torch.equal(out, image.flip(2))


def test_a_known_box_gives_the_pixels_it_covers_upsampled():
    # A 4x4 image; the box over its top-left 2x2 pixels, resized to 4x4. Output pixel j samples the input at
    # x = 0 + (j + 0.5) * 2/4 - 0.5 = -0.25, 0.25, 0.75, 1.25 (roi_align, aligned=True), bilinearly: -0.25 clamps
    # to pixel 0; 1.25 blends pixels 1 and 2 (a box's border pixel is blended with its neighbour outside, as when
    # resizing the whole image). Row 0: 10, 10*.75+20*.25, 10*.25+20*.75, 20*.75+90*.25.
    image = torch.tensor([[10.0, 20.0, 90.0, 90.0], [30.0, 40.0, 90.0, 90.0], [90.0] * 4, [90.0] * 4])[None, None]
    out = resized_crop(image, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), size=4)[0, 0]
    assert torch.allclose(out[0], torch.tensor([10.0, 12.5, 17.5, 37.5]))
    assert torch.allclose(out[:, 0], torch.tensor([10.0, 15.0, 25.0, 45.0]))  # 10, 10*.75+30*.25, ..., 30*.75+90*.25
    # The right half of a left-dark, right-bright 8x8 image at 4 px: x samples 4, 5, 6, 7 exactly, y averages
    # two rows per output pixel; all bright, none of the dark side leaks in.
    halves = torch.cat([torch.zeros(1, 1, 8, 4), torch.full((1, 1, 8, 4), 200.0)], 3)
    assert torch.equal(resized_crop(halves, torch.tensor([[4.0, 0.0, 8.0, 8.0]]), 4), torch.full((1, 1, 4, 4), 200.0))


def test_boxes_keep_their_area_and_aspect_ranges_and_stay_inside_the_image():
    boxes = random_resized_boxes(4000, 96, 128, scale=(0.35, 1.0), generator=torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / (96 * 128)
    fell_back = (w == 128) & (h == 96)  # no try fitted: the whole image (rare: large areas at extreme aspects)
    assert fell_back.float().mean() < 0.01
    assert (area[~fell_back] >= 0.35 - 1e-5).all() and (area <= 1 + 1e-5).all()
    assert ((w / h)[~fell_back] >= 3 / 4 - 1e-5).all() and ((w / h)[~fell_back] <= 4 / 3 + 1e-5).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128 + 1e-4).all() and (boxes[:, 3] <= 96 + 1e-4).all()
    assert area.min() < 0.36 and area.max() > 0.95  # the whole range is drawn
    # On a square image the aspect is log-uniform, symmetric around 1 (a box too wide fails as often as one too
    # tall), and the boxes' left edges spread over the free room: mean x0 / (128 - w) = 1/2.
    boxes = random_resized_boxes(4000, 128, 128, generator=torch.Generator().manual_seed(1))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert math.isclose((w / h).log().mean().item(), 0.0, abs_tol=0.01)
    room = 128 - w > 1
    assert math.isclose((boxes[room, 0] / (128 - w[room])).mean().item(), 0.5, abs_tol=0.02)


def test_resized_crop_flip_keeps_labels_aligned_and_dtype():
    # Each image a solid colour: whatever box and flip, the output is that colour, in the same slot.
    colours = torch.arange(0, 250, 10, dtype=torch.uint8)
    images = colours.view(-1, 1, 1, 1).expand(-1, 3, 20, 20).contiguous()
    out = random_resized_crop_flip(images, 12, hflip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == (25, 3, 12, 12) and out.dtype == torch.uint8
    assert torch.equal(out, colours.view(-1, 1, 1, 1).expand(-1, 3, 12, 12))


def test_the_datamodule_uses_the_augmentation_its_config_names(tmp_path):
    write_image_folder(tmp_path / "data", [f"c{i}" for i in range(10)], per_class=3, size=16)
    dm = ImageClassificationDataModule(
        ImageFolderSource(str(tmp_path / "data"), image_size=16), image_size=16, val_size=10, batch_size=20,
        augment="resized_crop_flip", crop_scale=(0.5, 0.5), hflip=False, mean=[0.0] * 3, std=[1.0] * 3,
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    generator_before = dm.generator.get_state()
    inputs, _ = dm.prepare_batch(batch, train=True)
    expected = random_resized_crop_flip(batch[0], 16, False, (0.5, 0.5), torch.Generator().set_state(generator_before))
    assert torch.allclose(inputs, expected.float() / 255)
    with pytest.raises(UserError, match="data.augment must be one of crop_flip, resized_crop_flip"):
        ImageClassificationDataModule(dm.source, augment="random_erase")
    with pytest.raises(UserError, match="data.crop_scale"):
        ImageClassificationDataModule(dm.source, crop_scale=(0.0, 1.0))


def test_a_centre_crop_is_the_central_pixels_and_a_halving_averages_two_by_two_blocks():
    image = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    # Half the side of 8 px at 4 px: the box (2, 2)-(6, 6), one sample per output pixel, at input pixel centres.
    assert torch.equal(center_crop_resize(image, 0.5, 4), image[..., 2:6, 2:6])
    # The whole 8 px image at 4 px: two samples per output pixel and axis, at input pixel centres: the block means.
    blocks = image.view(1, 1, 4, 2, 4, 2).mean((3, 5))
    assert torch.allclose(center_crop_resize(image, 1.0, 4), blocks)
    uint8 = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert center_crop_resize(uint8, 1.0, 8) is uint8  # nothing to do: the same tensor, no copy
    assert torch.equal(center_crop_resize(uint8, 0.5, 4, chunk=2), uint8[..., 2:6, 2:6])  # chunks join in order


def test_a_larger_load_size_crops_training_images_from_it_and_evaluates_on_centre_crops(tmp_path):
    write_image_folder(tmp_path / "data", [f"c{i}" for i in range(10)], per_class=3, size=16)
    source = ImageFolderSource(str(tmp_path / "data"), image_size=16)
    loaded = source.load()
    dm = ImageClassificationDataModule(
        source, image_size=8, load_size=16, eval_crop=0.5, val_size=10, batch_size=20, eval_batch_size=7,
        augment="resized_crop_flip", mean=[0.0] * 3, std=[1.0] * 3,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.train_images.shape[1:] == (3, 16, 16)  # kept at the load size: crops are cut from these
    # Evaluation images: the central 8x8 of each 16 px image (half its side, at 8 px: one sample per pixel).
    assert torch.equal(dm.test_images, loaded.test_images[..., 4:12, 4:12])
    assert dm.val_images.shape[1:] == (3, 8, 8)
    inputs, _ = dm.prepare_batch(next(iter(dm.train_dataloader())), train=True)
    assert inputs.shape == (20, 3, 8, 8)
    train_inputs, _, index = next(dm.eval_batches("train"))  # the train split as evaluated: centre crops too
    assert torch.allclose(train_inputs, dm.train_images[index][..., 4:12, 4:12].float() / 255)
    probe = dm.probe_set()
    assert probe.images.shape[1:] == (3, 8, 8)  # the views show what the net is evaluated on
    with pytest.raises(UserError, match=r"data.load_size \(8\) must be >= data.image_size \(16\)"):
        ImageClassificationDataModule(source, image_size=16, load_size=8, augment="resized_crop_flip")
    with pytest.raises(UserError, match="needs data.augment=resized_crop_flip"):
        ImageClassificationDataModule(source, image_size=8, load_size=16, augment="crop_flip")
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match="data.eval_crop must be in"):
            ImageClassificationDataModule(source, image_size=16, eval_crop=bad)
    wrong = ImageClassificationDataModule(source, image_size=8, load_size=12, augment="resized_crop_flip")
    with pytest.raises(UserError, match="data.load_size=12"):
        wrong.setup("fit")


# --- ImageFolder sources: test folder, names, sizes ----------------------------------------------------------


def test_test_split_folder_and_class_names_reach_the_datamodule(tmp_path):
    write_image_folder(tmp_path / "data", WNIDS, per_class=3, size=16, split_dirs=("train", "val"))
    source = ImageFolderSource(
        str(tmp_path / "data"), image_size=16, test_split="val", class_names=dict(zip(WNIDS, NAMES, strict=True))
    )
    dm = ImageClassificationDataModule(source, image_size=16, val_size=10, batch_size=5)
    dm.setup("fit")
    assert dm.classes == tuple(NAMES)  # what the views, the confusion matrix and the report print
    assert len(dm.test_labels) == 30 and torch.bincount(dm.test_labels).tolist() == [3] * 10
    # Labels still follow the sorted folders: PNG pixel (label * 20, i * 50, 7) of the test image of class 4.
    assert dm.test_images[12, :, 0, 0].tolist() == [80, 0, 7]
    with pytest.raises(UserError, match="no 'test/' folder"):
        ImageFolderSource(str(tmp_path / "data"), image_size=16).load()


def test_class_names_must_name_every_folder_and_a_renamed_class_needs_no_decode(tmp_path):
    write_image_folder(tmp_path / "data", ["a", "b"], per_class=1, size=8)
    with pytest.raises(UserError, match="no name for b; no folder c"):
        ImageFolderSource(str(tmp_path / "data"), num_classes=2, image_size=8, class_names={"a": "A", "c": "C"}).load()
    cache = str(tmp_path / "cache")
    ImageFolderSource(str(tmp_path / "data"), cache, num_classes=2, image_size=8).load()
    renamed = ImageFolderSource(str(tmp_path / "data"), cache, 2, 8, class_names={"a": "ant", "b": "bee"}).load()
    assert renamed.classes == ("ant", "bee") and len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_resize_makes_every_image_the_configured_size_antialiased(tmp_path):
    # 20x20 images, resized to 10: a solid colour stays that colour; an alternating 1-pixel stripe pattern
    # averages to grey rather than aliasing to one of its two values.
    write_image_folder(tmp_path / "data", ["a", "b"], per_class=1, size=20)
    stripes = torch.zeros(20, 20, 3, dtype=torch.uint8)
    stripes[:, ::2] = 255
    from PIL import Image

    Image.fromarray(stripes.numpy()).save(tmp_path / "data" / "train" / "b" / "0.png")
    source = ImageFolderSource(str(tmp_path / "data"), str(tmp_path / "cache"), 2, 10, resize=True)
    splits = source.load()
    assert splits.train_images.shape == (2, 3, 10, 10) and splits.test_images.shape == (2, 3, 10, 10)
    assert (splits.train_images[0, :, 3, 3].tolist()) == [0, 0, 7]
    assert 110 <= splits.train_images[1, 0, 2:8, 2:8].float().mean() <= 145
    # Another size is another cache file; without resize the size is checked as before.
    ImageFolderSource(str(tmp_path / "data"), str(tmp_path / "cache"), 2, 16, resize=True).load()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    with pytest.raises(UserError, match="20x20 pixels, expected 10x10 .*data.source.resize=true"):
        ImageFolderSource(str(tmp_path / "data"), None, 2, 10).load()


@pytest.mark.parametrize(
    ("size", "channels", "augment"),
    [(64, 1, "crop_flip"), (160, 3, "resized_crop_flip")],
    ids=["64px-gray", "160px-rgb"],
)
def test_an_image_folder_of_another_size_and_channels_trains_a_step(tmp_path, size, channels, augment):
    classes = ["ant", "bee", "cow"]
    write_image_folder(tmp_path / "data", classes, per_class=4, size=size)
    source = ImageFolderSource(str(tmp_path / "data"), num_classes=3, image_size=size, channels=channels)
    dm = ImageClassificationDataModule(
        source, num_classes=3, image_size=size, channels=channels, mean=[0.5] * channels, std=[0.25] * channels,
        val_size=3, batch_size=4, eval_batch_size=3, augment=augment,
    )  # fmt: skip
    net = ConvNet([4, "M", 8, "M"], hidden=8, num_classes=3, in_channels=channels, image_size=size)
    before = [p.detach().clone() for p in net.parameters()]
    module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1), num_classes=3)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1 and dm.classes == tuple(classes)
    assert dm.train_images.shape == (9, channels, size, size)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_the_imagenette_config_states_format_names_and_split(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENETTE_FOLDER", raising=False)
    data = compose_train_config(["data=imagenette"], tmp_path / "run").data
    assert (data.num_classes, data.image_size, data.channels, data.val_size) == (10, 128, 3, 1000)
    assert list(data.mean) == [0.452, 0.457, 0.437] and list(data.std) == [0.272, 0.268, 0.291]
    assert data.augment == "resized_crop_flip" and list(data.crop_scale) == [0.35, 1.0]
    # Loaded at 160 px (training crops are cut from those), evaluated on the centred 7/8 resized to 128.
    assert (data.load_size, data.eval_crop) == (160, 0.875)
    assert data.source.test_split == "val" and data.source.resize and data.source.image_size == 160
    assert data.source.root == "data/imagenette-160"  # under the launch dir, never a machine path
    assert list(data.source.class_names) == WNIDS and list(data.source.class_names.values()) == NAMES
    assert list(IMAGENETTE_IMAGENET_INDEX.values()) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


@pytest.mark.slow  # decodes 13,394 JPEGs (~12 s on two cores)
@needs_imagenette
def test_the_shared_imagenette_copy_loads_with_its_counts_names_and_statistics():
    source = ImageFolderSource(
        str(SHARED_IMAGENETTE), None, 10, 160, test_split="val", class_names=dict(zip(WNIDS, NAMES, strict=True))
    )
    splits = source.load()
    assert splits.classes == tuple(NAMES)
    assert splits.train_images.shape == (9469, 3, 160, 160) and splits.test_images.shape == (3925, 3, 160, 160)
    train_counts, test_counts = torch.bincount(splits.train_labels), torch.bincount(splits.test_labels)
    assert train_counts.min() == 858 and train_counts.max() == 993  # README: 858-993 per class
    assert test_counts.min() == 357 and test_counts.max() == 419  # 357-419
    # README: mean 0.452 0.457 0.437, std 0.272 0.268 0.291 of a tenth of train; here of every tenth image.
    pixels = splits.train_images[::10].float() / 255
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.tensor([0.452, 0.457, 0.437]), atol=0.01)
    assert torch.allclose(pixels.std((0, 2, 3)), torch.tensor([0.272, 0.268, 0.291]), atol=0.01)
    train, val = stratified_split(splits.train_labels, 1000, seed=0)
    assert len(train) == 8469 and len(val) == 1000
    # Stratified: each class's share of val is its share of train/ (to within one image).
    expected = train_counts.double() * 1000 / 9469
    assert ((torch.bincount(splits.train_labels[val]) - expected).abs() < 1).all()
