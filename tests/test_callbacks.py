"""The interpretability callbacks inside real Trainers, read back from real TensorBoard event files."""

import io
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from callbacks.attributions import AttributionCallback
from callbacks.confusion_matrix import ConfusionMatrixCallback
from callbacks.epoch_timer import EpochTimer
from callbacks.feature_maps import FeatureMapCallback
from callbacks.filters import FilterGridCallback
from callbacks.misclassified import MisclassifiedCallback
from cnn_explorer.augment import denormalize
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.interpret import confident_mistakes
from cnn_explorer.models import ConvNet
from cnn_explorer.module import Classifier
from cnn_explorer.render.cards import CARD_BOX
from cnn_explorer.sources import SyntheticImages
from tests.conftest import compose_train_config


def make_trainer(
    tmp_path, callbacks, channels: int = 3, **kwargs
) -> tuple[L.Trainer, Classifier, ImageClassificationDataModule]:
    L.seed_everything(0)
    # A weak signal so that the model still makes mistakes after two epochs.
    source = SyntheticImages(500, 200, signal=0.12, channels=channels)
    datamodule = ImageClassificationDataModule(
        source, channels=channels, mean=[0.5] * channels, std=[0.25] * channels, val_size=100, batch_size=32
    )
    net = ConvNet([8, "M", 16, "M"], hidden=32, in_channels=channels)
    module = Classifier(net, optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    defaults = dict(max_epochs=2, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    return L.Trainer(callbacks=callbacks, **{**defaults, **kwargs}), module, datamodule


def all_callbacks():
    return [
        FilterGridCallback(every_n_epochs=1),
        FeatureMapCallback(every_n_epochs=2, per_class=1, max_channels=4),
        AttributionCallback(every_n_epochs=1, per_class=2, methods=["gradient", "gradient_x_input"]),
        ConfusionMatrixCallback(every_n_epochs=1),
        MisclassifiedCallback(every_n_epochs=2, k=5),
    ]


def read_images(log_dir) -> dict[str, list]:
    events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def pixels(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tb")
    trainer, module, datamodule = make_trainer(
        log_dir, all_callbacks(), logger=TensorBoardLogger(str(log_dir), name="", version="")
    )
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in module.modules())
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    hooks_after = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in module.modules())
    return read_images(log_dir), module, hooks_before, hooks_after


def test_every_tag_is_logged_at_its_cadence_with_the_epoch_as_step(logged):
    images, *_ = logged
    classes = [f"class{i}" for i in range(10)]
    # Two probe images per class for the attributions; the feature-map cards show one per class, every 2 epochs.
    expected_steps = {
        "filters/conv1": [0, 1],
        **{f"feature_maps/{name}": [1] for name in classes},
        "attributions/gradient": [0, 1],
        "attributions/gradient_x_input": [0, 1],
        "confusion_matrix/val": [0, 1],
        "misclassified/val": [1],
        "confusion_matrix/test": [2],  # after the 2 epochs of fitting
    }
    assert {tag: [e.step for e in events] for tag, events in images.items()} == expected_steps


def test_images_fit_tensorboards_card_and_are_not_blank(logged):
    images, *_ = logged
    for tag, events in images.items():
        image = events[-1]
        assert min(CARD_BOX[0] / image.width, CARD_BOX[1] / image.height) >= 0.5, (tag, image.width, image.height)
        assert pixels(image).std() > 10, tag


def test_attribution_maps_differ_between_probe_images(logged):
    images, *_ = logged
    card = pixels(images["attributions/gradient"][-1]).astype(float)
    # 20 probe images in two rows of ten 64 px tiles: the tiles' mean colours are not all the same.
    top = 24 + 15  # title, then a label above the first row
    tiles = [card[top : top + 64, 6 + 70 * c + 3 : 6 + 70 * c + 3 + 64].mean() for c in range(10)]
    assert np.std(tiles) > 1


def test_the_model_comes_back_without_hooks_in_train_mode(logged):
    _, module, hooks_before, hooks_after = logged
    assert hooks_after == hooks_before == 0
    assert all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("kwargs", [{"logger": False}, {"fast_dev_run": True}])
def test_no_logger_or_fast_dev_run_warns_and_writes_nothing(tmp_path, kwargs):
    trainer, module, datamodule = make_trainer(tmp_path, all_callbacks(), default_root_dir=str(tmp_path), **kwargs)
    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        trainer.fit(module, datamodule=datamodule)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_rejected():
    bad = [
        (lambda: AttributionCallback(every_n_epochs=0), "every_n_epochs must be a whole number >= 1, got 0"),
        (lambda: AttributionCallback(per_class=0), "per_class must be a whole number >= 1"),
        (lambda: AttributionCallback(methods=["grad"]), r"methods must be a non-empty list of \['gradient'"),
        (lambda: MisclassifiedCallback(k=0), "k must be a whole number >= 1"),
        (lambda: FeatureMapCallback(max_channels=0), "max_channels must be"),
        (lambda: FeatureMapCallback(per_class=1.5), "per_class must be"),
        (lambda: FilterGridCallback(nrow=0), "nrow must be"),
        (lambda: FilterGridCallback(upscale=-1), "upscale must be"),
    ]
    for make, message in bad:
        with pytest.raises(ValueError, match=message):
            make()


def test_an_unknown_layer_is_refused_before_the_first_epoch(tmp_path):
    trainer, module, datamodule = make_trainer(
        tmp_path,
        [FeatureMapCallback(layers=["features.conv1", "features.conv9"])],
        logger=TensorBoardLogger(str(tmp_path), name="", version=""),
    )
    with pytest.raises(ValueError, match=r"callbacks.feature_maps.layers: unknown layer\(s\) \['features.conv9'\]"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0


def test_every_view_draws_grayscale_images(tmp_path):
    trainer, module, datamodule = make_trainer(
        tmp_path, all_callbacks(), channels=1, logger=TensorBoardLogger(str(tmp_path), name="", version="")
    )
    trainer.fit(module, datamodule=datamodule)
    images = read_images(tmp_path)
    assert {"filters/conv1", "feature_maps/class0", "attributions/gradient", "misclassified/val"} <= images.keys()
    for tag, events in images.items():
        assert pixels(events[-1]).std() > 10, tag


def test_callbacks_are_a_named_dict_that_can_be_tuned_or_dropped(tmp_path):
    cfg = compose_train_config(["callbacks.attributions.every_n_epochs=5", "~callbacks.feature_maps"], tmp_path)
    made = {name: instantiate(c) for name, c in cfg.callbacks.items()}
    assert "feature_maps" not in made and made["attributions"].every_n_epochs == 5
    assert {"filters", "confusion_matrix", "misclassified", "checkpoint"} <= made.keys()


def test_mistakes_are_the_validation_images_the_model_is_most_sure_and_wrong_about(tmp_path):
    callback = MisclassifiedCallback(k=5)
    trainer, module, datamodule = make_trainer(
        tmp_path, [callback], max_epochs=1, logger=TensorBoardLogger(str(tmp_path), name="", version="")
    )
    trainer.fit(module, datamodule=datamodule)
    images, labels, predictions, _ = callback._running.result()
    # The same mistakes found independently: every validation image through the trained net, in eval mode.
    module.eval()
    with torch.no_grad():
        inputs, _ = datamodule.prepare_batch((datamodule.val_images, datamodule.val_labels), train=False)
        logits = module(inputs)
    expected = confident_mistakes(logits, datamodule.val_labels, k=5)
    assert len(expected.indices) == 5
    shown = (denormalize(images, datamodule.mean, datamodule.std) * 255).round().to(torch.uint8)
    assert torch.equal(shown, datamodule.val_images[expected.indices])
    assert labels.tolist() == datamodule.val_labels[expected.indices].tolist()
    assert predictions.tolist() == expected.predictions.tolist()


def test_the_views_share_one_time_budget_and_take_turns(monkeypatch):
    # The clock: start; a draws 10-11 s; checks at 20 (b), 30 (b, a), 50 (a); b draws 50-50.5 s; checks at 51, 60 (a)
    clock = iter([0.0, 10.0, 10.0, 11.0, 20.0, 30.0, 30.0, 50.0, 50.0, 50.5, 51.0, 60.0])
    monkeypatch.setattr("callbacks.base.time.perf_counter", lambda: next(clock))
    a, b = FilterGridCallback(time_budget=0.05), FeatureMapCallback(time_budget=0.05)
    trainer = SimpleNamespace(callbacks=[a, b], current_epoch=0, sanity_checking=False)
    for view in (a, b):
        view._writer = object()  # a TensorBoard writer: the views are due every epoch
        view.on_train_start(trainer, None)  # t = 0: a opens the ledger, b joins it
    assert a.within_budget(trainer) and b.within_budget(trainer)  # the first epoch always draws (no clock read)
    trainer.current_epoch = 1
    assert a.within_budget(trainer)  # t = 10: nothing spent yet
    with a.spending(trainer):  # t = 10 .. 11: one second drawing
        pass
    assert not b.within_budget(trainer)  # t = 20: a's 1 s > 5% of 19 s of training (0.95 s), though b spent none
    assert b.within_budget(trainer)  # t = 30: 1 s <= 5% of 29 s (1.45 s)
    assert not a.within_budget(trainer)  # t = 30: 1 s spent + a's own last 1 s would exceed 1.45 s
    assert not a.within_budget(trainer)  # t = 50: 2 s fit in 2.45 s, but b never drew: b goes first
    with b.spending(trainer):  # t = 50 .. 50.5
        pass
    assert not a.within_budget(trainer)  # t = 51: 1.5 s spent fit in 2.475 s, but not with a's next 1 s
    assert a.within_budget(trainer)  # t = 60: 2.5 s <= 2.925 s
    with pytest.raises(ValueError, match="time_budget must be a fraction"):
        FilterGridCallback(time_budget=2)


@pytest.mark.parametrize("view", [ConfusionMatrixCallback(time_budget=0.05), MisclassifiedCallback(time_budget=0.05)])
def test_views_that_draw_after_validation_do_not_also_book_a_drawing_after_the_training_epoch(view):
    # A booked no-op would reset the view's predicted cost to ~0 s and send it to the back of the turn order.
    trainer = SimpleNamespace(
        callbacks=[view], current_epoch=1, sanity_checking=False, is_global_zero=True, max_epochs=5, should_stop=False
    )
    view._writer = object()
    view.on_train_start(trainer, None)
    view.on_train_epoch_end(trainer, None)
    assert view not in view._ledger.last_drawn and view._ledger.spent == 0


def test_the_epoch_timer_logs_each_epochs_seconds_and_the_views_share_of_them(monkeypatch):
    # The clock: the ledger opens at 0; epoch 0 runs 0-10 with a view drawing 2-3 s; epoch 1 runs 10-20, drawing
    # 12-12.5 s. So epoch_s is 10 and 10, views_s 1 and 0.5 (the views' seconds of that epoch, not since the start).
    clock = iter([0.0, 0.0, 2.0, 3.0, 10.0, 10.0, 12.0, 12.5, 20.0])
    monkeypatch.setattr("callbacks.base.time.perf_counter", lambda: next(clock))
    view, timer = FilterGridCallback(time_budget=0.05), EpochTimer()
    trainer = SimpleNamespace(callbacks=[view, timer], current_epoch=0)
    logged = []
    module = SimpleNamespace(log=lambda name, value, **_: logged.append((name, value)))
    view.on_train_start(trainer, module)
    for epoch in (0, 1):
        trainer.current_epoch = epoch
        timer.on_train_epoch_start(trainer, module)
        with view.spending(trainer):
            pass
        timer.on_train_epoch_end(trainer, module)
    assert logged == [("time/epoch_s", 10.0), ("time/views_s", 1.0), ("time/epoch_s", 10.0), ("time/views_s", 0.5)]
    # Without views, only the epoch's seconds.
    logged.clear()
    clock = iter([0.0, 4.0])
    alone = SimpleNamespace(callbacks=[timer], current_epoch=0)
    timer.on_train_epoch_start(alone, module)
    timer.on_train_epoch_end(alone, module)
    assert logged == [("time/epoch_s", 4.0)]
