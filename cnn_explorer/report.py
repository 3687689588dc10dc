"""The report of one finished run: what its best checkpoint does on the test set, and how it trained.

:func:`write_run_report` reads the run (:mod:`cnn_explorer.rundir`), computes the numbers once into a
JSON-able summary, draws the figures with the same pure functions the training callbacks use
(:mod:`cnn_explorer.interpret`, :mod:`cnn_explorer.plots`, :mod:`cnn_explorer.curves`), and writes::

    <run dir>/report/report.md       the Markdown report; every number it states is in metrics.json
    <run dir>/report/metrics.json    the summary (the comparison of a sweep reads it)
    <run dir>/report/*.png           the figures the Markdown shows

The folder is built beside ``report/`` and moved into place only when complete (:func:`replace_dir`), so a
crash or a bad input never leaves a half-written report, and a failed run leaves the run dir untouched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from cnn_explorer import curves, plots
from cnn_explorer.data import CIFAR10DataModule
from cnn_explorer.errors import UserError
from cnn_explorer.interpret import (
    confident_mistakes,
    confusion_matrix,
    feature_map_grid,
    filter_grid,
    layer_activations,
    most_confused_pairs,
    per_class_accuracy,
    saliency,
    saliency_grid,
)
from cnn_explorer.interpret.model_state import model_device
from cnn_explorer.models import conv_block_names, count_parameters, first_conv
from cnn_explorer.report_text import render_report
from cnn_explorer.rundir import (
    MetricsLog,
    Predictions,
    best_checkpoint,
    load_datamodule,
    load_net,
    load_run_config,
    predict_test_set,
    read_metrics,
    run_choices,
    run_overrides,
)

REPORT_DIR = "report"
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
# The seed notebook's claim: these pairs are the ones a CIFAR-10 CNN confuses most.
SEED_CLAIMS = (("cat", "dog"), ("deer", "horse"), ("automobile", "truck"))
TOP_PAIRS = 10  # most confused (true -> predicted) pairs listed, and the "top k" the claims are checked against
MISTAKES_SHOWN = 32
FEATURE_CHANNELS = 16  # channels shown per conv layer
SURE_AND_WRONG = 0.9  # softmax confidence above which a mistake counts as confident
WEAK_FILTER = 0.1  # a conv1 filter with an L2 norm below this fraction of the largest is "nearly unused"
CENTER_FRACTION = 0.5  # saliency share is measured in the central half of each side (a quarter of the area)


@dataclass(frozen=True)
class ReportOptions:
    """How to evaluate: ``device`` ("auto", "cpu", "cuda", ...), test ``batch_size``, and a ``data_root``
    that replaces the run's ``data.source.root`` (``None``: use the run's)."""

    device: str = "auto"
    batch_size: int = 1000
    data_root: str | None = None


@dataclass(frozen=True)
class Probe:
    """One validation image per class and what the net does with it (feature maps, saliency).

    Attributes:
        images: uint8 ``[K, 3, H, W]``; labels and predicted: int64 ``[K]``.
        activations: ``{conv block name: [K, C_l, H_l, W_l]}``.
        saliency: float ``[K, H, W]``, the true class's gradient magnitude.
    """

    images: Tensor
    labels: Tensor
    predicted: Tensor
    activations: dict[str, Tensor]
    saliency: Tensor


def write_run_report(run_dir: Path, options: ReportOptions = ReportOptions()) -> Path:
    """Evaluate the run's best checkpoint and write ``<run_dir>/report/`` (see the module docstring).

    Everything that can fail on a bad input (config, checkpoint, metrics, data) is read before anything
    is written, so on :class:`UserError` the run dir is as it was.

    Returns:
        the report folder.

    Raises:
        UserError: naming the path and the problem: not a run dir, no or unreadable checkpoint, a
            checkpoint that does not fit the config, missing metrics or data.
    """
    device = pick_device(options.device)
    run_dir = run_dir.resolve()
    cfg = load_run_config(run_dir)
    check_replaceable(run_dir / REPORT_DIR, REPORT_FILE)
    checkpoint = best_checkpoint(run_dir)
    metrics = read_metrics(run_dir)
    net = load_net(cfg, checkpoint.path)
    datamodule = load_datamodule(cfg, options.data_root)
    predictions = predict_test_set(net, datamodule, device, options.batch_size)
    probe = probe_net(net, datamodule)
    classes = list(datamodule.classes)

    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "run_name": run_dir.name,
        "choices": run_choices(run_dir),
        "overrides": run_overrides(run_dir),
        "net": {
            "class": type(net).__name__,
            "architecture": [a if isinstance(a, str) else int(a) for a in cfg.model.net.get("architecture", [])],
            "parameters": count_parameters(net),
        },
        "checkpoint": {"file": str(checkpoint.path.relative_to(run_dir)), "epoch": checkpoint.epoch},
        "classes": classes,
        "training": training_summary(metrics),
        "test": test_set_summary(predictions, classes, metrics.test.get("test/acc")),
        "mistakes": mistakes_summary(predictions),
        "conv1": conv1_summary(net),
        "feature_maps": feature_map_summary(probe),
        "saliency": saliency_summary(probe),
    }
    summary["seed_claims"] = seed_claims(summary["test"]["confusion_matrix"], classes)

    def build(folder: Path) -> None:
        summary["figures"] = write_figures(folder, net, predictions, probe, metrics, summary)
        data = _finite(summary)  # the Markdown states exactly what metrics.json holds
        (folder / METRICS_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (folder / REPORT_FILE).write_text(render_report(data))

    target = run_dir / REPORT_DIR
    replace_dir(target, build, REPORT_FILE)
    return target


def pick_device(name: str) -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; anything else as torch spells it.

    Raises:
        UserError: on a name torch does not know, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    return device


def probe_net(net: nn.Module, datamodule: CIFAR10DataModule) -> Probe:
    """Feature maps of every conv block and the saliency of the true class for one validation image per class."""
    images, inputs, labels = datamodule.normalized_probe(per_class=1)
    activations = layer_activations(net, inputs, conv_block_names(net))
    with torch.no_grad():
        predicted = net(inputs.to(model_device(net))).argmax(dim=1).cpu()
    maps = saliency(net, inputs, labels).cpu()
    return Probe(images, labels, predicted, activations, maps)


def training_summary(metrics: MetricsLog) -> dict[str, Any]:
    """Best epoch (argmax val/acc, the first on ties), train-vs-val gaps there and at the end, timing, curves."""
    val_acc = metrics.get("val/acc")
    logged = [i for i, v in enumerate(val_acc) if not math.isnan(v)]
    best = max(logged, key=lambda i: (val_acc[i], -i)) if logged else None
    val_loss = metrics.get("val/loss")
    loss_logged = [i for i, v in enumerate(val_loss) if not math.isnan(v)]
    lowest = min(loss_logged, key=lambda i: (val_loss[i], i)) if loss_logged else None
    seconds = [s for s in metrics.get("time/epoch_s") if not math.isnan(s)]
    return {
        "epochs": len(metrics.epochs),
        "best_epoch": metrics.epochs[best] if best is not None else None,
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
        "curves": {"epoch": metrics.epochs}
        | {name: metrics.get(name) for name in ("train/loss", "train/acc", "val/loss", "val/acc")},
        "metrics_files": [str(p) for p in metrics.files],
    }


def _gap(metrics: MetricsLog, index: int | None) -> dict[str, Any] | None:
    if index is None:
        return None
    row = {name: metrics.get(name)[index] for name in ("train/acc", "val/acc", "train/loss", "val/loss")}
    return {
        "epoch": metrics.epochs[index],
        "train_acc": row["train/acc"],
        "val_acc": row["val/acc"],
        "acc_gap_pp": 100 * (row["train/acc"] - row["val/acc"]),
        "train_loss": row["train/loss"],
        "val_loss": row["val/loss"],
        "loss_gap": row["val/loss"] - row["train/loss"],
    }


def test_set_summary(predictions: Predictions, classes: list[str], logged_acc: float | None) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix and most confused pairs on the test set."""
    cm = confusion_matrix(predictions.predicted, predictions.labels, len(classes))
    correct = int(cm.diagonal().sum())
    total = int(cm.sum())
    acc = correct / total
    errors = total - correct
    pairs = most_confused_pairs(cm, TOP_PAIRS)
    counts = cm.tolist()
    return {
        "images": total,
        "correct": correct,
        "acc": acc,
        "logged_acc": logged_acc,
        "difference_pp": 100 * (acc - logged_acc) if logged_acc is not None else None,
        "per_class_acc": dict(zip(classes, per_class_accuracy(cm).tolist(), strict=True)),
        "per_class_images": dict(zip(classes, cm.sum(dim=1).tolist(), strict=True)),
        "per_class_correct": dict(zip(classes, cm.diagonal().tolist(), strict=True)),
        "confusion_matrix": counts,
        "top_confused": [
            {"true": classes[t], "predicted": classes[p], "rate": rate, "count": counts[t][p]} for t, p, rate in pairs
        ],
        "top_confused_share_of_errors": sum(counts[t][p] for t, p, _ in pairs) / errors if errors else None,
    }


