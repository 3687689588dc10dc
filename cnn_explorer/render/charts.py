"""Line and bar charts of numbers over epochs or runs: learning curves and run comparisons.

Like every figure here, built by :func:`cnn_explorer.render.figures.new_figure` (no pyplot, no global state).
Every chart is :data:`CURVE_FIGSIZE` or :data:`BARS_FIGSIZE` at :data:`~cnn_explorer.render.figures.DPI`, laid
out by matplotlib's constrained layout so labels and legends stay inside that size. Values may be NaN (an
epoch a metric was not logged in) or infinite (a diverged run): they leave gaps, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cnn_explorer.render.figures import new_figure
from cnn_explorer.render.fonts import figure_names

CURVE_FIGSIZE = (8.0, 5.0)  # inches: one metric over epochs
BARS_FIGSIZE = (11.0, 5.0)  # inches: per-class bars of several runs, room for 10 class names


@dataclass(frozen=True)
class RunCurves:
    """One run's per-epoch accuracies, as fractions in ``[0, 1]`` (NaN where an epoch was not logged)."""

    label: str
    epochs: Sequence[int]
    train_acc: Sequence[float]
    val_acc: Sequence[float]


def loss_curves_figure(
    epochs: Sequence[int], train_loss: Sequence[float], val_loss: Sequence[float], best_epoch: int | None
) -> Figure:
    """Train and validation cross-entropy per epoch, with the best-val-acc epoch marked.

    Args:
        epochs: ``E`` epoch numbers.
        train_loss: ``E`` mean training losses (NaN where missing).
        val_loss: ``E`` validation losses (NaN where missing).
        best_epoch: epoch of the best validation accuracy, drawn as a dashed vertical line; ``None`` for none.
    """
    fig, ax = _new_axes(CURVE_FIGSIZE)
    ax.plot(epochs, train_loss, marker="o", label="train (augmented, running mean over the epoch)")
    ax.plot(epochs, val_loss, marker="o", label="validation")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best val acc (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss (nats per image)")
    ax.set_title("Loss per epoch")
    logged = [v for v in (*train_loss, *val_loss) if math.isfinite(v)]
    # Headroom above the highest loss keeps the legend off the curves, which start high at either side.
    ax.set_ylim(0, 1.4 * max(logged) if logged else 1.0)
    ax.legend(loc="upper right")
    return fig


def accuracy_curves_figure(
    epochs: Sequence[int], train_acc: Sequence[float], val_acc: Sequence[float], best_epoch: int | None
) -> Figure:
    """Train and validation accuracy per epoch in percent, the best validation epoch marked with a star.

    Args:
        epochs: ``E`` epoch numbers.
        train_acc: ``E`` training accuracies in ``[0, 1]`` (NaN where missing).
        val_acc: ``E`` validation accuracies in ``[0, 1]`` (NaN where missing).
        best_epoch: epoch of the best validation accuracy (one of ``epochs``), or ``None``.
    """
    fig, ax = _new_axes(CURVE_FIGSIZE)
    ax.plot(epochs, _percent(train_acc), marker="o", label="train (augmented, running mean over the epoch)")
    ax.plot(epochs, _percent(val_acc), marker="o", label="validation")
    if best_epoch is not None and best_epoch in epochs:
        best = 100 * val_acc[list(epochs).index(best_epoch)]
        label = f"best val acc {best:.2f}% (epoch {best_epoch})"
        ax.plot([best_epoch], [best], "*", markersize=16, color="crimson", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per epoch")
    ax.set_ylim(0, 104)  # headroom above 100% so a star at the top is drawn whole
    ax.legend(loc="lower right")
    return fig


def accuracy_comparison_figure(runs: Sequence[RunCurves]) -> Figure:
    """Validation (solid) and train (dashed) accuracy per epoch of several runs, one colour per run."""
    fig, ax = _new_axes(CURVE_FIGSIZE)
    colors = _colors(len(runs))
    for run, color in zip(runs, colors, strict=True):
        ax.plot(run.epochs, _percent(run.val_acc), color=color, marker="o", markersize=3, label=run.label)
        ax.plot(run.epochs, _percent(run.train_acc), color=color, linestyle="--", alpha=0.7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per epoch: validation solid, train dashed")
    ax.set_ylim(0, 100)
    style = [Line2D([], [], color="black", label="validation"), Line2D([], [], color="black", ls="--", label="train")]
    ax.legend(handles=[*ax.get_lines()[::2], *style], loc="lower right", fontsize=8)
    return fig


def per_class_comparison_figure(
    class_names: Sequence[str], labels: Sequence[str], accuracies: Sequence[Sequence[float]]
) -> Figure:
    """Grouped bars: test accuracy (%) per class, one bar per run in each class's group.

    Args:
        class_names: ``C`` class names (one no installed font draws is shown as ``class <index>``).
        labels: ``R`` run labels, for the legend.
        accuracies: ``R`` rows of ``C`` accuracies in ``[0, 1]``.

    Raises:
        ValueError: if a row does not have one accuracy per class, or there are not ``R`` rows.
    """
    if len(accuracies) != len(labels) or any(len(row) != len(class_names) for row in accuracies):
        raise ValueError(
            f"need {len(labels)} rows of {len(class_names)} accuracies, got {[len(r) for r in accuracies]}"
        )
    fig, ax = _new_axes(BARS_FIGSIZE)
    positions = np.arange(len(class_names))
    width = 0.8 / max(1, len(labels))
    for i, (label, row, color) in enumerate(zip(labels, accuracies, _colors(len(labels)), strict=True)):
        ax.bar(positions + (i - (len(labels) - 1) / 2) * width, _percent(row), width, label=label, color=color)
    ax.set_xticks(positions, labels=figure_names(class_names), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlabel("true class")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title("Per-class test accuracy by run")
    ax.set_ylim(0, 100)
    # Below the axes, not inside: bars fill the plot up to 100% and a legend there would hide them.
    fig.legend(loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    return fig


def _new_axes(size: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = new_figure(size, constrained=True)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _percent(values: Sequence[float]) -> list[float]:
    return [100 * v if math.isfinite(v) else math.nan for v in values]


def _colors(count: int) -> list[tuple[float, float, float, float]]:
    # tab10 stays distinguishable up to 10 runs; beyond that, spread over a continuous map.
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["viridis"](i / (count - 1)) for i in range(count)]


MAX_NAMED_STEPS = 16
"""The most steps :func:`randomization_figure` names under its axis; the names of more would overlap."""


def randomization_figure(
    layers: Sequence[str], correlations: Mapping[str, Sequence[float]], threshold: float
) -> Figure:
    """The cascading randomization check (Adebayo et al. 2018): one line per method, mean Spearman correlation of
    its maps with the trained model's maps after each step of re-initialization, top layer first.

    Args:
        layers: ``S`` layer names, in the order they were randomized.
        correlations: ``{method title: S values}``.
        threshold: the pass line (a method whose correlation at the classifier steps lies below it passes), dashed.
    """
    fig, ax = _new_axes(CURVE_FIGSIZE)
    positions = list(range(1, len(layers) + 1))
    for (title, values), color in zip(correlations.items(), _colors(len(correlations)), strict=True):
        ax.plot(positions, list(values), marker="o", color=color, label=title)
    ax.axhline(threshold, color="grey", linestyle="--", label=f"pass line ({threshold}, at the classifier steps)")
    # A deep net has more steps than names fit under the axis (EfficientNet-Lite0: 50): name every k-th, the first
    # and the last always; a tick marks every step.
    every = max(1, math.ceil((len(layers) - 1) / (MAX_NAMED_STEPS - 1)))
    last = len(layers) - 1
    named = list(range(0, len(layers), every))
    if named[-1] != last:
        if last - named[-1] < every:
            named.pop()  # too close to the last to name both
        named.append(last)
    ax.set_xticks(
        [positions[i] for i in named],
        labels=[f"+{layers[i]}" for i in named],
        rotation=30,
        ha="right",
        rotation_mode="anchor",
    )
    ax.set_xticks(positions, minor=True)
    ax.set_xlabel("layers re-initialized, cumulatively, from the logits down")
    ax.set_ylabel("Spearman correlation with the trained maps")
    ax.set_title("Randomization check: maps should change when the weights do")
    ax.set_ylim(-0.2, 1.05)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def perturbation_figure(
    fractions: Sequence[float], deletion: Mapping[str, Sequence[float]], insertion: Mapping[str, Sequence[float]]
) -> Figure:
    """Mean deletion (left) and insertion (right) curves per method (Petsiuk et al. 2018): the target class's
    probability as the pixels a method ranks highest are removed from, or put back into, the image."""
    fig = new_figure(BARS_FIGSIZE, constrained=True)
    axes = fig.subplots(1, 2, sharey=True)
    colors = _colors(len(deletion))
    for ax, curves, title in (
        (axes[0], deletion, "Deletion: lower is better"),
        (axes[1], insertion, "Insertion: higher is better"),
    ):
        for (name, values), color in zip(curves.items(), colors, strict=True):
            style = "--" if name == "random order" else "-"
            ax.plot(list(fractions), list(values), style, color="black" if style == "--" else color, label=name)
        ax.set_title(title)
        ax.set_xlabel("fraction of pixels removed" if curves is deletion else "fraction of pixels inserted")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("probability of the true class (mean over images)")
    axes[0].set_ylim(0, 1)
    axes[1].legend(loc="lower right", fontsize=8)
    return fig


def depth_figure(layers: Sequence[str], series: Mapping[str, Sequence[float]]) -> Figure:
    """Per-layer fractions in ``[0, 1]`` (probe accuracy, sparsity, selectivity, ...) against depth, one line each."""
    fig, ax = _new_axes(CURVE_FIGSIZE)
    for (label, values), color in zip(series.items(), _colors(len(series)), strict=True):
        ax.plot(list(range(len(layers))), list(values), marker="o", color=color, label=label)
    ax.set_xticks(list(range(len(layers))), labels=list(layers))
    ax.set_xlabel("layer (input side first)")
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1)
    ax.set_title("What changes with depth")
    ax.legend(loc="best", fontsize=8)
    return fig
