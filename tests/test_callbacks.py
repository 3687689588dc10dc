"""The interpretability callbacks inside real Trainers, read back from real TensorBoard event files."""

import io

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
from callbacks.feature_maps import FeatureMapCallback
from callbacks.filters import FilterGridCallback
from callbacks.misclassified import MisclassifiedCallback
from callbacks.optimization import OptimizationView
from callbacks.run_summary import RunSummaryCallback
from cnn_explorer.augment import denormalize
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.interpret import confident_mistakes, confusion_matrix, most_confused_pairs
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
        "confusion_matrix/test": [1],  # at the last epoch of fitting (epochs 0 and 1)
    }
    assert {tag: [e.step for e in events] for tag, events in images.items()} == expected_steps


def test_images_are_drawn_at_the_size_tensorboards_card_shows_and_are_not_blank(logged):
    images, *_ = logged
    for tag, events in images.items():
        image = events[-1]
        # Time Series fits an image to the card's height: at exactly that height, it shows at 1x.
        assert image.height == CARD_BOX[1] and image.width <= CARD_BOX[0], (tag, image.width, image.height)
        assert pixels(image).std() > 10, tag


def test_attribution_maps_differ_between_probe_images(logged):
    images, *_ = logged
    card = pixels(images["attributions/gradient"][-1]).astype(float)
    # 20 probe images beside their maps, in rows under the title: 16 px strips of the tile area differ.
    strips = [card[24:-20, x : x + 16].mean() for x in range(0, card.shape[1] - 16, 16)]
    assert np.std(strips) > 1


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


def test_the_optimization_view_logs_the_learning_rate_and_each_layers_gradient_norm(tmp_path):
    trainer, module, datamodule = make_trainer(
        tmp_path, [OptimizationView()], max_epochs=1, logger=TensorBoardLogger(str(tmp_path), name="", version="")
    )
    grads = {}  # conv1's gradients before the last optimizer step, recorded independently of the view
    conv1 = module.net.features.conv1.conv
    conv1.weight.register_hook(lambda grad: grads.update(weight=grad.clone()))
    conv1.bias.register_hook(lambda grad: grads.update(bias=grad.clone()))
    trainer.fit(module, datamodule=datamodule)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    logged = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if "/" in tag}
    assert logged["optimization/lr"] == pytest.approx(1e-3)  # make_trainer's Adam
    # The last batch's gradients (the hooks kept the last ones): the same norm, computed here by hand.
    by_hand = (grads["weight"].pow(2).sum() + grads["bias"].pow(2).sum()).sqrt()
    assert logged["gradients/conv1"] == pytest.approx(float(by_hand), rel=1e-5) and by_hand > 0
    assert {"gradients/conv1", "gradients/conv2", "gradients/classifier.fc1", "gradients/classifier.fc2"} <= set(logged)


def test_the_run_summary_names_the_most_confused_test_pairs_without_a_confusion_matrix_view(tmp_path):
    trainer, module, datamodule = make_trainer(
        tmp_path, [RunSummaryCallback()], max_epochs=1, logger=TensorBoardLogger(str(tmp_path), name="", version="")
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    summary = events.Tensors("summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    # The pairs, from the test predictions of the same weights, computed here.
    module.eval()
    with torch.no_grad():
        inputs, _ = datamodule.prepare_batch((datamodule.test_images, datamodule.test_labels), train=False)
        predicted = module(inputs).argmax(1)
    matrix = confusion_matrix(predicted, datamodule.test_labels, 10)
    (true, wrong, rate), *_ = most_confused_pairs(matrix, 5)
    assert f"| most confused (test) | class{true} -> class{wrong} {rate:.1%}" in summary
