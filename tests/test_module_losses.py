"""The Classifier's epoch losses are means over images, as one pass over the whole split gives: a short last batch
weighs its own images, not as much as a full batch."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_explorer.module import Classifier


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
    for metric in (module.train_loss, module.val_loss, module.test_loss):
        assert float(metric.compute()) == pytest.approx(over_images, rel=1e-6)
