"""Every config option composes and instantiates; bad values get a message naming the key."""

import functools
import math

import lightning as L
import pytest
from hydra.utils import instantiate

from cnn_explorer.config import validate_train_config
from cnn_explorer.data import ImageClassificationDataModule
from cnn_explorer.errors import UserError
from cnn_explorer.models import ConvNet, count_parameters
from tests.conftest import CONF_DIR, compose_train_config

OPTIONS = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("data", "model", "trainer", "callbacks", "logger", "experiment", "task")
}
# task=detection's options (conf/task/detection.yaml composes them; tests/test_detection.py checks they compose);
# the tests below are about the classification task's.
DETECTION = {
    "data": {"detection_folder", "pennfudan", "synthetic_detection"},
    "model": {"faster_rcnn_lite0"},
    "callbacks": {"detection"},
}
CLASSIFICATION = {
    group: [o for o in options if o not in DETECTION.get(group, set())] for group, options in OPTIONS.items()
}


def test_every_group_has_the_documented_options():
    assert CLASSIFICATION["data"] == ["cifar10", "cifar10_folder", "imagenette", "synthetic"]
    assert CLASSIFICATION["model"] == [
        "airbench",
        "deep",
        "efficientnet_b0",
        "efficientnet_lite0",
        "medium",
        "mobilenet_v3_small",
        "resnet18",
        "resnet18_cifar",
        "small",
    ]
    assert {"default", "minimal"} <= set(OPTIONS["callbacks"])
    assert OPTIONS["task"] == ["classification", "detection"]
    assert all(options <= set(OPTIONS[group]) for group, options in DETECTION.items())


@pytest.mark.parametrize("data", CLASSIFICATION["data"])
def test_data_options_instantiate(data, tmp_path):
    cfg = compose_train_config([f"data={data}"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ImageClassificationDataModule) and datamodule.num_classes == 10


@pytest.mark.parametrize(("model", "params"), [("small", 620_362), ("medium", None), ("deep", None)])
def test_model_options_instantiate_with_optimizer_and_scheduler(model, params, tmp_path):
    cfg = compose_train_config([f"model={model}"], tmp_path)
    net = instantiate(cfg.model.net)
    assert isinstance(net, ConvNet)
    assert params is None or count_parameters(net) == params
    optimizer = instantiate(cfg.model.optimizer)
    assert isinstance(optimizer, functools.partial)
    scheduler = instantiate(cfg.model.scheduler)(optimizer(net.parameters()))
    assert scheduler.T_max == cfg.trainer.max_epochs == 20


@pytest.mark.parametrize("callbacks", CLASSIFICATION["callbacks"])
def test_callback_options_instantiate(callbacks, tmp_path):
    cfg = compose_train_config([f"callbacks={callbacks}"], tmp_path)
    made = {name: instantiate(c) for name, c in cfg.callbacks.items()}
    assert all(isinstance(c, L.Callback) for c in made.values())
    assert made["checkpoint"].monitor == "val/acc" and made["checkpoint"].dirpath == str(tmp_path / "checkpoints")


@pytest.mark.parametrize("logger", OPTIONS["logger"])
def test_logger_options_instantiate(logger, tmp_path):
    cfg = compose_train_config([f"logger={logger}"], tmp_path)
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    assert len(loggers) == (2 if logger == "default" else 0)


@pytest.mark.parametrize("trainer", OPTIONS["trainer"])
def test_trainer_options_compose(trainer, tmp_path):
    cfg = compose_train_config([f"trainer={trainer}"], tmp_path)
    if cfg.trainer.accelerator in ("auto", "cpu"):  # a GPU trainer cannot be built on this machine
        assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)
    else:
        assert cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("experiment", OPTIONS["experiment"])
def test_experiment_options_compose(experiment, tmp_path):
    cfg = compose_train_config([f"experiment={experiment}"], tmp_path)
    validate_train_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=0", "trainer.max_epochs must be a positive"),
        ("trainer.max_epochs=-1", "trainer.max_epochs must be a positive"),
        ("model.optimizer.lr=0", "model.optimizer.lr must be a positive"),
        ("model.optimizer.lr=-0.1", "model.optimizer.lr must be a positive"),
    ],
)
def test_bad_values_are_rejected_with_the_key(override, message, tmp_path):
    with pytest.raises(UserError, match=message):
        validate_train_config(compose_train_config([override], tmp_path))


def test_sync_batchnorm_on_the_cpu_is_refused_with_the_fix(tmp_path):
    cfg = compose_train_config(["trainer.accelerator=cpu", "trainer.sync_batchnorm=true"], tmp_path)
    with pytest.raises(UserError, match="trainer.sync_batchnorm=false"):
        validate_train_config(cfg)


def test_the_tasks_of_one_srun_step_share_one_run_dir(tmp_path, monkeypatch):
    """``srun -n 2 python train.py ...``: task 0 makes the run dir, task 1 (started in another second, so with
    another base) joins it instead of leaving a second dir with only .hydra/ and train.log."""
    from cnn_explorer import config

    monkeypatch.setattr(config, "_created_run_dirs", {})
    monkeypatch.setattr(config, "_created_parents", {})
    for key, value in {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(key, value)
    first = config.new_run_dir(str(tmp_path / "2026-12-06" / "12-00-00"))
    monkeypatch.setattr(config, "_created_run_dirs", {})  # task 1 is another process
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert config.new_run_dir(str(tmp_path / "2026-12-06" / "12-00-01")) == first
    assert sorted(p.name for p in (tmp_path / "2026-12-06").iterdir() if p.is_dir()) == ["12-00-00"]


def test_the_imagenette_resnet18_experiment_warms_up_then_anneals_over_the_run(tmp_path):
    cfg = compose_train_config(["experiment=imagenette_resnet18"], tmp_path)
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.model.net.name, cfg.model.label_smoothing) == (
        128,
        64,
        "resnet18",
        0.1,
    )
    optimizer = instantiate(cfg.model.optimizer)(instantiate(cfg.model.net).parameters())
    scheduler = instantiate(cfg.model.scheduler)(optimizer)
    lrs = []
    for _ in range(cfg.trainer.max_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 0.05 / 3, 2 x 0.05 / 3, then cosine from 0.05 over epochs 3..19 (17 epochs):
    # the last is 0.05 x (1 + cos(16 pi / 17)) / 2.
    assert lrs[:4] == pytest.approx([0.05 / 3, 0.1 / 3, 0.05, 0.05])
    assert lrs[-1] == pytest.approx(0.025 * (1 + math.cos(16 * math.pi / 17)))
