"""What every interpretability callback shares: a cadence, rank-zero only, a TensorBoard writer, a probe."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from cnn_explorer.plots import figure_to_image


class TensorBoardImageCallback(L.Callback):
    """Base class: decides when to run and where images go; subclasses decide what to draw.

    A subclass calls :meth:`due` to know whether this epoch is one of its epochs, then :meth:`log_image`
    or :meth:`log_figure`. Nothing runs on ranks other than zero, and with no TensorBoard logger the
    callback warns once and does nothing (no files, no crash).

    Args:
        every_n_epochs: run after epochs ``n - 1, 2n - 1, ...`` (1 = every epoch).

    Raises:
        ValueError: if ``every_n_epochs`` is not a positive integer.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self._writer = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None:
            rank_zero_warn(
                f"{type(self).__name__} logs images to TensorBoard, but the trainer has no TensorBoardLogger"
            )
            self._writer = None
        else:
            self._writer = tensorboard.experiment  # a dummy on ranks other than zero

    def active(self, trainer: L.Trainer) -> bool:
        """Rank zero, a TensorBoard writer, and not Lightning's sanity check."""
        return self._writer is not None and trainer.is_global_zero and not trainer.sanity_checking

    def due(self, trainer: L.Trainer) -> bool:
        """:meth:`active`, and the current epoch is one of this callback's epochs."""
        return self.active(trainer) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def log_image(self, trainer: L.Trainer, tag: str, image: torch.Tensor) -> None:
        """Log an image ``[3, H, W]`` (float in [0, 1] or uint8) at the trainer's global step."""
        self._writer.add_image(tag, image, global_step=trainer.global_step)

    def log_figure(self, trainer: L.Trainer, tag: str, figure) -> None:  # figure: matplotlib Figure
        """Render a matplotlib figure and log it as an image at the trainer's global step."""
        self.log_image(trainer, tag, figure_to_image(figure))


def lightning_net(pl_module: L.LightningModule) -> nn.Module:
    """The plain net inside the LightningModule (``pl_module.net``), not a strategy wrapper around it."""
    return getattr(pl_module, "net", pl_module)


def probe_batch(trainer: L.Trainer, per_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The DataModule's fixed probe images: (uint8 images, normalized float images, labels), or None.

    None (after one warning) when the trainer has no DataModule with ``normalized_probe``.
    """
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "normalized_probe"):
        rank_zero_warn("interpretability callbacks need a CIFAR10DataModule (trainer.fit(..., datamodule=...))")
        return None
    return datamodule.normalized_probe(per_class)
