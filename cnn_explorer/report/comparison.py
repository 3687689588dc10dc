"""The comparison of several runs (a multirun sweep): one table row per run, curves and per-class accuracy
side by side, and the confusions that change most between runs.

Built from each run's ``report/metrics.json`` (written by :func:`cnn_explorer.report.run_report.write_run_report`),
so the comparison states the same numbers as the runs' own reports. Written like a report: into a temporary
folder, then swapped in for ``<out>/`` (``comparison.md``, ``comparison.json`` and the PNGs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnn_explorer.interpret import row_normalize
from cnn_explorer.output_dir import replacing_dir
from cnn_explorer.render import charts
from cnn_explorer.render.figures import save_png
from cnn_explorer.report.markdown import num, pct
from cnn_explorer.report.metrics_json import none_to_nan, read_metrics_json, write_metrics
from cnn_explorer.report.run_report import METRICS_FILE, REPORT_DIR, REPORT_FILE

COMPARISON_DIR = "comparison"
COMPARISON_FILE = "comparison.md"
COMPARISON_JSON = "comparison.json"
RUN_NAME_SHOWN = 40  # characters of a run dir's name in the table (sweep job names hold every override)
TOP_CHANGES = 10  # directed confusion pairs listed by how much their rate differs between runs


def load_summary(run_dir: Path) -> dict[str, Any]:
    """A run's report summary, ``<run_dir>/report/metrics.json`` (write the report first)."""
    return read_metrics_json(run_dir / REPORT_DIR / METRICS_FILE)


def differing_overrides(overrides: list[list[str]]) -> list[list[str]]:
    """Per run, the overrides not shared by every run: what tells the runs apart."""
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    return [[o for o in run if o not in common] for run in overrides]


def confusion_changes(summaries: list[dict[str, Any]], k: int = TOP_CHANGES) -> list[dict[str, Any]]:
    """The ``k`` directed (true -> predicted) pairs whose test rate differs most between runs.

    Rates are row-normalized (the fraction of the true class predicted as the other class), so runs with
    the same test set compare directly. Pairs with the same spread keep class-index order.

    Returns:
        ``[{"true", "predicted", "rates": [one per run], "change": max - min}, ...]``, by descending change;
        pairs that no run confuses are left out.
    """
    classes = summaries[0]["run"]["classes"]
    rates = [row_normalize(torch.tensor(s["test"]["confusion_matrix"])).tolist() for s in summaries]
    changes = []
    for t in range(len(classes)):
        for p in range(len(classes)):
            if t == p:
                continue
            per_run = [r[t][p] for r in rates]
            if max(per_run) > 0:
                changes.append(
                    {
                        "true": classes[t],
                        "predicted": classes[p],
                        "rates": per_run,
                        "change": max(per_run) - min(per_run),
                    }
                )
    changes.sort(key=lambda c: -c["change"])  # stable: ties stay in class-index order
    return changes[:k]


def write_comparison(out_dir: Path, runs: list[Path], broken: list[tuple[Path, str]]) -> Path:
    """Write the comparison of ``runs`` (reported run dirs) into ``out_dir``, listing the ``broken`` runs.

    Args:
        out_dir: the comparison folder, replaced as a whole (see :mod:`cnn_explorer.output_dir`).
        runs: run dirs whose report was written, in table order; at least one.
        broken: ``(run dir, problem)`` for runs that could not be reported.

    Returns:
        the path of ``comparison.md``.
    """
    summaries = [load_summary(run) for run in runs]
    differing = differing_overrides([s["run"]["overrides"] for s in summaries])
    labels = _labels(summaries, differing)
    same_classes = all(s["run"]["classes"] == summaries[0]["run"]["classes"] for s in summaries)
    changes = confusion_changes(summaries) if same_classes else []
    data = {
        "runs": [
            {
                "number": i + 1,
                "label": label,
                "run_dir": os.path.relpath(run, out_dir),
                **_row(s),
                "differing_overrides": diff,
            }
            for i, (label, run, s, diff) in enumerate(zip(labels, runs, summaries, differing, strict=True))
        ],
        "confusion_changes": changes,
        "broken": [{"run_dir": os.path.relpath(path, out_dir), "problem": problem} for path, problem in broken],
    }
    numbered = [f"#{i + 1} {label}" for i, label in enumerate(labels)]
    curves = [
        charts.RunCurves(
            label,
            s["training"]["curves"]["epoch"],
            none_to_nan(s["training"]["curves"]["train/acc"]),
            none_to_nan(s["training"]["curves"]["val/acc"]),
        )
        for label, s in zip(numbered, summaries, strict=True)
    ]
    with replacing_dir(out_dir) as folder:
        save_png(charts.accuracy_comparison_figure(curves), folder / "accuracy_curves.png")
        if same_classes:
            classes = summaries[0]["run"]["classes"]
            accuracies = [[s["test"]["per_class_acc"][c] for c in classes] for s in summaries]
            save_png(
                charts.per_class_comparison_figure(classes, numbered, accuracies), folder / "per_class_accuracy.png"
            )
        write_metrics(folder / COMPARISON_JSON, data)
        (folder / COMPARISON_FILE).write_text(render_comparison(data, summaries, same_classes))
    return out_dir / COMPARISON_FILE


