"""The outcome of a run as text in TensorBoard's Text tab, for a user browsing many runs."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import torch

from callbacks.base import TensorBoardImageCallback, class_names
from callbacks.confusion_matrix import ConfusionMatrixCallback
from cnn_explorer.interpret import most_confused_pairs

PAIRS = 5  # most confused pairs listed


class RunSummaryCallback(TensorBoardImageCallback):
    """Writes ``summary`` (a Markdown table) when the run ends: best validation epoch and accuracy, the test
    accuracy of the tested checkpoint and the most confused test pairs (from the ConfusionMatrixCallback's
    matrix, when it runs).

    Args:
        after_test: write after testing (train.py's ``test=true``); else at the end of fitting.

    Example::

        Trainer(callbacks=[ConfusionMatrixCallback(), RunSummaryCallback()], ...)
    """

    def __init__(self, after_test: bool = True) -> None:
        super().__init__(every_n_epochs=1)  # no time budget: it writes once
        self.after_test = after_test

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the summary is written once, at the end."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.after_test:
            self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.after_test:
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if not self.active(trainer):
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
        confusion = next((cb for cb in trainer.callbacks if isinstance(cb, ConfusionMatrixCallback)), None)
        matrix = confusion.matrices.get("test", confusion.matrices.get("val")) if confusion else None
        if matrix is not None:
            names = class_names(trainer, matrix.shape[0])
            pairs = most_confused_pairs(torch.as_tensor(matrix), PAIRS)
            stage = "test" if "test" in confusion.matrices else "val"
            text = ", ".join(f"{names[t]} -> {names[p]} {rate:.1%}" for t, p, rate in pairs) or "none"
            rows.append((f"most confused ({stage})", text))
        table = "\n".join(["| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])
        self._writer.add_text("summary", table, global_step=trainer.current_epoch)
