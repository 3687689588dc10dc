"""The comparison of several runs (a multirun sweep): one table row per run, curves and per-class accuracy
side by side, and the confusions that change most between runs.

Built from each run's ``report/metrics.json`` (written by :func:`cnn_explorer.report.run_report.write_run_report`),
so the comparison states the same numbers as the runs' own reports. Written like a report: into a temporary
folder, then swapped in for ``<out>/`` (``comparison.md``, ``comparison.json`` and the PNGs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
from cnn_explorer.report.markdown import interval, num, pct, table
from cnn_explorer.report.metrics_json import none_to_nan, read_metrics_json, write_metrics
from cnn_explorer.report.run_report import METRICS_FILE, REPORT_DIR, REPORT_FILE
from cnn_explorer.report.sections.attributions import beats_random, worse_than_random
from cnn_explorer.rundir import is_run_dir, load_net, read_run

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
    data (their validation images differ), or when one is a report without its run dir (``analyze.py
    --compare-only`` on reports as committed in outputs/: no net to run)."""
    if not all(is_run_dir(run) for run in runs):
        return None
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
    lines += _image_size_section(runs, summaries)
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
        "image_size": run.get("image_size"),  # absent from reports written before it was recorded
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
            verdict = _randomization_verdict(m)
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


CURVES = ("deletion", "insertion")


def _randomization_verdict(method: dict[str, Any]) -> str:
    """The randomization verdict at the classifier steps (pass, fail or unclear); a report from before it was
    recorded has the whole cascade's pass/fail only."""
    return (method.get("randomization_classifier") or {}).get("verdict") or ("pass" if method["passes"] else "fail")


def image_sizes(summaries: list[dict[str, Any]]) -> list[int] | None:
    """Each run's image side in pixels (``run.image_size`` of its metrics.json), or None when a report does not
    record it (one written before it was)."""
    sizes = [s.get("run", {}).get("image_size") for s in summaries]
    return None if any(size is None for size in sizes) else [int(size) for size in sizes]


def curve_states(method: dict[str, Any]) -> dict[str, str] | None:
    """Per curve, ``"beats"``, ``"worse"`` or ``"includes 0"``: where the paired 95% interval of (method - random
    order) per-image AUC lies, by the run report's rule (:func:`beats_random`, :func:`worse_than_random`); None for
    a report without paired intervals."""
    if not all("vs_random" in method[curve] for curve in CURVES):
        return None
    beats, worse = beats_random(method), worse_than_random(method)
    return {c: "beats" if beats[c] else "worse" if worse[c] else "includes 0" for c in CURVES}


def _beats_both(method: dict[str, Any]) -> bool | None:
    states = curve_states(method)
    return None if states is None else all(state == "beats" for state in states.values())


def _missed(number: int, method: dict[str, Any]) -> str:
    """Where run ``number``'s method does not beat its random order: ``#2: deletion interval includes 0``."""
    states = curve_states(method) or {}
    words = {"worse": "worse than random", "includes 0": "interval includes 0"}
    return f"#{number}: " + ", ".join(f"{c} {words[s]}" for c, s in states.items() if s != "beats")


def _ratio(value: float) -> str:
    """A ratio as ``16x``, ``2.5x`` or ``0.40x``: as many digits as tell it apart."""
    return f"{value:.0f}x" if value >= 10 else f"{value:.1f}x" if value >= 1 else f"{value:.2f}x"


@dataclass(frozen=True)
class _BySize:
    """The runs of :func:`_image_size_section` grouped by image size, what each of its sentences reads."""

    runs: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    per_run: list[dict[str, Any]]  # each run's ``attributions.methods``
    methods: list[str]  # those in every run
    small: tuple[int, list[int]]  # the smallest size in px, the indices of its runs
    large: tuple[int, list[int]]  # the largest


