"""airbench94 as a model option (cnn_explorer/airbench.py, callbacks/whitening.py, callbacks/lookahead.py, the
Classifier's label smoothing and test-time augmentation): hand-derived values, the views on it, train.py on it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.lookahead import Lookahead
from callbacks.whitening import PatchWhitening
from cnn_explorer.airbench import (
    AirbenchNet,
    airbench_sgd,
    lookahead_decay,
    lookahead_update,
    patch_whitening,
    triangular_factor,
    triangular_lr,
)
from cnn_explorer.augment import tta_logits
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.errors import BadArgument
from cnn_explorer.interpret.attribution.cam import default_cam_layer
from cnn_explorer.interpret.features.receptive_field import ReceptiveField, receptive_fields
from cnn_explorer.interpret.layers import stage_shapes
from cnn_explorer.models import count_parameters
from cnn_explorer.module import Classifier
from cnn_explorer.sources import SyntheticImages
from tests.conftest import ANALYZE_FAST, ROOT, SHARED_CIFAR, TINY, needs_cifar, run_cli, trained_run_dir

# ---------------------------------------------------------------------------------------------------- whitening


def test_whitening_filters_make_the_patches_second_moment_the_identity():
    torch.manual_seed(0)
    # Correlated channels and neighbouring pixels: each pixel is mixed from its left neighbour and other channels.
    noise = torch.randn(40, 3, 9, 9)
    images = noise + 0.8 * noise.roll(1, dims=3) + 0.5 * noise.roll(1, dims=1)
    weights = patch_whitening(images, kernel_size=2, eps=0.0)
    assert weights.shape == (24, 3, 2, 2)
    assert torch.equal(weights[12:], -weights[:12])  # each filter twice, +w and -w
    outputs = F.conv2d(images, weights[:12])  # [40, 12, 8, 8]
    per_patch = outputs.permute(0, 2, 3, 1).reshape(-1, 12)
    moment = per_patch.T @ per_patch / len(per_patch)
    assert torch.allclose(moment, torch.eye(12), atol=1e-4)
    before = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12)
    assert (before.T @ before / len(before) - torch.eye(12)).abs().max() > 0.5  # the data were far from white


def test_whitening_one_pixel_patches_by_hand():
    # 1x1 patches of one channel, every pixel 2: second moment 4, the filter 1 / sqrt(4 + eps), and its negative.
    images = torch.full((3, 1, 4, 4), 2.0)
    assert sorted(patch_whitening(images, kernel_size=1, eps=0.0).flatten().tolist()) == [-0.5, 0.5]
    assert sorted(patch_whitening(images, kernel_size=1, eps=5.0).flatten().tolist()) == pytest.approx([-1 / 3, 1 / 3])


def test_whiten_from_sets_only_the_frozen_whitening_weights():
    torch.manual_seed(0)
    net = AirbenchNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(8, 3, 32, 32)
    net.whiten_from(images)
    assert torch.equal(net.whitening.weight, patch_whitening(images))
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["features.whiten.conv.weight"]
    assert not net.whitening.weight.requires_grad and net.whitening_bias.requires_grad


# ---------------------------------------------------------------------------------------------------- the net


def test_output_shape_and_parameter_count_by_hand():
    net = AirbenchNet(num_classes=10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Trainable: whitening bias 24; block1 convs 3*3*(24*64 + 64*64) + BN shifts 2*64; block2 3*3*(64*256 + 256*256)
    # + 2*256; block3 3*3*2*256*256 + 2*256; the bias-free head 256*10.
    trainable = 24 + (13_824 + 36_864 + 128) + (147_456 + 589_824 + 512) + (1_179_648 + 512) + 2_560
    assert count_parameters(net) == trainable == 1_971_352
    # Frozen: the whitening weights 24*3*2*2 and the BatchNorm scales 2*(64 + 256 + 256).
    assert sum(p.numel() for p in net.parameters()) == trainable + 288 + 1_152


def test_blocks_start_as_identities_and_logits_are_scaled():
    net = AirbenchNet()
    conv2 = net.features.block1.conv2.weight  # 64 -> 64: the whole conv is the identity
    assert torch.equal(conv2[:, :, 1, 1], torch.eye(64)) and conv2[:, :, [0, 2]].abs().sum() == 0
    conv1 = net.features.block2.conv1.weight  # 64 -> 256: its first 64 filters are
    assert torch.equal(conv1[:64, :, 1, 1], torch.eye(64))
    assert net.classifier.scale(torch.tensor([9.0])).item() == pytest.approx(1.0)


def test_views_find_the_stages_cam_layer_and_receptive_fields():
    net = AirbenchNet()
    assert stage_shapes(net, (3, 32, 32)) == {
        "features.whiten": (24, 31, 31),
        "features.block1": (64, 15, 15),
        "features.block2": (256, 7, 7),
        "features.block3": (256, 3, 3),
    }
    assert default_cam_layer(net, (3, 32, 32)) == "features.block3"
    # Araujo et al.'s recurrence by hand: whiten k2 -> (2, 1, 0); each block conv3 p1, pool2, conv3 p1 adds
    # 2j, then j, then 2(2j) to the size and -j, 0, -2j to the start, and doubles the jump j.
    fields = receptive_fields(net, 32)
    assert fields["features.whiten"] == ReceptiveField(size=2, stride=1, start=0)
    assert fields["features.block1"] == ReceptiveField(size=9, stride=2, start=-3)
    assert fields["features.block2"] == ReceptiveField(size=23, stride=4, start=-9)
    assert fields["features.block3"] == ReceptiveField(size=51, stride=8, start=-21)


# ---------------------------------------------------------------------------------------------------- recipe


def test_optimizer_scales_the_one_dimensional_parameters():
    net = AirbenchNet()
    optimizer = airbench_sgd([p for p in net.parameters() if p.requires_grad], 1.5, 0.85, 0.00133, bias_scaler=64)
    weights, biases = optimizer.param_groups
    assert len(biases["params"]) == 6  # the six BatchNorm shifts
    assert any(p is net.whitening_bias for p in weights["params"])  # airbench94's other_params
    assert biases["lr"] == 96.0 and weights["lr"] == 1.5
    # The same decay per step for both groups: lr * weight_decay.
    assert biases["lr"] * biases["weight_decay"] == pytest.approx(weights["lr"] * weights["weight_decay"])
    assert weights["nesterov"] and weights["momentum"] == 0.85


def test_triangular_schedule_by_hand():
    assert triangular_factor(0.0) == pytest.approx(0.2)
    assert triangular_factor(0.23) == pytest.approx(1.0)
    assert triangular_factor(1.0) == pytest.approx(0.07)
    assert triangular_factor(0.115) == pytest.approx(0.6)  # half way up: (0.2 + 1) / 2
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = triangular_lr(optimizer, total=2, warmup=0.5, start=0.0, end=0.0)
    lrs = [optimizer.param_groups[0]["lr"]]
    optimizer.step()  # (no gradients: nothing moves) the order torch expects before a scheduler step
    scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0])  # mid-points 0.25 and 0.75: half way up, half way down, of 2


def test_lookahead_decay_and_update_by_hand():
    assert lookahead_decay(5, 10, decay=0.5, every=2, power=1.0) == pytest.approx(0.25 * 0.5)
    assert lookahead_decay(10, 10) == pytest.approx(0.95**5)
    slow, fast = {"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}
    lookahead_update(slow, fast, decay=0.75)
    assert slow["w"].item() == fast["w"].item() == 1.5  # 0.75 * 1 + 0.25 * 3, and the net reset to it


class _Descending(L.LightningModule):
    """One weight ``w``, loss ``w``, SGD at lr 1: ``w`` drops by exactly 1 per step, a hand-made sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.net.weight)

    def training_step(self, batch, batch_idx):
        return self.net.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=1.0)


