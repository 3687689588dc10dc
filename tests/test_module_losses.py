"""The Classifier's epoch losses are means over images, as one pass over the whole split gives: a short last batch
weighs its own images, not as much as a full batch."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_explorer.module import Classifier, EpochSums, first_nonfinite_step, skip_idle_hooks


def test_the_epoch_losses_are_means_over_images_not_over_batches():
    torch.manual_seed(0)
    module = Classifier(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), functools.partial(torch.optim.SGD, lr=0.1), num_classes=3
    )
    images, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]  # 3 images, then 1
    with torch.no_grad():
        per_image = F.cross_entropy(module.net(images), labels, reduction="none")
    over_images, over_batches = float(per_image.mean()), float((per_image[:3].mean() + per_image[3]) / 2)
    assert abs(over_images - over_batches) > 1e-3  # the two means differ on these numbers
    for i, batch in enumerate(batches):
        module.training_step(batch, i)
        with torch.no_grad():
            module.validation_step(batch, i)
            module.test_step(batch, i)
    assert float(module.train_sums.means()[0]) == pytest.approx(over_images, rel=1e-6)
    for metric in (module.val_loss, module.test_loss):
        assert float(metric.compute()) == pytest.approx(over_images, rel=1e-6)


def two_batches() -> EpochSums:
    """Batch 1: mean loss 2.0 over 3 images, predicted [0, 1, 0] for labels [0, 0, 1] (1 right); batch 2: mean loss
    0.5 over 1 image, predicted 1 for label 1 (right). Loss summed over images 2 * 3 + 0.5 = 6.5, 2 of 4 right."""
    sums = EpochSums.zeros("cpu")
    sums.add(torch.tensor(2.0), torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]]), torch.tensor([0, 0, 1]))
    sums.add(torch.tensor(0.5), torch.tensor([[0.0, 5.0]]), torch.tensor([1]))
    return sums


def test_the_epoch_sums_give_the_mean_loss_over_images_and_the_accuracy():
    sums = two_batches()
    assert (float(sums.loss), int(sums.correct), sums.images) == (6.5, 2, 4)
    loss, accuracy = sums.means()
    assert (float(loss), float(accuracy)) == (6.5 / 4, 0.5)


def test_the_epoch_sums_over_two_ranks_are_the_means_over_both_ranks_images():
    # The other rank: loss summed 1.5 over 2 images, both right. Over both: (6.5 + 1.5) / 6 and 4 / 6, not the mean
    # of the two ranks' means ((1.625 + 0.75) / 2, (0.5 + 1) / 2).
    other = {torch.float32: torch.tensor(1.5), torch.int64: torch.tensor([2, 2])}
    loss, accuracy = two_batches().means(lambda t: t + other[t.dtype])
    assert float(loss) == pytest.approx(8 / 6) and float(accuracy) == pytest.approx(4 / 6)


def test_the_first_non_finite_loss_is_found_by_its_step():
    assert int(first_nonfinite_step(torch.tensor([1.0, math.nan, math.inf, 2.0]), 10)) == 11
    assert int(first_nonfinite_step(torch.tensor([1.0, 2.0, -math.inf]), 0)) == 2
    assert int(first_nonfinite_step(torch.tensor([1.0, 2.0]), 7)) == -1


def classifier() -> Classifier:
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), functools.partial(torch.optim.SGD, lr=0.1), 2)


def test_the_epoch_sums_go_into_the_checkpoint_and_come_back_from_it():
    saving = classifier()
    saving.train_sums = two_batches()
    checkpoint = {"state_dict": saving.state_dict()}
    saving.on_save_checkpoint(checkpoint)
    assert not any(key.startswith("train") for key in checkpoint["state_dict"])  # not module state: DDP broadcasts it
    loading = classifier()
    loading.on_load_checkpoint(checkpoint)
    assert (float(loading.train_sums.loss), int(loading.train_sums.correct), loading.train_sums.images) == (6.5, 2, 4)


def test_a_checkpoint_with_the_earlier_torchmetrics_sums_loads_into_the_epoch_sums():
    # What the code before EpochSums saved for the two batches above: MeanMetric's sum and count of per-image losses,
    # MulticlassAccuracy's (micro) counts, 2 right (tp) and 2 wrong (fn, and fp), tn = 4 images * 1 other class - 2.
    old = {"train_loss.mean_value": torch.tensor(6.5), "train_loss.weight": torch.tensor(4.0)}
    old |= {f"train_acc.{name}": torch.tensor([count]) for name, count in (("tp", 2), ("fp", 2), ("tn", 2), ("fn", 2))}
    module = classifier()
    checkpoint = {"state_dict": {**module.state_dict(), **old}}
    module.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(module.state_dict())  # loads strictly
    assert (float(module.train_sums.loss), int(module.train_sums.correct), module.train_sums.images) == (6.5, 2, 4)


def test_lightning_skips_the_per_step_hooks_the_module_leaves_idle():
    # Lightning's dispatcher skips a hook that is not callable: the no-op hooks are None on the instance, the hook
    # the Classifier overrides (the non-finite watch in on_train_batch_end) is its own, and the class is unchanged.
    module = classifier()
    idle = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
    assert all(getattr(module, name) is None for name in (*idle, "on_before_zero_grad"))
    assert module.on_train_batch_end.__func__ is Classifier.on_train_batch_end
    assert Classifier.on_before_backward is L.LightningModule.on_before_backward
    assert skip_idle_hooks(module, L.LightningModule, ("on_train_batch_end", "on_before_backward")) == [
        "on_before_backward"
    ]


def test_the_hook_name_lightning_sets_around_each_hook_skips_nn_modules_checks_other_attributes_do_not():
    module = classifier()
    module._current_fx_name = "training_step"
    module.head = nn.Linear(2, 2)  # still registered as a submodule
    assert module.__dict__["_current_fx_name"] == "training_step" and "head" in dict(module.named_children())
