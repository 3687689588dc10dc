"""The outcome of a run as text in TensorBoard's Text tab, for a user browsing many runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import torch

from callbacks.base import View, class_names
from callbacks.confusion_matrix import ConfusionCounts
from cnn_explorer.interpret import most_confused_pairs

PAIRS = 5  # most confused pairs listed


class RunSummaryCallback(View):
    """Writes ``summary`` (a Markdown table) when the run ends: best validation epoch and accuracy, the test
    accuracy of the tested checkpoint and the most confused pairs of the test set (of the last validation when
    there is no test), counted here from the predictions the loops return (no extra forward pass).

    Args:
        after_test: write after testing (train.py's ``test=true``); else at the end of fitting.

    Example::

        Trainer(callbacks=[RunSummaryCallback()], ...)
    """

    when = "end"  # once, outside the schedule's budget

    def __init__(self, after_test: bool = True) -> None:
        super().__init__()
        self.after_test = after_test
        self._confusion = ConfusionCounts()
        self._matrices: dict[str, torch.Tensor] = {}  # the last loop's per stage ("val", "test"), CPU counts

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._confusion.reset()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if not trainer.sanity_checking:
            self._confusion.update(outputs["logits"].detach(), batch[1].detach())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and (matrix := self._confusion.gather(pl_module)) is not None:
            self._matrices["val"] = matrix

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._confusion.reset()

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self._confusion.update(outputs["logits"].detach(), batch[1].detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (matrix := self._confusion.gather(pl_module)) is not None:
            self._matrices["test"] = matrix

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.after_test:
            self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.after_test:
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if self._writer is None or not trainer.is_global_zero:
            return
        rows = []
        metrics = trainer.callback_metrics
        best = next((cb for cb in trainer.checkpoint_callbacks if cb.monitor == "val/acc" and cb.best_model_path), None)
        if best is not None:
            epoch = re.search(r"epoch(\d+)", Path(best.best_model_path).name)
            # Lightning reloads only best_model_path when a checkpoint is resumed from another folder.
            score = best.best_model_score if best.best_model_score is not None else metrics.get("val/acc_best")
            if score is not None:
                rows.append(("best validation accuracy", f"{float(score):.2%}"))
            rows.append(("best epoch", epoch[1].lstrip("0") or "0" if epoch else "?"))
        if "test/acc" in metrics:
            tested = Path(best.best_model_path).name if best is not None else "the final weights"
            rows.append((f"test accuracy of {tested}", f"{float(metrics['test/acc']):.2%}"))
        stage = "test" if "test" in self._matrices else "val"
        if (matrix := self._matrices.get(stage)) is not None:
            names = class_names(trainer, matrix.shape[0])
            pairs = most_confused_pairs(matrix, PAIRS)
            text = ", ".join(f"{names[t]} -> {names[p]} {rate:.1%}" for t, p, rate in pairs) or "none"
            rows.append((f"most confused ({stage})", text))
        table = "\n".join(["| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])
        self.log_text(trainer, "summary", table)