def test_lookahead_callback_on_a_hand_made_sequence(tmp_path):
    module, lookahead = _Descending(), Lookahead(every=2, decay=0.5, power=1.0)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[lookahead],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=1))
    # total 4 steps, d(step) = 0.5**2 * step / 4. Fast: -1; -2 -> slow 0.875 * -2 = -1.75 (d 0.125), fast -1.75;
    # -2.75; -3.75 -> slow 0.25 * -1.75 + 0.75 * -3.75 = -3.25 (d 0.25); the last step: fast = slow.
    assert module.net.weight.item() == pytest.approx(-3.25)
    assert lookahead.state_dict()["slow"]["weight"].item() == pytest.approx(-3.25)
    restored = Lookahead(every=2, decay=0.5, power=1.0)
    restored.load_state_dict(lookahead.state_dict())
    assert torch.equal(restored.slow["weight"], lookahead.slow["weight"])


class _BiasPerEpoch(L.Callback):
    def __init__(self) -> None:
        self.biases: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.biases.append(pl_module.net.whitening_bias.detach().clone())


def test_whitening_callback_sets_the_weights_from_the_training_split_and_trains_the_bias_one_epoch(tmp_path):
    torch.manual_seed(0)
    source = SyntheticImages(60, 20, signal=0.3, image_size=32)
    datamodule = ImageClassificationDataModule(source, mean=[0.5] * 3, std=[0.25] * 3, val_size=20, batch_size=20)
    module = Classifier(AirbenchNet(widths=(8, 8, 8)), optimizer=lambda p: airbench_sgd(p, 0.1, 0.85, 0.0))
    bias = _BiasPerEpoch()
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[PatchWhitening(images=30, bias_epochs=1), bias],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=datamodule)
    inputs = torch.cat([batch for batch, _, _ in datamodule.eval_batches("train", limit=30)])
    assert torch.equal(module.net.whitening.weight, patch_whitening(inputs))
    assert bias.biases[0].abs().sum() > 0  # trained from 0 in the first epoch
    assert torch.equal(bias.biases[1], bias.biases[0]) and torch.equal(bias.biases[2], bias.biases[0])  # then not
    assert module.net.features.block1.norm1.bias.abs().sum() > 0  # while the rest trains on


