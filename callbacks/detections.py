"""A detector's boxes on the first validation images every few epochs; at the last epoch, the precision-recall
curve and the score-threshold table of the whole validation split."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from callbacks.base import ImageView, last_epoch
from cnn_explorer.detection.analysis import THRESHOLDS, match_detections, precision_recall, threshold_table
from cnn_explorer.errors import BadArgument, check_positive
from cnn_explorer.render.boxes import (
    BoxesOnImage,
    detections_card,
    legend,
    precision_recall_figure,
    threshold_markdown,
)
from cnn_explorer.render.cards import CARD_BOX
from cnn_explorer.render.figures import DPI

Target = dict[str, torch.Tensor]


class DetectionsView(ImageView):
    """Logs the first ``probe_images`` validation images with their ground-truth boxes and the predictions scored
    >= ``score_threshold``, one card per image (``detections/<image name>``, a whole card each: a street photo
    shrunk into a shared card leaves its pedestrians a few pixels tall). After the last epoch also the
    precision-recall curve at IoU 0.5 (``precision_recall/val``) and the score-threshold table in the Text tab
    (``detections/thresholds``), from every validation image.

    It reads the predictions ``Detector.validation_step`` returns, so it costs no forward pass of its own. Under
    DDP it draws rank zero's share of the validation images.

    Args:
        every_n_epochs: cadence in epochs (and always the last epoch).
        probe_images: how many validation images to draw, the first of the split.
        score_threshold: predictions drawn on the probe images have at least this score, in (0, 1).

    Raises:
        BadArgument: (a ``ValueError``) on a count that is not a positive integer or a threshold outside (0, 1).

    Example::

        Trainer(callbacks=[DetectionsView(probe_images=4)], logger=TensorBoardLogger("runs"))
    """

    when = "validation"
    at_last_epoch = True  # the precision-recall curve of the final weights

    def __init__(self, every_n_epochs: int = 1, probe_images: int = 4, score_threshold: float = 0.5) -> None:
        super().__init__(every_n_epochs)
        check_positive(probe_images=probe_images)
        if not 0 < score_threshold < 1:
            raise BadArgument(f"score_threshold must be in (0, 1), got {score_threshold!r}")
        self.probe_images, self.score_threshold = probe_images, score_threshold
        self._reset()

    def _reset(self) -> None:
        self._images: list[torch.Tensor] = []  # the first probe_images validation images, float [3, H, W]
        self._predictions: list[Target] = []
        self._targets: list[Target] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if not (trainer.is_global_zero and self.due(trainer)):
            return
        images, targets = batch
        for image, prediction, target in zip(images, outputs, targets, strict=True):
            if len(self._images) < self.probe_images:
                self._images.append(image.detach().cpu())
            self._predictions.append({k: prediction[k].detach().cpu() for k in ("boxes", "scores", "labels")})
            self._targets.append({k: target[k].detach().cpu() for k in ("boxes", "labels")})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._predictions and self.may_draw(trainer):
            with self.drawing(trainer):
                self.draw_validation(trainer)
        self._reset()

    def draw_validation(self, trainer: L.Trainer) -> None:
        """Log the probe cards and, at the last epoch, the curve and the table (rank zero)."""
        epoch = trainer.current_epoch
        names = list(getattr(trainer.datamodule, "val_names", []))
        matches = match_detections(self._predictions, self._targets)
        found = matches.found(self.score_threshold)
        for i, image in enumerate(self._images):
            name = names[i] if i < len(names) else f"val{i}"
            keep = self._predictions[i]["scores"] >= self.score_threshold
            truth = self._targets[i]["boxes"]
            hits = int(found[matches.gt_image == i].sum())
            item = BoxesOnImage(
                image,
                truth,
                self._predictions[i]["boxes"][keep],
                self._predictions[i]["scores"][keep],
                f"{name}, epoch {epoch}: {hits} of {len(truth)} found, boxes shown: {int(keep.sum())}",
            )
            self.log_figure(trainer, f"detections/{name}", detections_card(item, legend(self.score_threshold)))
        if last_epoch(trainer):
            curve = precision_recall(matches)
            title = f"val ({matches.num_images} images, {matches.num_objects} objects), epoch {epoch}"
            size = (CARD_BOX[0] / DPI, CARD_BOX[1] / DPI)
            figure = precision_recall_figure(
                curve.recall, curve.precision, curve.scores, curve.average_precision, THRESHOLDS, title, size
            )
            self.log_figure(trainer, "precision_recall/val", figure)
            self.log_text(trainer, "detections/thresholds", threshold_markdown(threshold_table(matches)))
