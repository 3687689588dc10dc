"""airbench's data-dependent first layer: whitening weights from the training images before the first step, and
the whitening bias trained for the first epochs only."""

from __future__ import annotations

import lightning as L
import torch

from callbacks.base import lightning_net
from cnn_explorer.airbench import freeze_whitening_bias, whitening_images
from cnn_explorer.errors import BadArgument, UserError, check_positive


class PatchWhitening(L.Callback):
    """Sets the net's frozen whitening conv from ``images`` training images as fitting starts, and lets the optimizer
    move its bias during the first ``bias_epochs`` epochs only (Jordan 2024, arXiv:2404.00498; ``whiten_bias_epochs``).

    The weights are set in ``setup``, before a resumed run's checkpoint is restored (which then replaces them with
    the run's own) and before DDP wraps the net (which then copies rank zero's to every rank). The images are a
    fixed random subset of the training split (the DataModule's ``eval_batches``: normalized, not augmented), the
    same for every run on the same data.

    Args:
        images: training images the patch statistics are taken from (airbench: 5000).
        bias_epochs: epochs during which the whitening bias is trained; 0 keeps it at its initial 0.
        eps: added to the eigenvalues (:func:`cnn_explorer.airbench.patch_whitening`).

    Raises:
        BadArgument: on a non-positive ``images``, a negative ``bias_epochs`` or ``eps``.
        UserError: when fitting starts, if the net has no ``whiten_from`` (it is not an
            :class:`~cnn_explorer.airbench.AirbenchNet`) or the DataModule no ``eval_batches``.

    Example::

        Trainer(callbacks=[PatchWhitening(images=5000, bias_epochs=3)])
    """

    def __init__(self, images: int = 5000, bias_epochs: int = 3, eps: float = 5e-4) -> None:
        check_positive(images=images)
        if not isinstance(bias_epochs, int) or bias_epochs < 0:
            raise BadArgument(f"callbacks.whitening.bias_epochs must be an int >= 0, got {bias_epochs!r}")
        if eps < 0:
            raise BadArgument(f"callbacks.whitening.eps must be >= 0, got {eps}")
        self.images, self.bias_epochs, self.eps = images, bias_epochs, eps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        net = lightning_net(pl_module)
        if not hasattr(net, "whiten_from"):
            raise UserError(
                f"callbacks.whitening sets the whitening layer of an AirbenchNet, and {type(net).__name__} has none: "
                f"use model=airbench, or drop the callback with ~callbacks.whitening"
            )
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "eval_batches"):
            raise UserError(
                f"callbacks.whitening needs the training images from an ImageClassificationDataModule, not "
                f"{type(datamodule).__name__}: drop it with ~callbacks.whitening"
            )
        net.whiten_from(whitening_images(datamodule, self.images), self.eps)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # The gradient is dropped rather than the bias made requires_grad=False: DDP expects a gradient for every
        # parameter that required one when it wrapped the net, at every step.
        freeze_whitening_bias(lightning_net(pl_module), trainer.current_epoch, self.bias_epochs)
