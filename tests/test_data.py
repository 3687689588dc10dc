import pytest
import torch

from cnn_explorer.augment import denormalize, normalize, random_crop_flip
from cnn_explorer.data import ImageClassificationDataModule, stratified_split
from cnn_explorer.errors import UserError
from cnn_explorer.sources import ImageFolderSource, SyntheticImages, TorchvisionCIFAR10
from tests.conftest import SHARED_CIFAR, needs_cifar, write_image_folder


def test_split_sizes_disjoint_and_stratified():
    labels = torch.arange(50_000) % 10
    train, val = stratified_split(labels, 5000, seed=0)
    assert len(train) == 45_000 and len(val) == 5000
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(50_000))
    assert torch.bincount(labels[val]).tolist() == [500] * 10


def test_split_is_deterministic_and_depends_on_its_seed_only():
    labels = torch.arange(1000) % 10
    torch.manual_seed(1)  # the global RNG (the training seed) must not matter
    first = stratified_split(labels, 100, seed=3)[1]
    torch.manual_seed(2)
    assert torch.equal(first, stratified_split(labels, 100, seed=3)[1])
    assert not torch.equal(first, stratified_split(labels, 100, seed=4)[1])


def test_split_rounds_uneven_classes_to_the_exact_size():
    labels = torch.tensor([0] * 7 + [1] * 3)  # 70% / 30%
    _, val = stratified_split(labels, 3, seed=0)
    assert len(val) == 3 and torch.bincount(labels[val], minlength=2).tolist() == [2, 1]


@pytest.mark.parametrize("val_size", [0, 10, -1])
def test_impossible_split_size(val_size):
    with pytest.raises(ValueError, match="val_size"):
        stratified_split(torch.arange(10) % 2, val_size, seed=0)


