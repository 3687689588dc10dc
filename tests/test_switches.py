"""Speed switches change how a run computes, not what it learns; the batch path matches torchvision's."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from cnn_explorer.augment import normalize, random_crop_flip
from tests.conftest import TINY, compose_train_config
from train import train

SWITCHES = {
    "fp32, contiguous": ["model.channels_last=false"],
    "bf16 mixed precision": ["trainer.precision=bf16-mixed"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, float]:
    return train(compose_train_config([*TINY, "test=false"], tmp_path_factory.mktemp("reference")))


@pytest.mark.parametrize("name", SWITCHES)
def test_switch_trains_to_the_same_result(name, reference, tmp_path):
    metrics = train(compose_train_config([*TINY, "test=false", *SWITCHES[name]], tmp_path))
    assert metrics["val/acc"] == pytest.approx(reference["val/acc"], abs=0.05)
    assert metrics["train/loss"] == pytest.approx(reference["train/loss"], rel=0.1)


@pytest.mark.slow  # inductor compiles C++ kernels for a minute or more on two cores
def test_torch_compile_trains_to_the_same_result(reference, tmp_path):
    metrics = train(compose_train_config([*TINY, "test=false", "model.compile=true"], tmp_path))
    assert metrics["val/acc"] == pytest.approx(reference["val/acc"], abs=0.05)


def test_batch_normalization_matches_torchvision_per_sample_transforms():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    per_sample = torch.stack(
        [TF.normalize(TF.to_tensor(Image.fromarray(img.permute(1, 2, 0).numpy())), mean, std) for img in images]
    )
    assert torch.allclose(normalize(images, mean, std), per_sample, atol=1e-6)


def test_crop_matches_torchvision_random_crop_with_the_same_offset():
    # torchvision's RandomCrop(32, padding=4): pad with zeros, then crop at (top, left) drawn from 0..8.
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    ours = random_crop_flip(image.expand(64, -1, -1, -1), padding=4, hflip=False, generator=generator)
    padded = TF.pad(image[0], [4])
    candidates = {(top, left): TF.crop(padded, top, left, 32, 32) for top in range(9) for left in range(9)}
    offsets = {next(o for o, c in candidates.items() if torch.equal(c, out)) for out in ours}
    assert len(offsets) > 30  # 64 draws over 81 offsets: most are distinct, all are torchvision crops
