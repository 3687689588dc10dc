"""What TensorBoard shows without a click (issue 18): train and val on one chart, a declared HParams experiment,
test results at the last epoch. A real Trainer and ExplorerTensorBoardLogger in tmp_path, read back from the
event files as TensorBoard reads them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from matplotlib.text import Text
from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from callbacks.confusion_matrix import ConfusionMatrixCallback
from callbacks.run_summary import RunSummaryCallback
from callbacks.tensorboard_logger import ExplorerTensorBoardLogger, log_step
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.models import ConvNet
from cnn_explorer.module import Classifier
from cnn_explorer.render.cards import (
    CARD_BOX,
    SIGNED_COLORMAP,
    _two_lines,
    attribution_card,
    confusion_card,
    confusion_table,
    feature_maps_card,
    filters_card,
    mistakes_card,
)
from cnn_explorer.render.figures import DPI, figure_to_image
from cnn_explorer.render.grids import ATTRIBUTION_COLORMAP
from cnn_explorer.render.image import clip_to_percentile, colormap_lut
from cnn_explorer.sources import SyntheticImages
from cnn_explorer.tensorboard_hparams import (
    declare_sweep,
    experiment_summary,
    hparam_order,
    read_session,
    session_summaries,
)


class Recorder(L.Callback):
    """Keeps the metrics Lightning's loops report, per epoch, to compare with what the event files hold."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.steps: list[tuple[str, int]] = []  # (hook, log_step there)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.append(("epoch end", log_step(trainer)))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.append(("test end", log_step(trainer)))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:  # the module logs an epoch's train/* after the callbacks' epoch end hooks
            self.record(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer)
        self.steps.append(("fit end", log_step(trainer)))

    def record(self, trainer: L.Trainer) -> None:
        names = ("train/acc", "train/loss", "val/acc", "val/loss")
        self.epochs.append({name: float(trainer.callback_metrics[name]) for name in names})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Recorder]:
    run_dir = tmp_path_factory.mktemp("default_view")
    L.seed_everything(0)
    source = SyntheticImages(96, 64, signal=0.3, channels=1, num_classes=4)
    datamodule = ImageClassificationDataModule(
        source, num_classes=4, channels=1, mean=[0.5], std=[0.25], val_size=32, batch_size=32
    )
    module = Classifier(ConvNet([4, "M"], hidden=8, in_channels=1, num_classes=4), optimizer=torch.optim.Adam)
    recorder = Recorder()
    logger = ExplorerTensorBoardLogger(str(run_dir), name="", version="", default_hp_metric=False)
    callbacks = [recorder, ConfusionMatrixCallback(), RunSummaryCallback()]
    trainer = L.Trainer(
        max_epochs=3, logger=logger, callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    params = {"lr": 0.001, "seed": 0, "batch_norm": True, "batch_size": 32, "model": "tiny", "dropout": 0.0}
    logger.log_hyperparams(params, {"hparams/test_acc": tested["test/acc"]})
    logger.finalize("success")
    return run_dir, recorder


def accumulate(path: Path) -> EventAccumulator:
    events = EventAccumulator(str(path), size_guidance={SCALARS: 0, TENSORS: 0})
    events.Reload()
    return events


def test_train_and_validation_are_two_runs_of_one_tag(run):
    run_dir, recorder = run
    train, validation = accumulate(run_dir / "train"), accumulate(run_dir / "validation")
    epochs = list(range(len(recorder.epochs)))
    for tag, metric in (("Curves/accuracy", "acc"), ("Curves/loss", "loss")):
        # One tag in both sub-runs: TensorBoard draws a line per run on one chart, one y scale.
        for events, prefix in ((train, "train"), (validation, "val")):
            assert [e.step for e in events.Scalars(tag)] == epochs
            logged = [e.value for e in events.Scalars(tag)]
            assert logged == pytest.approx([values[f"{prefix}/{metric}"] for values in recorder.epochs])
    assert set(train.Tags()["scalars"]) == set(validation.Tags()["scalars"]) == {"Curves/accuracy", "Curves/loss"}


def test_the_curves_group_opens_first_and_the_rest_stays_in_the_run(run):
    run_dir, _ = run
    root = accumulate(run_dir)
    tags = set(root.Tags()["scalars"])
    assert not tags & {"train/acc", "val/acc", "train/loss", "val/loss", "epoch"}
    assert {"val/acc_best", "test/acc", "test/loss"} <= tags
    # Time Series groups cards by the text before the first "/", sorts the groups case-sensitively (capitals
    # before lowercase) and opens the first two: "Curves" comes before every other group of the run.
    groups = sorted({tag.split("/")[0] for tag in [*tags, *root.Tags()["images"], "Curves/accuracy"]})
    assert groups[0] == "Curves"


def test_test_results_and_hparams_metrics_sit_at_the_last_epoch(run):
    run_dir, _ = run
    root = accumulate(run_dir)
    last = 2  # max_epochs=3: epochs 0, 1, 2
    for tag in ("test/acc", "test/loss", "hparams/test_acc"):
        assert [e.step for e in root.Scalars(tag)] == [last], tag
    assert root.Scalars("hparams/test_acc")[0].value == pytest.approx(root.Scalars("test/acc")[0].value)


def test_views_log_after_fitting_at_the_last_epoch(run):
    _, recorder = run
    # current_epoch is 3 after the 3 epochs (0, 1, 2): what is logged then belongs to epoch 2.
    assert recorder.steps == [("epoch end", 0), ("epoch end", 1), ("epoch end", 2), ("fit end", 2), ("test end", 2)]


def test_test_images_and_the_summary_sit_at_the_last_epoch(run):
    run_dir, _ = run
    root = accumulate(run_dir)
    assert [e.step for e in root.Images("confusion_matrix/test")] == [2]
    assert [e.step for e in root.Tensors("summary/text_summary")] == [2]


def test_the_hparams_experiment_is_declared_with_typed_values(run):
    run_dir, _ = run
    content = accumulate(run_dir).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    infos = {info.name: info for info in experiment.hparam_infos}
    # One run: the key settings first, in KEY_HPARAMS' order, then the rest as given.
    assert [info.name for info in experiment.hparam_infos] == [
        "lr", "seed", "model", "batch_size", "batch_norm", "dropout"
    ]  # fmt: skip
    assert infos["batch_norm"].type == api_pb2.DATA_TYPE_BOOL
    assert [v.number_value for v in infos["seed"].domain_discrete.values] == [0]
    assert infos["seed"].type == api_pb2.DATA_TYPE_FLOAT64  # TensorBoard's one number type
    assert infos["model"].type == api_pb2.DATA_TYPE_STRING
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (0.001, 0.001)
    metrics = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
    assert metrics[:3] == [("", "hparams/test_acc"), ("", "hparams/val_acc_best"), ("validation", "Curves/accuracy")]
    params = {"lr": 0.001, "seed": 0, "batch_norm": True, "batch_size": 32, "model": "tiny", "dropout": 0}
    assert read_session(run_dir) == (params, ["hparams/test_acc"])


def test_a_sweep_lists_what_differs_first_with_every_value_in_its_domain():
    sessions = [
        {"architecture": "small", "batch_norm": True, "batch_size": 64, "lr": 0.01, "seed": 1},
        {"architecture": "small", "batch_norm": True, "batch_size": 64, "lr": 0.001, "seed": 2},
        {"architecture": "small", "batch_norm": True, "batch_size": 64, "lr": 0.01, "seed": 3},
    ]
    assert hparam_order(sessions) == ["lr", "seed", "batch_size", "architecture", "batch_norm"]
    summary = experiment_summary(sessions, ["hparams/test_acc", "hparams/explain_gradient_deletion_auc"])
    data = plugin_data_pb2.HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content)
    infos = {info.name: info for info in data.experiment.hparam_infos}
    assert [v.number_value for v in infos["seed"].domain_discrete.values] == [1, 2, 3]
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (0.001, 0.01)
    tags = [m.name.tag for m in data.experiment.metric_infos]
    assert tags.count("hparams/test_acc") == 1 and tags[-1] == "hparams/explain_gradient_deletion_auc"
    start, end = session_summaries(sessions[0])
    assert start.value[0].tag == "_hparams_/session_start_info" and end.value[0].tag == "_hparams_/session_end_info"


def test_a_sweep_declares_one_experiment_over_its_jobs_sessions(tmp_path):
    for seed in (1, 2):
        job = ExplorerTensorBoardLogger(
            tmp_path / f"{seed - 1}_seed={seed}", name="", version="", declare_experiment=False
        )
        job.log_hyperparams({"model": "small", "seed": seed, "batch_norm": False}, {"hparams/test_acc": 0.5})
        job.finalize("success")
    (tmp_path / "2_seed=3").mkdir()  # a job that failed before writing its session

    assert declare_sweep(tmp_path, sorted(tmp_path.iterdir()))

    content = accumulate(tmp_path).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name for info in experiment.hparam_infos] == ["seed", "model", "batch_norm"]
    assert [v.number_value for v in experiment.hparam_infos[0].domain_discrete.values] == [1, 2]
    assert "hparams/test_acc" in [m.name.tag for m in experiment.metric_infos]


def outlier_map() -> torch.Tensor:
    """A 32 x 32 map: left half 0.5, right half 1.0, one pixel 1000. Sorted |map|: 512 x 0.5, 511 x 1.0, 1000; the
    99th percentile (linear, at position 0.99 x 1023 = 1012.77) lies between two 1.0s: the scale is 1.0."""
    grid = torch.full((32, 32), 0.5)
    grid[:, 16:] = 1.0
    grid[5, 20] = 1000.0
    return grid


def test_clipping_at_the_99th_percentile_keeps_the_map_visible_beside_one_outlier():
    maps = torch.stack([outlier_map(), -outlier_map()])
    clipped, scale = clip_to_percentile(maps, 99.0)
    assert scale.tolist() == [1.0, 1.0]
    assert clipped[0, 0, 0] == 0.5 and clipped[0, 0, 31] == 1.0 and clipped[0, 5, 20] == 1.0  # outlier clipped
    assert clipped[1, 0, 0] == -0.5 and clipped[1, 5, 20] == -1.0  # the sign is kept
    # Scaled by the maximum instead, the half at 0.5 would be 0.0005: black in inferno.
    assert (maps[0] / maps[0].abs().max())[0, 0] == pytest.approx(0.0005)
    # A map that is zero but for a few pixels (99th percentile 0) is scaled by its maximum; an all-zero map by 1.
    sparse = torch.zeros(1, 32, 32)
    sparse[0, 0, :3] = 4.0
    assert clip_to_percentile(sparse)[1].tolist() == [4.0]
    assert clip_to_percentile(torch.zeros(1, 4, 4))[1].tolist() == [1.0]


def colour_count(fig, rgb: torch.Tensor, tolerance: int = 2) -> int:
    pixels = figure_to_image(fig).permute(1, 2, 0).int()  # [H, W, 3]
    target = (rgb * 255).round().int()
    return int(((pixels - target).abs() <= tolerance).all(-1).sum())


def test_an_attribution_card_shows_the_map_beside_the_image_after_clipping():
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)  # black images: only the maps are coloured
    magnitude = attribution_card(images, outlier_map().expand(2, 32, 32), ["a", "b"], "gradient, epoch 0")
    # Two 32 px maps at 1x, each with a 16 x 32 half at 0.5: inferno's middle colour on 2 x 512 pixels.
    assert colour_count(magnitude, colormap_lut(ATTRIBUTION_COLORMAP)[128]) >= 2 * 512
    signed = torch.stack([outlier_map(), -outlier_map()])
    diverging = attribution_card(images, signed, ["a", "b"], "gradient x input, epoch 0")
    # Signed maps in RdBu_r centred at 0: +0.5 -> 0.75 of the colour map, -0.5 -> 0.25.
    lut = colormap_lut(SIGNED_COLORMAP)
    assert colour_count(diverging, lut[round(0.75 * 255)]) >= 512
    assert colour_count(diverging, lut[round(0.25 * 255)]) >= 512
    assert any("red +, blue -" in text.get_text() for text in diverging.texts)


IMAGENETTE_NAMES = [
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
]  # fmt: skip


def test_a_large_image_gets_its_map_blended_over_it_at_twice_the_size_beside_would_allow():
    # Ten 128 px black images, each map 0.5 on its left half and 1.0 on its right (outlier_map at 4x). Beside
    # their maps, with these names, the pairs would fit the card at 24 px; blended, one tile per image, 48 px:
    # two rows of five 54 px slots (the widest name line, "springer", is narrower) in 24 + 2 x (48 + 6 + 30) + 14
    # = 206 px of the 215. A blended pixel is half the gray image (0 here) and half the map's colour.
    maps = outlier_map().repeat_interleave(4, 0).repeat_interleave(4, 1).expand(10, 128, 128)
    card = attribution_card(torch.zeros(10, 3, 128, 128, dtype=torch.uint8), maps, IMAGENETTE_NAMES, "Grad-CAM")
    assert tuple(figure_to_image(card).shape[1:]) == (CARD_BOX[1], 321)
    half = colormap_lut(ATTRIBUTION_COLORMAP)[128] / 2
    # The left half of each 48 px tile: 48 x 24 pixels less the column where area averaging meets the right half.
    assert 10 * 48 * 22 <= colour_count(card, half) <= 10 * 48 * 24
    texts = [text.get_text() for text in card.texts]
    assert "English\nspringer" in texts and "tench" in texts and any(t.startswith("on the image:") for t in texts)
    assert min(text.get_fontsize() for text in card.texts) * DPI / 72 >= 9


@pytest.mark.parametrize(
    ("label", "lines"),
    [("English springer", "English\nspringer"), ("tench", "tench"), ("a bb c dd e", "a bb c\ndd e")],
)
def test_a_class_name_breaks_at_the_space_nearest_its_middle(label, lines):
    assert _two_lines(label) == lines


def test_every_card_is_drawn_at_the_size_tensorboard_shows():
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, :16] = 200  # a red top half: no card is blank
    activations = [torch.rand(8, 32, 32), torch.rand(8, 16, 16), torch.rand(8, 8, 8)]
    cards = {
        "filters": filters_card(torch.rand(3, 127, 209), "conv1 filters, epoch 3"),
        "feature maps": feature_maps_card(images[0], activations, ["conv1 32x32", "conv2 16x16", "conv3 8x8"], "cat"),
        "attributions": attribution_card(images, torch.randn(10, 32, 32), names, "gradient x input, epoch 3"),
        "mistakes": mistakes_card(images[:8], torch.arange(8), torch.arange(8).flip(0), torch.rand(8), names, "val"),
        "confusion": confusion_card(torch.randint(0, 50, (10, 10)), names, "val confusion (epoch 3): acc 41.0%"),
    }
    for name, fig in cards.items():
        height, width = figure_to_image(fig).shape[1:]
        # Time Series fits each image into a 326 x 215 px box (at a 1280 px window): drawn inside it, it shows at 1x.
        assert height == CARD_BOX[1] and width <= CARD_BOX[0], (name, width, height)
        sizes = [text.get_fontsize() for text in fig.findobj(Text) if text.get_text()]
        assert min(sizes) * DPI / 72 >= 9, name  # points -> px at the figures' DPI: 9 px text or more


def test_the_confusion_counts_go_to_a_markdown_table():
    table = confusion_table(torch.tensor([[3, 1], [0, 4]]), ["cat", "dog"])
    assert table.splitlines() == [
        "| true \\ predicted | 0 | 1 | total | recall |",
        "| --- | --- | --- | --- | --- |",
        "| 0 cat | 3 | 1 | 4 | 75.0% |",
        "| 1 dog | 0 | 4 | 4 | 100.0% |",
    ]
