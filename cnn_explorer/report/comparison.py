"""The comparison of several runs (a multirun sweep): one table row per run, curves and per-class accuracy
side by side, and the confusions that change most between runs.

Built from each run's ``report/metrics.json`` (written by :func:`cnn_explorer.report.run_report.write_run_report`),
so the comparison states the same numbers as the runs' own reports. Written like a report: into a temporary
folder, then swapped in for ``<out>/`` (``comparison.md``, ``comparison.json`` and the PNGs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from cnn_explorer.evaluate import EvaluationOptions, load_datamodule, pick_device
from cnn_explorer.interpret import row_normalize
from cnn_explorer.interpret.attribution.faithfulness import PairedDifference, paired_difference
from cnn_explorer.interpret.features.cka import CKA_IMAGES, CKA_POOL, ActivationSample, cka_matrix
from cnn_explorer.interpret.features.layer_stats import observe_layers
from cnn_explorer.interpret.layers import short_layer_name, stages
from cnn_explorer.output_dir import replacing_dir
from cnn_explorer.render import charts
from cnn_explorer.render.figures import heatmap_figure, save_png
from cnn_explorer.report.markdown import num, pct
from cnn_explorer.report.metrics_json import none_to_nan, read_metrics_json, write_metrics
from cnn_explorer.report.run_report import METRICS_FILE, REPORT_DIR, REPORT_FILE
from cnn_explorer.rundir import load_net, read_run

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


def write_comparison(
    out_dir: Path, runs: list[Path], broken: list[tuple[Path, str]], options: EvaluationOptions | None = None
) -> Path:
    """Write the comparison of ``runs`` (reported run dirs) into ``out_dir``, listing the ``broken`` runs.

    Args:
        out_dir: the comparison folder, replaced as a whole (see :mod:`cnn_explorer.output_dir`).
        runs: run dirs whose report was written, in table order; at least one.
        broken: ``(run dir, problem)`` for runs that could not be reported.
        options: how to evaluate the nets again for the cross-run CKA (device, data root).

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
                "report_exists": (run / REPORT_DIR / REPORT_FILE).is_file(),
                **_row(s),
                "differing_overrides": diff,
            }
            for i, (label, run, s, diff) in enumerate(zip(labels, runs, summaries, differing, strict=True))
        ],
        "confusion_changes": changes,
        "broken": [{"run_dir": os.path.relpath(path, out_dir), "problem": problem} for path, problem in broken],
        "cka": None,
    }
    cka = cross_run_cka(runs, options or EvaluationOptions()) if len(runs) > 1 else None
    if cka is not None:
        data["cka"] = {"images": CKA_IMAGES, "pool": CKA_POOL, "layers": cka[0], "matrix": cka[1].tolist()}
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
        if cka is not None:
            title = f"Linear CKA between the stages of the runs ({CKA_IMAGES:,} validation images)"
            save_png(heatmap_figure(cka[1], cka[0], cka[0], title), folder / "cross_run_cka.png")
        write_metrics(folder / COMPARISON_JSON, data)
        (folder / COMPARISON_FILE).write_text(render_comparison(data, summaries, same_classes))
    return out_dir / COMPARISON_FILE


def cross_run_cka(runs: list[Path], options: EvaluationOptions) -> tuple[list[str], Tensor] | None:
    """Linear CKA between every stage of every run, on the first :data:`CKA_IMAGES` validation images (the
    run reports' image set), maps pooled to :data:`CKA_POOL` squared; None when the runs were trained on different
    data (their validation images differ)."""
    read = [read_run(run) for run in runs]
    data = [OmegaConf.to_container(r.config.data, resolve=False) for r in read]
    for d in data:
        d.pop("seed", None)  # the training seed; the split is set by split_seed
    if any(d != data[0] for d in data):
        return None
    datamodule = load_datamodule(read[0].config, options.data_root)
    device = pick_device(options.device)
    samples, names = [], []
    for number, run in enumerate(read, start=1):
        net = load_net(run.config, run.checkpoint.path).to(device)
        layers = stages(net, (datamodule.channels, datamodule.image_size, datamodule.image_size))
        sample = ActivationSample(CKA_IMAGES, pool_to=CKA_POOL)
        observe_layers(net, first_images(datamodule.eval_batches("val"), CKA_IMAGES), layers, [sample])
        kept = sample.result()
        samples += [kept[name] for name in layers]
        names += [f"#{number} {short_layer_name(name)}" for name in layers]
    return names, cka_matrix(samples)