def seed_claims(cm_counts: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """Check the seed's "most confused pairs" claims against this run's test confusion matrix.

    A claim (a, b) agrees when a -> b or b -> a is among the :data:`TOP_PAIRS` highest directed rates.
    Ranks count all directed pairs by rate (1 = most confused); ``None`` when the pair never occurred.
    """
    if not all(name in classes for pair in SEED_CLAIMS for name in pair):
        return {"applies": False, "k": TOP_PAIRS, "pairs": []}
    cm = torch.tensor(cm_counts)
    everything = most_confused_pairs(cm, k=len(classes) ** 2)
    rank = {(t, p): i + 1 for i, (t, p, _) in enumerate(everything)}
    rates = cm.float() / cm.sum(dim=1, keepdim=True).clamp_min(1)
    pairs = []
    for a, b in SEED_CLAIMS:
        i, j = classes.index(a), classes.index(b)
        ranks = (rank.get((i, j)), rank.get((j, i)))
        pairs.append(
            {
                "a": a,
                "b": b,
                "rate_ab": float(rates[i, j]),
                "rate_ba": float(rates[j, i]),
                "rank_ab": ranks[0],
                "rank_ba": ranks[1],
                "in_top_k": any(r is not None and r <= TOP_PAIRS for r in ranks),
            }
        )
    return {"applies": True, "k": TOP_PAIRS, "directed_pairs": len(classes) * (len(classes) - 1), "pairs": pairs}


def mistakes_summary(predictions: Predictions) -> dict[str, Any]:
    """How many test images are wrong, and how many of those the net was sure about."""
    all_wrong = confident_mistakes(predictions.logits, predictions.labels, k=len(predictions.labels))
    return {
        "count": len(all_wrong.indices),
        "shown": min(MISTAKES_SHOWN, len(all_wrong.indices)),
        "confident": int((all_wrong.confidences >= SURE_AND_WRONG).sum()),
        "confidence_threshold": SURE_AND_WRONG,
    }


def conv1_summary(net: nn.Module) -> dict[str, Any]:
    """Size of the first conv layer's filters and the spread of their L2 norms."""
    name, conv = first_conv(net)
    norms = conv.weight.detach().flatten(1).norm(dim=1)  # [C_out]
    return {
        "layer": name,
        "filters": conv.out_channels,
        "kernel": list(conv.kernel_size),
        "in_channels": conv.in_channels,
        "norm_min": float(norms.min()),
        "norm_median": float(norms.median()),
        "norm_max": float(norms.max()),
        "weak": int((norms < WEAK_FILTER * norms.max()).sum()),
    }


def feature_map_summary(probe: Probe) -> list[dict[str, Any]]:
    """Per conv block: output size, share of zero activations, channels zero on every probe image."""
    layers = []
    for name, act in probe.activations.items():  # act: [K, C, h, w]
        per_channel_max = act.amax(dim=(0, 2, 3))  # [C]
        layers.append(
            {
                "layer": name,
                "figure": f"feature_maps_{_short(name)}.png",
                "channels": act.shape[1],
                "size": list(act.shape[2:]),
                "zero_fraction": float((act <= 0).float().mean()),
                "dead_channels": int((per_channel_max <= 0).sum()),
            }
        )
    return layers


def saliency_summary(probe: Probe) -> dict[str, Any]:
    """Share of each probe image's saliency that falls in the central region, and probe accuracy."""
    height, width = probe.saliency.shape[1:]
    top, left = round(height * (1 - CENTER_FRACTION) / 2), round(width * (1 - CENTER_FRACTION) / 2)
    center = probe.saliency[:, top : height - top, left : width - left].sum(dim=(1, 2))
    total = probe.saliency.sum(dim=(1, 2)).clamp_min(torch.finfo(torch.float32).tiny)
    share = center / total  # [K]
    return {
        "images": len(probe.labels),
        "correct": int((probe.predicted == probe.labels).sum()),
        "center_box": [height - 2 * top, width - 2 * left],
        "center_area_share": (height - 2 * top) * (width - 2 * left) / (height * width),
        "center_share_mean": float(share.mean()),
        "center_share_min": float(share.min()),
        "center_share_max": float(share.max()),
    }


def write_figures(
    folder: Path,
    net: nn.Module,
    predictions: Predictions,
    probe: Probe,
    metrics: MetricsLog,
    summary: dict[str, Any],
) -> list[str]:
    """Draw and save every figure of the report into ``folder``; returns their file names, in report order."""
    classes = summary["classes"]
    training, test = summary["training"], summary["test"]
    names: list[str] = []

    def save(fig: Figure, name: str) -> None:
        save_png(fig, folder / name)
        names.append(name)

    best, epochs = training["best_epoch"], metrics.epochs
    loss = curves.loss_curves_figure(epochs, metrics.get("train/loss"), metrics.get("val/loss"), best)
    save(loss, "loss_curves.png")
    accuracy = curves.accuracy_curves_figure(epochs, metrics.get("train/acc"), metrics.get("val/acc"), best)
    save(accuracy, "accuracies.png")
    title = f"Test set, best checkpoint (epoch {summary['checkpoint']['epoch']}): {test['acc']:.2%} accuracy"
    save(plots.confusion_matrix_figure(torch.tensor(test["confusion_matrix"]), classes, title), "confusion_matrix.png")

    wrong = confident_mistakes(predictions.logits, predictions.labels, k=MISTAKES_SHOWN)
    true = predictions.labels[wrong.indices]
    mistakes = plots.mistakes_figure(
        predictions.images[wrong.indices], true, wrong.predictions, wrong.confidences, classes
    )
    save(mistakes, "misclassified_examples.png")

    conv1 = summary["conv1"]
    _, conv = first_conv(net)
    filters_title = (
        f"{conv1['layer']}: {conv1['filters']} filters of {conv1['kernel'][0]}x{conv1['kernel'][1]}x"
        f"{conv1['in_channels']}, each scaled to its own min..max"
    )
    save(plots.grid_figure(filter_grid(conv.weight, nrow=8, upscale=8), filters_title), "conv1_filters.png")

    rows = [
        # The prediction on a line of its own: one long line is clipped at the left of the narrow saliency figure.
        f"{classes[t]}" + ("" if t == p else f"\n-> {classes[p]}")
        for t, p in zip(probe.labels.tolist(), probe.predicted.tolist(), strict=True)
    ]
    for layer in summary["feature_maps"]:
        act = probe.activations[layer["layer"]]
        shown = min(FEATURE_CHANNELS, act.shape[1])
        grid = feature_map_grid(probe.images, act, max_channels=FEATURE_CHANNELS)
        columns = ["input", *(f"ch {c}" for c in range(shown))]
        resolution = f"{act.shape[2]}x{act.shape[3]}" + (
            " upsampled to the image size" if act.shape[2:] != probe.images.shape[2:] else ""
        )
        title = f"{layer['layer']}: first {shown} of {act.shape[1]} channels ({resolution})"
        colorbar = ("viridis", "activation / largest activation in the row")
        save(plots.labeled_grid_figure(grid, title, rows, columns, colorbar), layer["figure"])

    grid = saliency_grid(probe.images, probe.saliency)
    columns = ["image", "saliency", "overlay (50%)"]
    colorbar = ("inferno", "|d logit(true class) / d pixel| / image max")
    title = "Saliency of the true class, one validation image per class"
    save(plots.labeled_grid_figure(grid, title, rows, columns, colorbar), "saliency.png")
    return names


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG of exactly its size times :data:`~cnn_explorer.plots.DPI` pixels.

    Not cropped to the content (as :func:`~cnn_explorer.plots.save_figure` does): the report's figures keep
    their documented sizes, so every curve figure has the same pixel size. The figures lay themselves out
    (constrained or tight layout) so nothing falls outside.
    """
    fig.savefig(path, format="png", dpi=plots.DPI)


def check_replaceable(target: Path, marker: str) -> None:
    """Refuse to replace a folder that analyze.py did not write: one that exists, is not empty and lacks ``marker``.

    The report and comparison folders are replaced as a whole; without this, ``--out outputs`` would
    delete every run.

    Raises:
        UserError: naming the folder.
    """
    if target.exists() and not (target / marker).is_file() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(
            f"{target} exists and was not written by analyze.py (it has no {marker}); it would be replaced as a "
            f"whole. Move it away, or choose another folder."
        )


def replace_dir(target: Path, build: Callable[[Path], None], marker: str) -> None:
    """Build a folder's contents in a hidden temporary sibling, then swap it in for ``target``.

    ``build(tmp)`` writes the files, ``marker`` among them. Only when it returns is the old ``target`` (if
    any) renamed away, the new one renamed in, and the old one deleted: renames within one folder are
    atomic, so ``target`` is never half-written. If ``build`` raises, the temporary folder is removed and
    ``target`` is untouched.

    Raises:
        UserError: if ``target`` exists but is not a folder this function wrote (see :func:`check_replaceable`).
    """
    check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a killed process with the same pid
    tmp.mkdir()
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _short(layer: str) -> str:
    return layer.rsplit(".", 1)[-1]  # "features.conv2" -> "conv2"


def _finite(value: Any) -> Any:
    """NaN -> None throughout, so metrics.json is strict JSON (epochs a metric was not logged in)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