def _image_size_section(runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    """What changes from the smallest image size to the largest in what the attribution methods show and how they
    score: a table per method and run, and sentences computed from it. Each run is judged against its own random
    pixel order on its own images (the runs' images differ, so their AUCs are not paired with each other). Left
    out when the runs share one size, a report does not record its size, or the runs share no method."""
    sizes = image_sizes(summaries)
    if sizes is None or len(set(sizes)) < 2 or not all("attributions" in s for s in summaries):
        return []
    per_run = [s["attributions"]["methods"] for s in summaries]
    methods = [m for m in per_run[0] if all(m in p for p in per_run)]
    if not methods:
        return []
    small, large = min(sizes), max(sizes)
    at_small = [i for i, size in enumerate(sizes) if size == small]
    at_large = [i for i, size in enumerate(sizes) if size == large]
    who = "; ".join(f"#{r['number']} ({r['label']}) at {size} px" for r, size in zip(runs, sizes, strict=True))
    by_size = _BySize(runs, summaries, per_run, methods, (small, at_small), (large, at_large))
    lines = [
        "",
        f"## From {small} px to {large} px: what the attribution methods show and how they score",
        "",
        f"{who}. Each run scores its methods on its own test images, against its own random pixel order; a method "
        "beats that order on a curve only where the paired 95% interval of (method - random order) per-image AUC "
        "excludes 0 on the good side (below 0 for deletion, above for insertion), as in the run reports. Seconds per "
        "image are as each report measured them, on the machine it ran on.",
        "",
        *_image_size_table(runs, summaries, sizes, methods),
        "",
        _beating_sentence(runs, per_run, sizes, methods),
        *_side_sentences(by_size),
        *_randomization_sentences(by_size),
        *_center_sentences(by_size),
        *_cost_sentences(by_size),
    ]
    return lines


def _image_size_table(
    runs: list[dict[str, Any]], summaries: list[dict[str, Any]], sizes: list[int], methods: list[str]
) -> list[str]:
    """One row per method and run: size, each curve against random, randomization verdict, centre share, cost."""
    words = {"beats": "yes", "worse": "no (worse)", "includes 0": "no"}
    rows = []
    for method in methods:
        for r, s, size in zip(runs, summaries, sizes, strict=True):
            m = s["attributions"]["methods"][method]
            states = curve_states(m)
            curves = [
                "n/a" if states is None else f"{words[states[c]]}, {_interval(m[c]['vs_random'])}" for c in CURVES
            ]
            classifier = m.get("randomization_classifier")
            randomization = (
                f"{classifier['verdict']}, {_interval(classifier, 2)}"
                if classifier
                else f"{_randomization_verdict(m)} (whole cascade)"
            )
            center = m.get("center")
            share = "n/a" if center is None else f"{pct(center['mean'])} vs {pct(center['area_share'])}"
            rows.append(
                (
                    m["title"],
                    f"#{r['number']}",
                    f"{size} px",
                    *curves,
                    randomization,
                    share,
                    num(m["seconds_per_image"], 4),
                )
            )
    header = [
        "method",
        "run",
        "image size",
        "beats random on deletion (method - random, 95% CI)",
        "beats random on insertion (method - random, 95% CI)",
        "randomization at the classifier (95% CI)",
        "central share vs the box's share of the area",
        "s / image",
    ]
    return table(header, rows, "lllrrlrr")


def _interval(stats: dict[str, Any], digits: int = 3) -> str:
    return interval(stats["mean"], *stats["ci95"], digits)


def _beating_sentence(
    runs: list[dict[str, Any]], per_run: list[dict[str, Any]], sizes: list[int], methods: list[str]
) -> str:
    """Per run, smallest size first: the methods that beat its random order on both curves."""
    parts = []
    for i in sorted(range(len(runs)), key=lambda i: sizes[i]):
        beating = [per_run[i][m]["title"] for m in methods if _beats_both(per_run[i][m])]
        unknown = [per_run[i][m]["title"] for m in methods if _beats_both(per_run[i][m]) is None]
        note = f" (no paired intervals for {', '.join(unknown)})" if unknown else ""
        parts.append(f"#{runs[i]['number']} ({sizes[i]} px): {', '.join(beating) or 'none'}{note}")
    return f"- Beat their own random pixel order on both curves: {'; '.join(parts)}."


def _side_sentences(by_size: _BySize) -> list[str]:
    """Which methods beat the random order on both curves at one size and not at the other, and which stay."""
    runs, per_run, methods = by_size.runs, by_size.per_run, by_size.methods
    (px_small, runs_small), (px_large, runs_large) = by_size.small, by_size.large
    lost, gained, mixed, unjudged = [], [], [], []
    same: dict[bool, list[str]] = {True: [], False: []}
    for method in methods:
        title = per_run[0][method]["title"]
        before = {_beats_both(per_run[i][method]) for i in runs_small}
        after = {_beats_both(per_run[i][method]) for i in runs_large}
        if None in before | after:
            unjudged.append(title)
        elif len(before) == 1 and len(after) == 1 and before == after:
            same[before.pop()].append(title)
        elif len(before) == 1 and len(after) == 1:
            failing = runs_large if before.pop() else runs_small
            missed = "; ".join(_missed(runs[i]["number"], per_run[i][method]) for i in failing)
            (lost if failing is runs_large else gained).append(f"{title} ({missed})")
        else:
            verdicts = ", ".join(
                f"#{runs[i]['number']} {'yes' if _beats_both(per_run[i][method]) else 'no'}"
                for i in runs_small + runs_large
            )
            mixed.append(f"{title} ({verdicts})")
    lines = []
    if lost:
        lines.append(f"- Beat it on both curves at {px_small} px but not at {px_large} px: {', '.join(lost)}.")
    if gained:
        lines.append(f"- Beat it on both curves at {px_large} px but not at {px_small} px: {', '.join(gained)}.")
    if mixed:
        lines.append(f"- Not the same in every run of one size: {', '.join(mixed)}.")
    kept = [f"beat it on both curves at both sizes: {', '.join(same[True])}"] if same[True] else []
    kept += [f"at neither size: {', '.join(same[False])}"] if same[False] else []
    if kept:
        lead = "No method changes side" if not (lost or gained or mixed) else "Unchanged"
        lines.append(f"- {lead} from {px_small} px to {px_large} px: {'; '.join(kept)}.")
    if unjudged:
        lines.append(
            f"- Not judged (a report holds no paired intervals against its random order): {', '.join(unjudged)}."
        )
    return lines


def _randomization_sentences(by_size: _BySize) -> list[str]:
    """Whether each method's randomization verdict at the classifier changes from the smaller size to the larger."""
    runs, per_run, methods = by_size.runs, by_size.per_run, by_size.methods
    (px_small, runs_small), (px_large, runs_large) = by_size.small, by_size.large

    def described(indices: list[int], method: str) -> str:
        means = []
        for i in indices:
            mean = (per_run[i][method].get("randomization_classifier") or {}).get("mean")
            means.append(f"#{runs[i]['number']}" + ("" if mean is None else f" {num(mean, 2)}"))
        return f"({', '.join(means)})"

    changed, mixed = [], []
    same: dict[str, list[str]] = {}
    for method in methods:
        title = per_run[0][method]["title"]
        before = {_randomization_verdict(per_run[i][method]) for i in runs_small}
        after = {_randomization_verdict(per_run[i][method]) for i in runs_large}
        if len(before) > 1 or len(after) > 1:
            verdicts = ", ".join(
                f"#{runs[i]['number']} {_randomization_verdict(per_run[i][method])}" for i in runs_small + runs_large
            )
            mixed.append(f"{title} ({verdicts})")
        elif before == after:
            same.setdefault(before.pop(), []).append(title)
        else:
            changed.append(
                f"{title} {before.pop()} at {px_small} px {described(runs_small, method)} -> {after.pop()} at "
                f"{px_large} px {described(runs_large, method)}"
            )
    what = "Randomization verdict at the classifier (each net's own classifier layers; mean rank correlation)"
    lines = [f"- {what} changes: {'; '.join(changed)}."] if changed else []
    if mixed:
        lines.append(f"- Randomization verdicts not the same in every run of one size: {', '.join(mixed)}.")
    kept = "; ".join(f"{verdict} at both sizes: {', '.join(titles)}" for verdict, titles in same.items())
    if kept:
        lead = "No randomization verdict changes" if not (changed or mixed) else "Randomization verdicts the same"
        lines.append(f"- {lead} from {px_small} px to {px_large} px: {kept}.")
    return lines


def _center_sentences(by_size: _BySize) -> list[str]:
    """How each method's share of the map in the central box changes, above the box's share of the image.

    The reports store no interval for the share (it is measured on the few probe images), so a difference is stated,
    not judged: higher or lower by these numbers, not a tested change."""
    runs, per_run, methods = by_size.runs, by_size.per_run, by_size.methods
    (px_small, runs_small), (px_large, runs_large) = by_size.small, by_size.large
    indices = runs_small + runs_large
    if not all("center" in per_run[i][m] for i in indices for m in methods):
        return []
    areas = sorted({per_run[i][m]["center"]["area_share"] for i in indices for m in methods})
    area = pct(areas[0]) if len(areas) == 1 else f"{pct(areas[0])} to {pct(areas[-1])}"

    def excess(i: int, method: str) -> float:
        center = per_run[i][method]["center"]
        return center["mean"] - center["area_share"]

    parts, direction = [], {"higher": [], "lower": [], "mixed": []}
    for method in methods:
        title = per_run[0][method]["title"]
        shares = [
            f"#{runs[i]['number']} {pct(per_run[i][method]['center']['mean'])} ({px} px)"
            for indices_at, px in ((runs_small, px_small), (runs_large, px_large))
            for i in indices_at
        ]
        differences = [excess(j, method) - excess(i, method) for i in runs_small for j in runs_large]
        change = f", {100 * differences[0]:+.1f} points" if len(differences) == 1 else ""
        parts.append(f"{title} {' -> '.join(shares)}{change}")
        key = "higher" if min(differences) > 0 else "lower" if max(differences) < 0 else "mixed"
        direction[key].append(title)
    said = {
        "higher": f"more at {px_large} px than at {px_small} px",
        "lower": f"less at {px_large} px than at {px_small} px",
        "mixed": "not more or less in every pair of runs",
    }
    summary = "; ".join(f"{said[key]}: {', '.join(titles)}" for key, titles in direction.items() if titles)
    return [
        f"- Share of the |map| in the central box ({area} of the image; on the probe images): {'; '.join(parts)}. "
        f"Counted above the box's own share of the image, the maps concentrate in the centre {summary}. The reports "
        f"hold no interval for this share, so these are differences in the numbers, not tested changes."
    ]


def _cost_sentences(by_size: _BySize) -> list[str]:
    """How the seconds per image grow from the smaller size to the larger, against the growth in pixels."""
    runs, per_run, methods = by_size.runs, by_size.per_run, by_size.methods
    (px_small, runs_small), (px_large, runs_large) = by_size.small, by_size.large
    pixels = (px_large / px_small) ** 2
    pairs = [(i, j) for i in runs_small for j in runs_large]
    parts, faster, slower = [], [], []
    for method in methods:
        title = per_run[0][method]["title"]
        seconds = [per_run[i][method].get("seconds_per_image") for i in runs_small + runs_large]
        if not all(isinstance(v, int | float) and v > 0 for v in seconds):
            continue
        ratios = [per_run[j][method]["seconds_per_image"] / per_run[i][method]["seconds_per_image"] for i, j in pairs]
        named = [
            f"{_ratio(r)}" + (f" (#{runs[j]['number']}/#{runs[i]['number']})" if len(pairs) > 1 else "")
            for r, (i, j) in zip(ratios, pairs, strict=True)
        ]
        parts.append(f"{', '.join(named)} for {title}")
        if min(ratios) > pixels:
            faster.append(title)
        elif max(ratios) <= pixels:
            slower.append(title)
    if not parts:
        return []
    of = f" (#{runs[pairs[0][1]]['number']} over #{runs[pairs[0][0]]['number']})" if len(pairs) == 1 else ""
    grew = [f"more than the pixel count for {', '.join(faster)}"] if faster else []
    grew += [f"no more than the pixel count for {', '.join(slower)}"] if slower else []
    sentence = (
        f"- Cost per image: {px_large} px has {_ratio(pixels)} the pixels of {px_small} px; the seconds per image "
        f"scale by {', '.join(parts)}{of}" + (f": {'; '.join(grew)}." if grew else ".")
    )
    nets = {
        px: sorted({by_size.summaries[i]["run"]["net"]["class"] for i in at})
        for px, at in ((px_small, runs_small), (px_large, runs_large))
    }
    if nets[px_small] != nets[px_large]:
        sentence += (
            f" The nets differ too ({', '.join(nets[px_small])} at {px_small} px, {', '.join(nets[px_large])} at "
            f"{px_large} px): this is the cost of both changes, not of the pixels alone."
        )
    return [sentence]