def test_callbacks_refuse_bad_arguments():
    with pytest.raises(BadArgument, match="decay"):
        Lookahead(decay=1.5)
    with pytest.raises(BadArgument, match="every"):
        Lookahead(every=0)
    with pytest.raises(BadArgument, match="bias_epochs"):
        PatchWhitening(bias_epochs=-1)


# ---------------------------------------------------------------------------------------------------- TTA


def _pixel_11(images: torch.Tensor) -> torch.Tensor:
    """A toy net: the logit is the pixel at row 1, column 1 of channel 0."""
    return images[:, 0, 1, 1:2]


def test_tta_logits_are_the_hand_computed_average():
    image = (torch.arange(16.0) ** 2).reshape(1, 1, 4, 4)  # x[r, c] = (4r + c)^2
    assert tta_logits(_pixel_11, image, "none").item() == 25.0
    assert tta_logits(_pixel_11, image, "flip").item() == (25 + 36) / 2  # flipped, (1, 1) shows x[1, 2]
    # Reflect-padded by 1: padded[:4, :4] shows x[0, 0] at (1, 1) (flipped: x[0, 1]); padded[2:, 2:] shows x[2, 2]
    # (flipped: x[2, 3]). Weights 1/4 for the plain pair, 1/8 for each shifted view.
    expected = 0.25 * (25 + 36) + 0.125 * (0 + 1 + 100 + 121)
    assert tta_logits(_pixel_11, image, "flip_translate").item() == pytest.approx(expected)


def test_classifier_checks_label_smoothing_and_tta():
    with pytest.raises(ValueError, match="tta"):
        Classifier(nn.Linear(1, 1), torch.optim.SGD, tta="mirror")
    with pytest.raises(ValueError, match="label_smoothing"):
        Classifier(nn.Linear(1, 1), torch.optim.SGD, label_smoothing=1.0)


# ---------------------------------------------------------------------------------------------------- train.py

# One epoch of 8 steps (800 synthetic training images at batch 100): the lookahead updates at step 5 and at the end.
AIRBENCH_FAST = [*TINY, "model=airbench", "trainer.max_epochs=1", "data.batch_size=100"]


@pytest.fixture(scope="module")
def airbench_run(tmp_path_factory) -> Path:
    return trained_run_dir(tmp_path_factory, "airbench", *AIRBENCH_FAST)


def test_train_py_runs_airbench_with_every_view(airbench_run):
    status = json.loads((airbench_run / "run_status.json").read_text())
    assert status["status"] == "completed" and 0.0 <= status["test/acc"] <= 1.0
    last = torch.load(airbench_run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = last["state_dict"]
    whitening = weights["net.features.whiten.conv.weight"]
    assert torch.equal(whitening[12:], -whitening[:12])  # set by whiten_from, not PyTorch's random init
    slow = next(state["slow"] for key, state in last["callbacks"].items() if key.startswith("Lookahead"))
    for name, average in slow.items():  # the run ended on the slow weights
        assert torch.equal(average, weights[f"net.{name}"]), name


def test_analyze_py_reports_on_an_airbench_run(airbench_run):
    result = run_cli("analyze.py", str(airbench_run), *ANALYZE_FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((airbench_run / "report" / "metrics.json").read_text())
    assert summary["test"]["images"] == 200
    # The report's accuracy is the logged test/acc: the same six test-time views.
    assert summary["test"]["acc"] == pytest.approx(summary["test"]["logged_acc"], abs=1e-6)


@pytest.mark.slow
@needs_cifar
def test_airbench_reaches_what_airbench94s_own_code_reaches_on_the_cifar10_jpeg_copy(tmp_path):
    """The whole recipe (experiment=airbench) on the real data: about 30 minutes on a 2-core CPU.

    airbench94's own code (its legacy/airbench94.py, run on the CPU in float32 on this split's 45,000 training
    images) reaches 90.14% on this copy's test split with its test-time augmentation; this recipe 90.15%
    (docs/performance.md). The floor is that figure less a point. (airbench94's 94.01% is on the original PNG
    pixels; this copy's quality-75 JPEG costs about 3.5 points, as airbench94's own code shows.)
    """
    run_dir = tmp_path / "run"
    result = run_cli(
        "train.py",
        "experiment=airbench",
        "data=cifar10_folder",
        f"data.source.root={SHARED_CIFAR}",
        f"data.source.cache_dir={tmp_path / 'cache'}",
        "callbacks=minimal",  # the recipe's two callbacks stay (conf/model/airbench.yaml adds them)
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
        timeout=3 * 3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["test/acc"] >= 0.89, status
