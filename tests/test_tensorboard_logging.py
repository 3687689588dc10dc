"""What a run writes for TensorBoard, read back from its event files as TensorBoard reads them: curves first, the
epoch as the step of scalars and images alike, cards that fit TensorBoard's card, a text summary, HParams,
the projector; and, where Chromium is installed, the page a user sees."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cnn_explorer.render.cards import CARD_BOX
from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tensorboard") / "run"
    result = run_cli("train.py", *TINY, f"hydra.run.dir={run_dir}")  # the default callbacks: every view
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0, SCALARS: 0, TENSORS: 0})
    accumulator.Reload()
    return accumulator


def test_learning_curves_come_first_and_the_stray_epoch_counter_is_gone(events):
    tags = events.Tags()["scalars"]
    assert {"Accuracy/train", "Accuracy/val", "Loss/train", "Loss/val"} <= set(tags)
    assert "epoch" not in tags and "train/acc" not in tags
    # TensorBoard sorts groups case-sensitively and opens the first two: these must be the curves.
    groups = sorted({tag.split("/")[0] for tag in [*tags, *events.Tags()["images"]]})
    assert groups[:2] == ["Accuracy", "Loss"]


def test_scalars_and_images_of_an_epoch_share_its_step(events):
    epochs = [0, 1]
    for tag in ("Accuracy/train", "Accuracy/val", "Loss/val", "val/acc_best", "time/epoch_s", "time/views_s"):
        assert [e.step for e in events.Scalars(tag)] == epochs, tag
    for tag in ("filters/conv1", "attributions/grad_cam", "feature_maps/class0", "confusion_matrix/val"):
        assert [e.step for e in events.Images(tag)] == epochs, tag
    # The test and the test's confusion matrix: one step, after the last epoch.
    assert [e.step for e in events.Scalars("test/acc")] == [e.step for e in events.Images("confusion_matrix/test")]


def test_the_views_seconds_are_part_of_each_epochs(events):
    epoch_s = [e.value for e in events.Scalars("time/epoch_s")]
    views_s = [e.value for e in events.Scalars("time/views_s")]
    # Every view draws in both epochs (view_time_budget=null), and the last adds the feature and explanation checks.
    assert all(0 < views < epoch for views, epoch in zip(views_s, epoch_s, strict=True))
    assert views_s[1] > views_s[0]


def test_every_image_fits_the_card_and_is_not_blank(events):
    width, height = CARD_BOX
    for tag in events.Tags()["images"]:
        image = events.Images(tag)[-1]
        # Shown at half its size or more in the 375 x 215 card: its 12 px text stays 6 px or more.
        assert min(width / image.width, height / image.height) >= 0.5, (tag, image.width, image.height)
        pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        assert pixels.std() > 10, tag


def test_the_text_summary_holds_the_test_accuracy_train_py_logged(run_dir, events):
    (text,) = events.Tensors("summary/text_summary")
    summary = text.tensor_proto.string_val[0].decode()
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    logged = float(next(r["test/acc"] for r in rows if r.get("test/acc")))
    assert f"{logged:.2%}" in summary and "best validation accuracy" in summary and "most confused" in summary


def test_hparams_hold_the_settings_and_the_final_metrics(run_dir, events):
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "small" and hparams["data"].string_value == "synthetic"
    assert hparams["lr"].number_value == pytest.approx(0.001) and hparams["parameters"].number_value == 620_362
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/val_acc_best", "hparams/test_acc", "hparams/explain_grad_cam_deletion_auc"} <= metrics
    test_acc = events.Scalars("hparams/test_acc")[0].value
    assert test_acc == pytest.approx(events.Scalars("test/acc")[0].value)


def test_explanation_and_feature_scores_are_logged_at_the_last_epoch(events):
    tags = set(events.Tags()["scalars"])
    for method in ("gradient", "grad_cam", "guided_backprop"):
        for score in ("deletion_auc", "insertion_auc", "randomization"):
            assert [e.step for e in events.Scalars(f"explain/{method}/{score}")] == [1]
    for layer in ("conv1", "conv2", "conv3"):
        assert {f"features/{layer}/{name}" for name in ("sparsity", "probe_accuracy", "selectivity")} <= tags
        assert 0 <= events.Scalars(f"features/{layer}/probe_accuracy")[-1].value <= 1
    assert {"channels/conv1", "channels/conv2", "channels/conv3"} <= set(events.Tags()["images"])


def test_the_projector_has_one_label_per_embedding_row(run_dir):
    (metadata,) = run_dir.glob("*/penultimate/metadata.tsv")
    (tensors,) = run_dir.glob("*/penultimate/tensors.tsv")
    labels = metadata.read_text().splitlines()
    rows = tensors.read_text().splitlines()
    assert len(labels) == len(rows) == 200  # 20 validation images per class of the tiny run, all 10 classes
    assert len(rows[0].split("\t")) == 256  # the penultimate layer of model=small
    assert (run_dir / "projector_config.pbtxt").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_shows_the_curves_cards_and_summary(run_dir, tmp_path):
    from tools.tensorboard_view import capture_pages

    pages = {shot.page: shot for shot in capture_pages(run_dir, tmp_path, width=1400, height=900)}
    timeseries = pages["timeseries"].text
    for title in ("Accuracy/train", "Accuracy/val", "Loss/train", "Loss/val", "attributions/grad_cam"):
        assert title in timeseries, title
    assert "best validation accuracy" in pages["text"].text
    assert "hparams/test_acc" in pages["hparams"].text
