"""How the run trained: loss and accuracy per epoch, the best epoch, train-vs-val gaps, epoch time."""

from __future__ import annotations

import math
import statistics
from typing import Any

from torch import nn

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.render.charts import accuracy_curves_figure, loss_curves_figure
from cnn_explorer.report.markdown import figure, num, pct, signed, signed_pp
from cnn_explorer.report.section import SectionResult
from cnn_explorer.rundir import MetricsLog

KEY = "training"
LOSS_FIGURE, ACCURACY_FIGURE = "loss_curves.png", "accuracies.png"
OVERFIT_RISE = 0.05  # val loss this far (relative) above its minimum at the end counts as rising
CURVES = ("train/loss", "train/acc", "val/loss", "val/acc")


def compute(ev: Evaluation) -> SectionResult:
    """Best epoch (argmax val/acc, the first on ties), train-vs-val gaps there and at the end, timing, curves."""
    metrics = ev.run.metrics
    val_acc = metrics.get("val/acc")
    logged = [i for i, v in enumerate(val_acc) if not math.isnan(v)]
    best = max(logged, key=lambda i: (val_acc[i], -i)) if logged else None
    val_loss = metrics.get("val/loss")
    loss_logged = [i for i, v in enumerate(val_loss) if not math.isnan(v)]
    lowest = min(loss_logged, key=lambda i: (val_loss[i], i)) if loss_logged else None
    seconds = [s for s in metrics.get("time/epoch_s") if not math.isnan(s)]
    smoothing = float(ev.run.config.model.get("label_smoothing", 0.0) or 0.0)
    best_epoch = metrics.epochs[best] if best is not None else None
    numbers = {
        "epochs": len(metrics.epochs),
        "best_epoch": best_epoch,
        "best_val_acc": val_acc[best] if best is not None else None,
        "last_epoch": metrics.epochs[-1] if metrics.epochs else None,
        "gap_best": _gap(metrics, best),
        "gap_end": _gap(metrics, len(metrics.epochs) - 1 if metrics.epochs else None),
        "val_loss_min_epoch": metrics.epochs[lowest] if lowest is not None else None,
        "val_loss_min": val_loss[lowest] if lowest is not None else None,
        "val_loss_last": val_loss[loss_logged[-1]] if loss_logged else None,
        # The median, not the mean: the first epoch also pays for start-up (imports, data to device, warm-up).
        "sec_per_epoch": statistics.median(seconds) if seconds else None,
        "first_epoch_s": seconds[0] if seconds else None,
        "overfit_rise": OVERFIT_RISE,
        "dropout": any(isinstance(m, nn.modules.dropout._DropoutNd) for m in ev.net.modules()),
        "label_smoothing": smoothing,
        "smoothed_loss_floor": smoothed_loss_floor(smoothing, ev.test.logits.shape[1]) if smoothing else None,
        "curves": {"epoch": metrics.epochs} | {name: metrics.get(name) for name in CURVES},
        "metrics_files": [str(p.relative_to(ev.run.dir)) for p in metrics.files],
    }
    figures = {
        LOSS_FIGURE: loss_curves_figure(metrics.epochs, metrics.get("train/loss"), metrics.get("val/loss"), best_epoch),
        ACCURACY_FIGURE: accuracy_curves_figure(
            metrics.epochs, metrics.get("train/acc"), metrics.get("val/acc"), best_epoch
        ),
    }
    return SectionResult(numbers, figures)


def smoothed_loss_floor(smoothing: float, classes: int) -> float:
    """The least label-smoothed cross-entropy any logits can reach: the entropy of the smoothed target, which puts
    ``1 - smoothing + smoothing / classes`` on the label and ``smoothing / classes`` on each other class (PyTorch's
    ``label_smoothing``; Szegedy et al. 2016, "Rethinking the Inception Architecture", section 7)."""
    on, off = 1.0 - smoothing + smoothing / classes, smoothing / classes
    return -(on * math.log(on) + (classes - 1) * off * math.log(off)) if off > 0 else 0.0


def _gap(metrics: MetricsLog, index: int | None) -> dict[str, Any] | None:
    if index is None:
        return None
    row = {name: metrics.get(name)[index] for name in CURVES}
    return {
        "epoch": metrics.epochs[index],
        "train_acc": row["train/acc"],
        "val_acc": row["val/acc"],
        "acc_gap_pp": 100 * (row["train/acc"] - row["val/acc"]),
        "train_loss": row["train/loss"],
        "val_loss": row["val/loss"],
        "loss_gap": row["val/loss"] - row["train/loss"],
    }


def markdown(summary: dict[str, Any]) -> str:
    t = summary[KEY]
    dropout = ", dropout on," if t.get("dropout") else ""
    lines = [
        "## Learning curves",
        "",
        figure(LOSS_FIGURE, "Loss per epoch"),
        "",
        figure(ACCURACY_FIGURE, "Accuracy per epoch"),
        "",
        "What they show: the mean cross-entropy and the accuracy per epoch on the training batches and on the "
        f"validation split. Training values are measured on augmented batches{dropout} "
        "and averaged over the epoch while the weights change, so early on they can sit *below* validation.",
        "",
    ]
    smoothing = t.get("label_smoothing") or 0.0
    if smoothing:
        lines += [
            f"The training loss is the label-smoothed cross-entropy (label_smoothing {smoothing:g}, Szegedy et al. "
            f"2016): no logits bring it below {num(t['smoothed_loss_floor'])}, the entropy of the smoothed targets. "
            "The validation loss is the plain cross-entropy, so the two losses are not compared here; the "
            "accuracies are.",
            "",
        ]
    best, end = t["gap_best"], t["gap_end"]
    same = best is not None and end is not None and best["epoch"] == end["epoch"]
    gaps = (
        [("At the best epoch, which is also the last", best)]
        if same
        else [("At the best epoch", best), ("At the end", end)]
    )
    for label, gap in gaps:
        if gap is None:
            continue
        loss_gap = "smoothed" if smoothing else f"val - train = {signed(gap['loss_gap'])}"
        lines.append(
            f"- {label} (epoch {gap['epoch']}): train acc {pct(gap['train_acc'])}, val acc {pct(gap['val_acc'])}: "
            f"train-vs-val gap **{signed_pp(gap['acc_gap_pp'])}**; loss train {num(gap['train_loss'])}, "
            f"val {num(gap['val_loss'])} ({loss_gap})."
        )
    lines.append(f"- {_loss_trend(t)}")
    return "\n".join(lines)


def _loss_trend(t: dict[str, Any]) -> str:
    low, last, low_epoch, limit = t["val_loss_min"], t["val_loss_last"], t["val_loss_min_epoch"], t["overfit_rise"]
    if low is None or last is None:
        return "Validation loss was not logged."
    if low_epoch == t["last_epoch"]:
        return (
            f"Validation loss was still falling at the last epoch ({num(last)}, its lowest): "
            f"training had not converged, and more epochs may still help."
        )
    rise = (last - low) / low if low > 0 else 0.0
    if rise > limit:
        return (
            f"Validation loss bottomed out at {num(low)} in epoch {low_epoch} and ended at {num(last)} "
            f"({rise:+.0%}): the model overfits after epoch {low_epoch}; the checkpoint with the best val acc "
            f"(epoch {t['best_epoch']}) is what this report evaluates."
        )
    return (
        f"Validation loss flattened: lowest {num(low)} in epoch {low_epoch}, {num(last)} at the end "
        f"({rise:+.0%}, within {limit:.0%})."
    )
