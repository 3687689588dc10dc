"""Lightning's TensorBoardLogger, arranged for people: learning curves first, the epoch as the x axis."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

# TensorBoard's Time Series page sorts tag groups (the part before "/") case-sensitively and opens the first
# two on load: capitalized groups come before every lowercase one, so the learning curves are what a user
# sees first. Train and val of a quantity sit side by side in one group.
TAGS = {"train/acc": "Accuracy/train", "val/acc": "Accuracy/val", "train/loss": "Loss/train", "val/loss": "Loss/val"}


class ExplorerTensorBoardLogger(TensorBoardLogger):
    """Writes scalars with the epoch as their step and the learning curves under ``Accuracy/`` and ``Loss/``.

    Lightning logs epoch-level metrics at the global step and adds an ``epoch`` scalar, a straight line that
    crowds the first screen; here the ``epoch`` value becomes the step instead (the images of the view callbacks
    use the same step, so an epoch's curves and pictures line up) and ``train/acc``, ``val/acc``, ``train/loss``,
    ``val/loss`` are written as ``Accuracy/train``, ``Accuracy/val``, ``Loss/train``, ``Loss/val`` (:data:`TAGS`).
    Other metrics keep their names. The CSV logger is unchanged: analyze.py reads the usual names there.
    Accepts every argument of ``TensorBoardLogger``.
    """

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        renamed = {TAGS.get(name, name): value for name, value in metrics.items()}
        super().log_metrics(renamed, step=int(epoch) if epoch is not None else step)