def render_comparison(data: dict[str, Any], summaries: list[dict[str, Any]], same_classes: bool) -> str:
    """The Markdown of the comparison (``data`` is what comparison.json holds; its paths are relative to it)."""
    runs = data["runs"]
    lines = [
        f"# Comparison of {len(runs)} run{'' if len(runs) == 1 else 's'}",
        "",
        "| # | run | model | parameters | best val acc | test acc | s / epoch | overrides that differ |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        link = f"{r['run_dir']}/{REPORT_DIR}/{REPORT_FILE}"
        name = _shorten(r["run_name"])
        lines.append(
            f"| {r['number']} | [{name}](<{link}>) | {r['model']} | {r['parameters']:,} | "
            f"{pct(r['best_val_acc'])} | {pct(r['test_acc'])} | {num(r['sec_per_epoch'], 1)} | "
            f"{' '.join(r['differing_overrides']) or '-'} |"
        )
    lines += ["", "Test accuracy is of each run's best-val/acc checkpoint; s / epoch is the median epoch time."]
    lines += ["", *_observations(runs)]
    lines += [
        "",
        "## Accuracy per epoch",
        "",
        "![Accuracy curves of all runs](accuracy_curves.png)",
        "",
        "Validation accuracy solid, training accuracy (augmented batches) dashed, one colour per run.",
    ]
    if same_classes:
        lines += _per_class_section(runs, summaries)
        lines += _changes_section(data["confusion_changes"], len(runs))
    else:
        lines += ["", "The runs have different classes, so per-class accuracy and confusions are not compared."]
    if data["broken"]:
        lines += ["", "## Runs that could not be reported", "", "| run dir | problem |", "| --- | --- |"]
        lines += [f"| `{b['run_dir']}` | {b['problem'].replace('|', '/')} |" for b in data["broken"]]
    return "\n".join(lines) + "\n"


def _observations(runs: list[dict[str, Any]]) -> list[str]:
    tested = [r for r in runs if r["test_acc"] is not None]
    if len(tested) < 2:
        return []
    best = max(tested, key=lambda r: r["test_acc"])
    worst = min(tested, key=lambda r: r["test_acc"])
    lines = [
        f"- Best test accuracy: #{best['number']} ({best['label']}) with {pct(best['test_acc'])}, "
        f"{100 * (best['test_acc'] - worst['test_acc']):.2f} percentage points above #{worst['number']} "
        f"({worst['label']}, {pct(worst['test_acc'])})."
    ]
    timed = [r for r in runs if r["sec_per_epoch"] is not None]
    if len(timed) >= 2:
        fast = min(timed, key=lambda r: r["sec_per_epoch"])
        slow = max(timed, key=lambda r: r["sec_per_epoch"])
        lines.append(
            f"- Fastest: #{fast['number']} at {num(fast['sec_per_epoch'], 1)} s per epoch; slowest: "
            f"#{slow['number']} at {num(slow['sec_per_epoch'], 1)} s."
        )
    return lines


def _per_class_section(runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    classes = summaries[0]["run"]["classes"]
    header = " | ".join(f"#{r['number']}" for r in runs)
    lines = [
        "",
        "## Per-class test accuracy",
        "",
        "![Per-class test accuracy of all runs](per_class_accuracy.png)",
        "",
        f"| class | {header} | spread |",
        f"| --- | {' | '.join('---:' for _ in runs)} | ---: |",
    ]
    for cls in classes:
        accs = [s["test"]["per_class_acc"][cls] for s in summaries]
        cells = " | ".join(pct(a) for a in accs)
        lines.append(f"| {cls} | {cells} | {100 * (max(accs) - min(accs)):.2f} pp |")
    return lines


def _changes_section(changes: list[dict[str, Any]], count: int) -> list[str]:
    lines = ["", "## Confusions that change most between runs", ""]
    if not changes:
        return [*lines, "No run confuses any pair of classes."]
    header = " | ".join(f"#{i + 1}" for i in range(count))
    lines += [
        "Rate = fraction of the true class's test images predicted as the other class; change = largest minus "
        "smallest rate over the runs.",
        "",
        f"| true -> predicted | {header} | change |",
        f"| --- | {' | '.join('---:' for _ in range(count))} | ---: |",
    ]
    for c in changes:
        cells = " | ".join(pct(r) for r in c["rates"])
        lines.append(f"| {c['true']} -> {c['predicted']} | {cells} | {100 * c['change']:.2f} pp |")
    return lines


def _row(s: dict[str, Any]) -> dict[str, Any]:
    run = s["run"]
    return {
        "run_name": run["name"],
        "model": run["choices"].get("model", run["net"]["class"]),
        "parameters": run["net"]["parameters"],
        "best_val_acc": s["training"]["best_val_acc"],
        "test_acc": s["test"]["acc"],
        "sec_per_epoch": s["training"]["sec_per_epoch"],
        "overrides": run["overrides"],
    }


def _labels(summaries: list[dict[str, Any]], differing: list[list[str]]) -> list[str]:
    """Each run's differing overrides, or its dir name when nothing (or the same thing) tells it apart."""
    labels = [" ".join(diff) or s["run"]["name"] for s, diff in zip(summaries, differing, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [s["run"]["name"] for s in summaries]
    return [_shorten(label) for label in labels]


def _shorten(text: str) -> str:
    # Sweep job dirs are named after all their overrides: too long for a legend or a table cell.
    return text if len(text) <= RUN_NAME_SHOWN else text[: RUN_NAME_SHOWN - 3] + "..."
