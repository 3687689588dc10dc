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
from tests.conftest import TINY, TINY_MINIMAL, run_cli


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


@pytest.fixture(scope="module")
def curves(run_dir) -> dict[str, EventAccumulator]:
    """The train and validation sub-runs, which hold the learning curves (callbacks.tensorboard_logger)."""
    subruns = {}
    for name in ("train", "validation"):
        subruns[name] = EventAccumulator(str(run_dir / name), size_guidance={SCALARS: 0})
        subruns[name].Reload()
    return subruns


def test_learning_curves_come_first_and_the_stray_epoch_counter_is_gone(events, curves):
    tags = events.Tags()["scalars"]
    for subrun in curves.values():
        assert set(subrun.Tags()["scalars"]) == {"Curves/accuracy", "Curves/loss"}
    assert not {"epoch", "train/acc", "val/acc", "train/loss", "val/loss"} & set(tags)
    # TensorBoard sorts groups case-sensitively and opens the first two: the curves must be the first.
    groups = sorted({tag.split("/")[0] for tag in [*tags, *events.Tags()["images"], "Curves/accuracy"]})
    assert groups[0] == "Curves"


def test_scalars_and_images_of_an_epoch_share_its_step(events, curves):
    epochs = [0, 1]
    for run, tag in (("train", "Curves/accuracy"), ("validation", "Curves/accuracy"), ("validation", "Curves/loss")):
        assert [e.step for e in curves[run].Scalars(tag)] == epochs, (run, tag)
    for tag in ("val/acc_best", "time/epoch_s", "time/views_s"):
        assert [e.step for e in events.Scalars(tag)] == epochs, tag
    for tag in ("filters/conv1", "attributions/grad_cam", "feature_maps/class0", "confusion_matrix/val"):
        assert [e.step for e in events.Images(tag)] == epochs, tag
    # The test and the HParams metrics sit at the last epoch, where the curves end.
    assert [e.step for e in events.Scalars("test/acc")] == [e.step for e in events.Scalars("hparams/test_acc")] == [1]


def test_test_images_and_the_summary_sit_at_the_last_epoch(events):
    assert [e.step for e in events.Images("confusion_matrix/test")] == [1]
    assert [e.step for e in events.Tensors("summary/text_summary")] == [1]


def test_the_views_seconds_are_part_of_each_epochs(events):
    epoch_s = [e.value for e in events.Scalars("time/epoch_s")]
    views_s = [e.value for e in events.Scalars("time/views_s")]
    # Every view draws in both epochs (view_time_budget=null), and the last adds the feature and explanation checks.
    assert all(0 < views < epoch for views, epoch in zip(views_s, epoch_s, strict=True))
    assert views_s[1] > views_s[0]


def test_every_image_is_drawn_at_the_size_the_card_shows_and_is_not_blank(events):
    width, height = CARD_BOX
    for tag in events.Tags()["images"]:
        image = events.Images(tag)[-1]
        # Time Series fits an image into a 326 x 215 px box at a 1280 px window: drawn 215 px high and at most
        # 326 px wide, it shows at 1x, its 9 px text 9 px.
        assert image.height == height and image.width <= width, (tag, image.width, image.height)
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
def test_the_page_a_user_first_meets_shows_the_curves_images_at_their_size_and_the_metrics(run_dir, tmp_path):
    from tools.tensorboard_view import DEFAULT_HEIGHT, capture_pages

    # As a user first meets it: a 1280 x 800 window, TensorBoard's own open and closed groups, no click, no scroll.
    pages = {shot.page: shot for shot in capture_pages(run_dir, tmp_path / "first")}
    (accuracy,) = [card for card in pages["timeseries"].cards if card.title == "Curves/accuracy"]
    assert accuracy.bottom <= DEFAULT_HEIGHT, "the accuracy chart is not wholly on the first screen"
    assert accuracy.runs == ("train", "validation")  # one chart, one y scale, a line per run in the run's colour
    assert len(set(accuracy.line_colours)) == 2 and set(accuracy.line_colours) == set(accuracy.run_colours)
    assert "best validation accuracy" in pages["text"].text
    ticked = {label for label, checked in pages["hparams"].checkboxes if checked}
    assert {"test acc", "best val acc"} <= ticked, ticked

    # The same state, the whole page: every image of the groups TensorBoard opens is shown at its drawn size.
    (whole,) = capture_pages(run_dir, tmp_path / "whole", full_page=True, pages=["timeseries"])
    assert whole.images, "no image card in the groups TensorBoard opens"
    for image in whole.images:
        scale = [shown / drawn for shown, drawn in zip(image.shown, image.natural, strict=True)]
        assert all(0.95 <= s <= 1.05 for s in scale), (image.title, image.natural, image.shown)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_every_image_card_is_shown_at_its_drawn_size_once_its_group_is_opened(run_dir, tmp_path):
    from tools.tensorboard_view import capture_pages

    (every,) = capture_pages(run_dir, tmp_path, full_page=True, open_groups=True, pages=["timeseries"])
    titles = {image.title.split("/")[0] for image in every.images}
    assert {"attributions", "channels", "confusion_matrix", "feature_maps", "filters", "misclassified"} <= titles
    for image in every.images:
        scale = [shown / drawn for shown, drawn in zip(image.shown, image.natural, strict=True)]
        assert all(0.95 <= s <= 1.05 for s in scale), (image.title, image.natural, image.shown)


@pytest.fixture(scope="module")
def sweep_pages(tmp_path_factory) -> dict:
    """TensorBoard's default view of a two-job sweep (seed=1,2), as a user first meets it."""
    from tools.tensorboard_view import capture_pages

    sweep_dir = tmp_path_factory.mktemp("sweep") / "sweep"
    result = run_cli(
        "train.py", "-m", *TINY_MINIMAL, "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {shot.page: shot for shot in capture_pages(sweep_dir, sweep_dir.parent / "shots")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_sweeps_first_screen_holds_every_jobs_train_and_validation_on_one_chart(sweep_pages):
    from tools.tensorboard_view import DEFAULT_HEIGHT

    (accuracy,) = [card for card in sweep_pages["timeseries"].cards if card.title == "Curves/accuracy"]
    assert accuracy.bottom <= DEFAULT_HEIGHT
    assert [run.rsplit("/", 1)[1] for run in accuracy.runs] == ["train", "validation"] * 2
    assert len({run.rsplit("/", 1)[0] for run in accuracy.runs}) == 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_sweeps_hparams_table_ticks_the_swept_setting_and_test_accuracy(sweep_pages):
    ticked = {label for label, checked in sweep_pages["hparams"].checkboxes if checked}
    assert {"seed", "test acc"} <= ticked, ticked