def test_crop_flip_keeps_shape_and_each_output_is_a_crop_of_its_own_padded_input():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, hflip=True, generator=generator)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):  # label alignment: image i's output comes from image i, at one of 25 offsets, maybe flipped
        candidates = [padded[i, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_crop_offsets_and_flips_cover_their_range():
    # A single bright pixel at the centre of a 9x9 image: its position after cropping gives the offset.
    image = torch.zeros(2000, 1, 9, 9, dtype=torch.uint8)
    image[:, 0, 4, 4] = 255
    out = random_crop_flip(image, padding=2, hflip=False, generator=torch.Generator().manual_seed(0))
    ys, xs = (out[:, 0] == 255).nonzero()[:, 1:].T
    assert set(ys.tolist()) == set(xs.tolist()) == {2, 3, 4, 5, 6}  # shifts of -2..+2
    marker = torch.zeros(2000, 1, 1, 4, dtype=torch.uint8)
    marker[:, 0, 0, 0] = 1
    flipped = random_crop_flip(marker, padding=0, hflip=True, generator=torch.Generator().manual_seed(0))
    assert 0.45 < (flipped[:, 0, 0, 3] == 1).float().mean() < 0.55


def test_normalize_uses_the_constants_and_denormalize_inverts_it():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    out = normalize(images, mean, std)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    assert torch.allclose(denormalize(out, mean, std), images.float() / 255)


def synthetic_datamodule(**kwargs) -> ImageClassificationDataModule:
    source = SyntheticImages(train_size=500, test_size=100)
    return ImageClassificationDataModule(source, val_size=100, batch_size=32, eval_batch_size=50, **kwargs)


def test_datamodule_sizes_batches_and_probe():
    dm = synthetic_datamodule()
    dm.setup("fit")
    assert (len(dm.train_labels), len(dm.val_labels), len(dm.test_labels)) == (400, 100, 100)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (32,)
    assert sum(len(b[1]) for b in dm.train_dataloader()) == 400
    assert [len(b[1]) for b in dm.val_dataloader()] == [50, 50]
    probe = dm.probe_set(per_class=2)
    assert probe.labels.tolist() == [c for c in range(10) for _ in range(2)]
    val_index = [(dm.val_labels == c).nonzero()[:2, 0] for c in range(10)]
    assert torch.equal(probe.images, dm.val_images[torch.cat(val_index)])
    assert torch.equal(probe.inputs, normalize(probe.images, dm.mean, dm.std))
    assert dm.probe_set(per_class=2) is probe  # made once per run, not per view and epoch


def test_shuffling_and_augmentation_replay_from_state_dict():
    dm = synthetic_datamodule(seed=5)
    dm.setup("fit")
    state = dm.state_dict()
    first = [dm.prepare_batch(batch, train=True) for batch in dm.train_dataloader()]
    dm.load_state_dict(state)
    second = [dm.prepare_batch(batch, train=True) for batch in dm.train_dataloader()]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_eval_batches_are_not_augmented():
    dm = synthetic_datamodule()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert torch.equal(dm.prepare_batch(batch, train=False)[0], normalize(batch[0], dm.mean, dm.std))


def test_image_folder_source_labels_by_sorted_folder_and_caches(tmp_path):
    classes = [f"c{i}" for i in range(10)]
    write_image_folder(tmp_path / "data", classes)
    source = ImageFolderSource(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    splits = source.load()
    assert splits.classes == tuple(classes)
    assert splits.train_images.shape == (20, 3, 32, 32) and splits.train_labels.tolist() == [i // 2 for i in range(20)]
    assert splits.train_images[4, :, 0, 0].tolist() == [40, 0, 7]  # class c2, image 0: PNG is lossless
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    cached = source.load()
    assert torch.equal(cached.train_images, splits.train_images) and cached.classes == splits.classes


def test_image_folder_cache_is_rebuilt_when_unreadable(tmp_path):
    write_image_folder(tmp_path / "data", [f"c{i}" for i in range(10)], per_class=1)
    source = ImageFolderSource(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    expected = source.load()
    (cache,) = (tmp_path / "cache").glob("*.pt")
    cache.write_bytes(b"truncated")
    assert torch.equal(source.load().test_images, expected.test_images)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no 'train/' folder"):
        ImageFolderSource(str(tmp_path)).load()
    write_image_folder(tmp_path / "three", ["a", "b", "c"])
    with pytest.raises(UserError, match="has 3 class folders.*expected 10"):
        ImageFolderSource(str(tmp_path / "three")).load()
    write_image_folder(tmp_path / "big", [f"c{i}" for i in range(10)], per_class=1, size=64)
    with pytest.raises(UserError, match="64x64 pixels, expected 32x32 \\(data.image_size\\)"):
        ImageFolderSource(str(tmp_path / "big")).load()


def test_missing_cifar_without_download_points_to_the_offline_option(tmp_path):
    with pytest.raises(UserError, match="data=cifar10_folder data.source.root="):
        TorchvisionCIFAR10(str(tmp_path), download=False).prepare()


def test_wrong_class_count_and_bad_sizes_in_the_datamodule():
    dm = ImageClassificationDataModule(SyntheticImages(100, 50, num_classes=5), num_classes=10, val_size=10)
    with pytest.raises(UserError, match="5 classes, expected data.num_classes=10"):
        dm.setup("fit")
    dm = ImageClassificationDataModule(SyntheticImages(100, 50), val_size=100)
    with pytest.raises(UserError, match="data.val_size"):
        dm.setup("fit")
    with pytest.raises(UserError, match="data.batch_size"):
        ImageClassificationDataModule(SyntheticImages(), batch_size=0)
    dm = ImageClassificationDataModule(SyntheticImages(100, 50, image_size=16), val_size=10)
    with pytest.raises(UserError, match="3 x 16 x 16 .*data.channels=3, data.image_size=32"):
        dm.setup("fit")
    with pytest.raises(UserError, match=r"data.mean needs one value per channel \(data.channels=1\)"):
        ImageClassificationDataModule(SyntheticImages(), channels=1)


def test_another_imagefolder_dataset_64px_grayscale_five_classes(tmp_path):
    classes = ["ant", "bee", "cow", "dog", "eel"]
    write_image_folder(tmp_path / "data", classes, per_class=4, size=64)
    source = ImageFolderSource(str(tmp_path / "data"), num_classes=5, image_size=64, channels=1)
    dm = ImageClassificationDataModule(
        source, num_classes=5, image_size=64, channels=1, mean=[0.5], std=[0.25], val_size=5, batch_size=4
    )
    dm.setup("fit")
    assert dm.classes == tuple(classes) and dm.train_images.shape == (15, 1, 64, 64)
    # PIL's "L" conversion of the RGB (label * 20, i * 50, 7): L = R*299/1000 + G*587/1000 + B*114/1000.
    label, i = 2, 1
    expected = round(label * 20 * 0.299 + i * 50 * 0.587 + 7 * 0.114)
    assert abs(int(source.load().train_images[label * 4 + i, 0, 0, 0]) - expected) <= 1


@pytest.mark.slow  # decodes all 60,000 images
@needs_cifar
def test_the_shared_cifar10_copy_loads_with_the_documented_statistics(tmp_path):
    splits = ImageFolderSource(str(SHARED_CIFAR), cache_dir=None).load()
    assert splits.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert splits.train_images.shape == (50_000, 3, 32, 32) and splits.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(splits.test_labels).tolist() == [1000] * 10
    pixels = splits.test_images.float() / 255  # ../shared/data/README.md: mean 0.494 0.485 0.450, std 0.245 0.242 0.261
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.tensor([0.494, 0.485, 0.450]), atol=6e-4)
    assert torch.allclose(pixels.std((0, 2, 3)), torch.tensor([0.245, 0.242, 0.261]), atol=6e-4)


@pytest.mark.parametrize("damage", ["truncated", "not-an-image", "empty-class"])
def test_a_bad_file_or_folder_is_named_and_nothing_is_cached(tmp_path, damage):
    classes = [f"c{i}" for i in range(10)]
    write_image_folder(tmp_path / "data", classes, per_class=2)
    bad = tmp_path / "data" / "train" / "c3" / "1.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:40])
        expected = f"{bad} is not a readable image"
    elif damage == "not-an-image":
        bad.write_text("these are notes, not pixels")
        expected = f"{bad} is not a readable image"
    else:
        for path in (tmp_path / "data" / "train" / "c3").iterdir():
            path.unlink()
        expected = f"{(tmp_path / 'data' / 'train' / 'c3').resolve()} holds no .jpg/.jpeg/.png image"
    source = ImageFolderSource(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError) as raised:
        source.load()
    assert expected in str(raised.value)
    assert not (tmp_path / "cache").exists()


def test_a_cache_dir_that_is_a_file_gets_a_message(tmp_path):
    write_image_folder(tmp_path / "data", [f"c{i}" for i in range(10)], per_class=1)
    (tmp_path / "cache").write_text("a file, not a folder")
    with pytest.raises(UserError, match="data.source.cache_dir=.*cache is a file, not a folder"):
        ImageFolderSource(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")).load()


def test_the_default_augmentation_is_still_cifars_pad_crop_and_flip():
    dm = synthetic_datamodule(seed=3)
    assert dm.augment == "crop_flip"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    state = dm.generator.get_state()
    inputs, _ = dm.prepare_batch(batch, train=True)
    expected = random_crop_flip(batch[0], 4, True, torch.Generator().set_state(state))
    assert torch.equal(inputs, normalize(expected, dm.mean, dm.std))
