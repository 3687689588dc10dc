"""The bridge from the classification half: a detector whose backbone is an EfficientNet-Lite0 classifier trained by
this framework (``model.net.backbone_run_dir``), read through the safe loader of untrusted run dirs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from cnn_explorer.detection.models import FasterRCNNLite0
from cnn_explorer.errors import UserError
from tests.conftest import TINY_DETECTION, TINY_MINIMAL, run_cli, trained_run_dir
from tests.test_untrusted_run_dir import edit_config

# One short epoch of EfficientNet-Lite0 from random weights on the 32 px synthetic classes: a run dir, not a good net.
CLASSIFIER = [*TINY_MINIMAL, "model=efficientnet_lite0", "model.net.weights=null", "trainer.max_epochs=1"]
CLASSIFIER += ["+trainer.limit_train_batches=2", "test=false", "threads=1"]
SYNTHETIC_NORMALIZATION = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}  # conf/data/synthetic.yaml


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    return trained_run_dir(tmp_path_factory, "classifier", *CLASSIFIER)


def classifier_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    (best,) = (run_dir / "checkpoints").glob("epoch*-val_acc*.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    return {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}


def test_the_detectors_backbone_is_the_classifiers_features(classifier_run):
    detector = FasterRCNNLite0(backbone_run_dir=str(classifier_run), **SYNTHETIC_NORMALIZATION)
    trained = classifier_weights(classifier_run)
    body = detector.backbone.body.state_dict()
    # Every tensor of the stem and the seven block stages, BatchNorm statistics included: timm's names are the same
    # in the classifier and its features_only copy; the head (conv_head, bn2, classifier) stays out.
    assert set(body) == {k for k in trained if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    for key, value in body.items():
        assert torch.equal(value, trained[key]), key
    # The classifier's images were normalized with the synthetic data's mean and std: so are the detector's.
    assert detector.transform.image_mean == [0.5, 0.5, 0.5] and detector.transform.image_std == [0.25, 0.25, 0.25]


def test_a_classifier_trained_with_another_normalization_is_refused_with_the_values_to_set(classifier_run):
    with pytest.raises(UserError, match=r"Give the classifier's: .*model.net.image_std=\[0.25,0.25,0.25\]"):
        FasterRCNNLite0(backbone_run_dir=str(classifier_run))  # the default: EfficientNet-Lite0's 0.5 and 0.5


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "model.net._target_",
            "cnn_explorer.models.ConvNet",
            "that run is a classifier of net cnn_explorer.models.ConvNet",
        ),
        ("task", "detection", "that run is a detection run"),
        ("model.net.in_channels", 1, "that classifier takes 1-channel images"),
    ],
    ids=["other-net", "detection-run", "grey"],
)
def test_a_run_dir_of_another_architecture_is_refused(classifier_run, tmp_path, key, value, message):
    copy = tmp_path / "run"
    shutil.copytree(classifier_run, copy)
    edit_config(copy, key, value)
    with pytest.raises(UserError, match=re.escape(f"model.net.backbone_run_dir={copy}: {message}")):
        FasterRCNNLite0(backbone_run_dir=str(copy), **SYNTHETIC_NORMALIZATION)


def test_a_folder_that_is_not_a_run_dir_is_refused(tmp_path):
    with pytest.raises(
        UserError, match=re.escape(f"model.net.backbone_run_dir={tmp_path}: {tmp_path} is not a run dir")
    ):
        FasterRCNNLite0(backbone_run_dir=str(tmp_path), **SYNTHETIC_NORMALIZATION)


@pytest.mark.slow  # a detection train.py run, ~20 s
def test_train_py_starts_the_detector_from_the_classifiers_features(classifier_run, tmp_path):
    run_dir = tmp_path / "detector"
    result = run_cli(
        "train.py",
        *TINY_DETECTION,
        "trainer.max_epochs=1",
        "test=false",
        f"model.net.backbone_run_dir={classifier_run}",
        "model.net.image_std=[0.25,0.25,0.25]",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    initial = torch.load(run_dir / "initial_weights.pt", map_location="cpu", weights_only=True)
    trained = classifier_weights(classifier_run)
    assert torch.equal(initial["backbone.body.blocks.6.0.conv_pwl.weight"], trained["blocks.6.0.conv_pwl.weight"])
    assert torch.equal(initial["backbone.body.conv_stem.weight"], trained["conv_stem.weight"])
