"""train() in-process on synthetic data: it learns, it is reproducible, and resuming changes nothing."""

import pytest
import torch

from tests.conftest import TINY, compose_train_config
from train import train


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_training_beats_chance_clearly_and_tests_the_best_checkpoint(tmp_path):
    metrics = train(compose_train_config(TINY, tmp_path))
    assert metrics["val/acc_best"] > 0.6  # chance is 0.1
    assert metrics["test/acc"] > 0.6
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    assert len(list((tmp_path / "checkpoints").glob("epoch*.ckpt"))) == 1


def test_same_seed_same_metrics_different_seed_different(tmp_path):
    first = train(compose_train_config([*TINY, "test=false"], tmp_path / "a"))
    second = train(compose_train_config([*TINY, "test=false"], tmp_path / "b"))
    other = train(compose_train_config([*TINY, "test=false", "seed=7"], tmp_path / "c"))
    assert first["train/loss"] == second["train/loss"] and first["val/loss"] == second["val/loss"]
    assert first["train/loss"] != other["train/loss"]


@pytest.mark.slow  # several full runs: the long checks (pytest -m slow; CI runs them too)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    dropout = [*TINY, "model=deep", "test=false"]  # deep has dropout and BatchNorm: RNG and buffers must resume too
    whole = train(compose_train_config(dropout, tmp_path / "whole"))

    interrupted = tmp_path / "interrupted"
    stop = ["+callbacks.stop._target_=tests.interrupt.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    partial = train(compose_train_config([*dropout, *stop], interrupted))
    assert partial["val/loss"] != whole["val/loss"]
    resumed = train(
        compose_train_config([*dropout, f"ckpt_path={interrupted / 'checkpoints' / 'last.ckpt'}"], interrupted)
    )

    assert resumed["val/loss"] == whole["val/loss"] and resumed["val/acc_best"] == whole["val/acc_best"]
    for name, tensor in final_weights(tmp_path / "whole").items():
        assert torch.equal(tensor, final_weights(interrupted)[name]), name
    assert len(list((interrupted / "csv").glob("version_*/metrics.csv"))) == 2  # the first run's CSV is kept
