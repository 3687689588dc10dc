"""Speed switches change how a run computes, not what it computes; the batch path matches torchvision's.

A switch is tested where its effect is bounded: one forward and backward pass on identical weights and an
identical batch, compared within the rounding of the arithmetic it changes. Not by validation accuracy after
training, which amplifies rounding differences between CPUs (oneDNN picks other kernels on an Intel Xeon than
on an AMD EPYC) into points of accuracy.
"""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from cnn_explorer.augment import normalize, random_crop_flip
from cnn_explorer.models import ConvNet
from cnn_explorer.module import Classifier
from tests.conftest import TINY, compose_train_config
from train import train


def one_step(channels_last: bool = False, bf16: bool = False, compile: bool = False) -> tuple[torch.Tensor, dict]:
    """Loss and parameter gradients of one step of the seed's small CNN on a fixed batch, fixed weights."""
    torch.manual_seed(0)
    net = ConvNet([32, "M", 64, "M", 128, "M"], hidden=256, batch_norm=True, dropout=0.0)
    module = Classifier(net, optimizer=torch.optim.Adam, channels_last=channels_last, compile=compile)
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(module(images).float(), labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.net.named_parameters()}


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, dict]:
    return one_step()


def test_channels_last_computes_the_same_step_within_float32_rounding(reference):
    loss, grads = one_step(channels_last=True)
    # Another convolution algorithm sums in another order: float32 rounding over a few thousand terms.
    torch.testing.assert_close(loss, reference[0], rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-3, atol=1e-5, msg=name)


def test_bf16_autocast_computes_the_same_step_within_bfloat16_rounding(reference):
    loss, grads = one_step(bf16=True)
    # bfloat16 keeps 8 significant bits (relative rounding 2**-8 = 0.4% per value); a few such roundings
    # through three conv layers stay within a few percent of the float32 loss and gradient norms.
    torch.testing.assert_close(loss, reference[0], rtol=3e-2, atol=0.0)
    for name, grad in grads.items():
        assert abs(grad.norm() / reference[1][name].norm() - 1) < 0.1, name


def test_bf16_mixed_precision_trains_through_the_config(tmp_path):
    overrides = [*TINY, "trainer.max_epochs=1", "test=false", "trainer.precision=bf16-mixed"]
    metrics = train(compose_train_config(overrides, tmp_path))
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and metrics["val/loss"] < 2.0  # chance: ln 10 = 2.3
    assert metrics["val/acc"] > 0.3  # chance is 0.1: it learns


@pytest.mark.slow  # inductor compiles C++ kernels for a minute or more on two cores
def test_torch_compile_computes_the_same_step(reference):
    loss, grads = one_step(compile=True)
    torch.testing.assert_close(loss, reference[0], rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-3, atol=1e-5, msg=name)


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