def first_images(batches: Iterable[tuple[Tensor, ...]], count: int) -> Iterator[tuple[Tensor, ...]]:
    """The first ``count`` rows of a split's batches in order (``(inputs, labels, indices)`` each cut alike): the
    run report's CKA sample is the first images of the validation split, so the comparison takes the same ones."""
    left = count
    for batch in batches:
        if left <= 0:
            return
        yield tuple(part[:left] for part in batch)
        left -= len(batch[0])


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
        name = _shorten(r["run_name"])
        if r.get("report_exists", True):
            name = f"[{name}](<{r['run_dir']}/{REPORT_DIR}/{REPORT_FILE}>)"
        else:  # a link to nothing: the name, marked
            name += " (no report)"
        lines.append(
            f"| {r['number']} | {name} | {r['model']} | {r['parameters']:,} | "
            f"{pct(r['best_val_acc'])} | {pct(r['test_acc'])} | {num(r['sec_per_epoch'], 1)} | "
            f"{' '.join(r['differing_overrides']) or '-'} |"
        )
    lines += ["", "Test accuracy is of each run's best-val/acc checkpoint; s / epoch is the median epoch time."]
    if not all(r.get("report_exists", True) for r in runs):
        lines[-1] += " A run marked (no report) had no report.md when this comparison was written."
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
        lines += _claims_section(runs, summaries)
    else:
        lines += ["", "The runs have different classes, so per-class accuracy and confusions are not compared."]
    lines += _features_section(runs, summaries, data.get("cka"))
    lines += _faithfulness_section(runs, summaries)
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


def _claims_section(runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    """The notebook's most-confused pairs, both directions, per run."""
    claims = [s["confusions"]["claims"] for s in summaries]
    if not all(c["applies"] for c in claims):
        return []
    header = " | ".join(f"#{r['number']}" for r in runs)
    lines = [
        "",
        "## The notebook's confused pairs, run by run",
        "",
        f"| pair | {header} |",
        f"| --- | {' | '.join('---:' for _ in runs)} |",
    ]
    for index, pair in enumerate(claims[0]["pairs"]):
        for direction, key in ((f"{pair['a']} -> {pair['b']}", "rate_ab"), (f"{pair['b']} -> {pair['a']}", "rate_ba")):
            cells = " | ".join(pct(c["pairs"][index][key]) for c in claims)
            lines.append(f"| {direction} | {cells} |")
    lines += ["", "Rate: the fraction of the first class's test images predicted as the second."]
    return lines


def _features_section(
    runs: list[dict[str, Any]], summaries: list[dict[str, Any]], cka: dict[str, Any] | None
) -> list[str]:
    """Per-layer probe accuracy, sparsity and selectivity side by side, and the cross-run CKA heatmap."""
    if not all("features" in s for s in summaries):
        return []
    depth = max(len(s["features"]["layers"]) for s in summaries)
    lines = ["", "## Features by depth, run by run", ""]
    for title, key, fmt in (
        ("Linear probe accuracy (val)", "probe_val_acc", pct),
        ("Zero activations", "sparsity", pct),
        ("Class selectivity (mean over live channels)", "selectivity_mean", lambda v: num(v, 2)),
    ):
        lines += [f"{title}, by stage (input side first):", ""]
        lines += [f"| run | {' | '.join(f'block {i + 1}' for i in range(depth))} |"]
        lines += [f"| --- | {' | '.join('---:' for _ in range(depth))} |"]
        for r, s in zip(runs, summaries, strict=True):
            values = [fmt(layer[key]) for layer in s["features"]["layers"]]
            lines.append(f"| #{r['number']} {r['label']} | {' | '.join(values + [''] * (depth - len(values)))} |")
        lines.append("")
    for r, s in zip(runs, summaries, strict=True):
        layers = s["features"]["layers"]
        probes = [layer["probe_val_acc"] for layer in layers]
        sparsity = [layer["sparsity"] for layer in layers]
        lines.append(
            f"- #{r['number']} ({r['label']}): probe accuracy {pct(probes[0])} at the first block to {pct(probes[-1])} "
            f"at the last ({100 * (probes[-1] - probes[0]):+.1f} points); zero activations {pct(sparsity[0])} to "
            f"{pct(sparsity[-1])}."
        )
    if cka is not None:
        lines += [
            "",
            "![Linear CKA between the layers of all runs](cross_run_cka.png)",
            "",
            f"Linear CKA (Kornblith et al. 2019) between every stage of every run, on the first "
            f"{cka['images']:,} validation images (the ones each run's report uses), each map average-pooled to "
            f"{cka.get('pool', CKA_POOL)}x{cka.get('pool', CKA_POOL)} first: blocks of different runs that compute "
            f"similar representations are bright.",
        ]
    return lines


def run_differences(per_image: list[list[float] | None], best: int) -> list[PairedDifference | None]:
    """Per run, the paired interval of ``best``'s per-image AUC minus that run's on the same images (None for
    ``best`` itself, and where a run has no per-image AUCs or a different number of images)."""
    reference = per_image[best]
    differences: list[PairedDifference | None] = []
    for i, values in enumerate(per_image):
        paired = i != best and reference is not None and values is not None and len(values) == len(reference)
        differences.append(paired_difference(torch.tensor(reference), torch.tensor(values)) if paired else None)
    return differences


NO_RUN_MORE_FAITHFUL = "no run is clearly more faithful (every paired difference's 95% interval includes 0)"
NOT_COMPARED = "not compared (the reports hold no per-image AUCs on the same images to pair)"


def _faithfulness_sentence(method: str, runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> str:
    """``- <method>: <verdict>; <its numbers>.``: see :func:`_faithfulness_verdict`."""
    title, verdict, details = _faithfulness_verdict(method, runs, summaries)
    return f"- {title}: {verdict}; {details}."


def _faithfulness_verdict(
    method: str, runs: list[dict[str, Any]], summaries: list[dict[str, Any]]
) -> tuple[str, str, str]:
    """Which run's maps of ``method`` are most faithful by deletion, judged on paired per-image differences.

    The runs are scored on the same test images, so they are compared image by image: the run with the lowest
    mean deletion AUC is named more faithful than another run only where the 95% bootstrap interval of the
    per-image difference (it minus the other) lies below 0 (:func:`paired_difference`); the unpaired intervals
    may overlap while the difference is consistent. The drop below each run's own random pixel order is stated
    beside it: a more confident model has higher curves for any order, so the raw AUCs alone would favour the
    less confident one.

    Returns:
        ``(the method's title, the verdict, the numbers it rests on)``.
    """
    scores = [s["attributions"]["methods"][method]["deletion"] for s in summaries]
    chance = [s["attributions"]["random_order"]["deletion"]["mean"] for s in summaries]
    order = sorted(range(len(runs)), key=lambda i: scores[i]["mean"])
    best = order[0]
    title = summaries[0]["attributions"]["methods"][method]["title"]
    differences = run_differences([s.get("per_image") for s in scores], best)

    def described(i: int) -> str:
        low, high = scores[i]["ci95"]
        return (
            f"#{runs[i]['number']} {num(scores[i]['mean'])} [{num(low)}, {num(high)}], "
            f"{num(chance[i] - scores[i]['mean'])} below random"
        )

    def against(i: int) -> str:
        d = differences[i]
        return f"#{runs[i]['number']} {num(d.mean)} [{num(d.low)}, {num(d.high)}]" if d is not None else ""

    others = order[1:]
    beaten = [i for i in others if differences[i] is not None and differences[i].below_zero]
    unpaired = [i for i in others if differences[i] is None]
    named = f"#{runs[best]['number']} ({runs[best]['label']})"
    if unpaired:
        verdict = NOT_COMPARED
    elif len(beaten) == len(others):
        verdict = f"most faithful in {named}, its paired deletion-AUC difference below 0 against every other run"
    elif beaten:
        verdict = (
            f"{named} more faithful than {', '.join('#' + str(runs[i]['number']) for i in beaten)}; against the "
            "others the paired difference includes 0"
        )
    else:
        verdict = NO_RUN_MORE_FAITHFUL
    paired = "; ".join(against(i) for i in others if differences[i] is not None)
    paired_text = f"; paired difference #{runs[best]['number']} minus: {paired}" if paired else ""
    return title, verdict, f"deletion AUC {'; '.join(described(i) for i in order)}{paired_text}"


def _faithfulness_section(runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    """Each attribution method's deletion/insertion AUC and randomization verdict per run."""
    if not all("attributions" in s for s in summaries):
        return []
    methods = [
        m for m in summaries[0]["attributions"]["methods"] if all(m in s["attributions"]["methods"] for s in summaries)
    ]
    header = " | ".join(f"#{r['number']}" for r in runs)
    lines = [
        "",
        "## Explanations, run by run",
        "",
        "Deletion AUC (lower is better) / insertion AUC (higher is better) on the same test images, and the "
        "randomization check (Adebayo et al. 2018).",
        "",
        f"| method | {header} |",
        f"| --- | {' | '.join('---' for _ in runs)} |",
    ]
    for method in methods:
        cells = []
        for s in summaries:
            m = s["attributions"]["methods"][method]
            # The verdict at the classifier steps (pass, fail or unclear); a report from before it had pass/fail only.
            verdict = (m.get("randomization_classifier") or {}).get("verdict") or ("pass" if m["passes"] else "fail")
            cells.append(f"{num(m['deletion']['mean'])} / {num(m['insertion']['mean'])} ({verdict})")
        lines.append(f"| {summaries[0]['attributions']['methods'][method]['title']} | {' | '.join(cells)} |")
    chance = [s["attributions"]["random_order"] for s in summaries]
    cells = " | ".join(f"{num(c['deletion']['mean'])} / {num(c['insertion']['mean'])}" for c in chance)
    lines += [f"| random order | {cells} |", ""]
    judged = [_faithfulness_verdict(method, runs, summaries) for method in methods]
    # A verdict that names no run is the same sentence for every method it applies to: said once, with the
    # methods, and each method's numbers below it.
    for shared in (NO_RUN_MORE_FAITHFUL, NOT_COMPARED):
        alike = [(title, details) for title, verdict, details in judged if verdict == shared]
        if alike:
            lines.append(f"- {', '.join(title for title, _ in alike)}: {shared}.")
            lines += [f"  - {title}: {details}." for title, details in alike]
    lines += [
        f"- {title}: {verdict}; {details}."
        for title, verdict, details in judged
        if verdict not in (NO_RUN_MORE_FAITHFUL, NOT_COMPARED)
    ]
    return lines
