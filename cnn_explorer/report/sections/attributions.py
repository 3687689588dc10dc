"""Which pixels each attribution method says the class score depends on, and whether to believe it.

For every registered method (or those chosen with ``analyze.py --methods``): its maps of the probe images,
the cascading randomization check on them (Adebayo et al. 2018: does the map change when the weights do?),
deletion and insertion curves on a stratified set of test images (Petsiuk et al. 2018: does the model's
confidence follow the map, better than a random pixel order?), Integrated Gradients' completeness, and the
seconds per image on this machine.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from cnn_explorer.data import first_per_class
from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.attribution import METHODS, attribute, check_methods, method_options
from cnn_explorer.interpret.attribution.faithfulness import PerturbationCurves, bootstrap_interval, paired_difference
from cnn_explorer.interpret.attribution.sanity import (
    DEFAULT_THRESHOLD,
    RandomizationResult,
    data_randomization,
    randomization_verdict,
)
from cnn_explorer.interpret.attribution.scores import score_methods
from cnn_explorer.interpret.features.layer_stats import median
from cnn_explorer.render.charts import perturbation_figure, randomization_figure
from cnn_explorer.render.figures import labeled_grid_figure
from cnn_explorer.render.grids import ATTRIBUTION_COLORMAP, attribution_grid
from cnn_explorer.report.markdown import figure, interval, num, pct, table
from cnn_explorer.report.section import SectionResult
from cnn_explorer.report.sections.feature_maps import probe_row_labels

KEY = "attributions"
FIGURE, RANDOMIZATION_FIGURE, CURVES_FIGURE, DATA_RANDOMIZATION_FIGURE = (
    "attributions.png",
    "attribution_randomization.png",
    "attribution_curves.png",
    "attribution_data_randomization.png",
)
CENTER_FRACTION = 0.5  # attribution share is measured in the central half of each side (a quarter of the area)
STEPS = 32  # chunks of the deletion/insertion curves
BASELINE = "blur"  # what deleted pixels become: a constant rewards scattered maps (see faithfulness.py)


def compute(ev: Evaluation) -> SectionResult:
    methods = check_methods(ev.options.methods or list(METHODS))
    settings = ev.view_settings("attributions")
    options = {name: method_options(name, settings.get("layer"), settings.get("method_options")) for name in methods}
    probe = ev.probe
    maps = {name: attribute(name, ev.net, probe.inputs, probe.labels, **options[name]).cpu() for name in methods}

    test = ev.test
    per_class, chosen, images = scored_images(ev)
    with tqdm(total=len(methods) + 1, desc="attribution checks", file=sys.stderr, leave=False) as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        scores, chance = score_methods(
            ev.net,
            images.to(ev.device),
            test.labels[chosen],
            probe.inputs,
            probe.labels,
            methods,
            options,
            steps=STEPS,
            baseline=BASELINE,
            progress=step,
        )
    numbers = {
        "probe_images": len(probe.labels),
        "probe_correct": int((ev.probe_predicted == probe.labels).sum()),
        "faithfulness_images": len(chosen),
        "faithfulness_per_class": per_class,
        "steps": STEPS,
        "baseline": BASELINE,
        "threshold": DEFAULT_THRESHOLD,
        "randomized_layers": list(next(iter(scores.values())).randomization.layers),
        "random_order": _auc_numbers(chance),
        "methods": {
            name: {
                "title": METHODS[name].title,
                "negative_control": METHODS[name].negative_control,
                "center": center_share(maps[name]),
                "seconds_per_image": s.seconds_per_image,
                "randomization_spearman": s.randomization.spearman_mean.tolist(),
                "randomization_ssim": s.randomization.ssim_mean.tolist(),
                "randomization_mean": float(s.randomization.spearman_mean.mean()),
                "randomization_end": float(s.randomization.spearman_mean[-1]),
                **_verdict_numbers(s.randomization),
                **_auc_numbers(s.curves, chance),
                "completeness": None
                if s.completeness is None
                else {
                    "median_relative": median(s.completeness.relative),
                    "within_1pct": float((s.completeness.relative <= 0.01).float().mean()),
                    "max_absolute": float(s.completeness.absolute.max()),
                },
            }
            for name, s in scores.items()
        },
    }
    overlay = len(maps) == 1  # one method: its heatmap over the image too; several: one column each
    columns = ["image", *(METHODS[n].title for n in methods), *(["overlay (50%)"] if overlay else [])]
    figures = {
        FIGURE: labeled_grid_figure(
            attribution_grid(probe.images, list(maps.values()), overlay=overlay),
            "Attribution of the true class, one validation image per class",
            probe_row_labels(ev),
            columns,
            (ATTRIBUTION_COLORMAP, "|attribution| / image max"),
        ),
        RANDOMIZATION_FIGURE: randomization_figure(
            numbers["randomized_layers"],
            {METHODS[n].title: m["randomization_spearman"] for n, m in numbers["methods"].items()},
            DEFAULT_THRESHOLD,
        ),
        CURVES_FIGURE: perturbation_figure(
            chance.fractions.tolist(),
            {METHODS[n].title: s.curves.mean_deletion.tolist() for n, s in scores.items()}
            | {"random order": chance.mean_deletion.tolist()},
            {METHODS[n].title: s.curves.mean_insertion.tolist() for n, s in scores.items()}
            | {"random order": chance.mean_insertion.tolist()},
        ),
    }
    return SectionResult(numbers, figures)


def data_randomization_result(ev: Evaluation, random_labels: nn.Module, run_name: str) -> SectionResult:
    """Adebayo et al.'s data randomization test for every method of the report: its maps from ``ev.net`` and from
    ``random_labels`` (the same architecture trained on permuted labels, on ``ev.device``) on the scored test images
    (:func:`scored_images`), compared image by image and judged as the model randomization check is
    (:func:`~cnn_explorer.interpret.attribution.sanity.data_randomization`); and a figure of both models' maps of the
    probe images. ``numbers`` go into metrics.json as ``attributions.data_randomization``."""
    methods = check_methods(ev.options.methods or list(METHODS))
    settings = ev.view_settings("attributions")
    options = {name: method_options(name, settings.get("layer"), settings.get("method_options")) for name in methods}
    per_class, chosen, images = scored_images(ev)
    images, targets = images.to(ev.device), ev.test.labels[chosen].to(ev.device)
    random_labels.eval()
    judged = {}
    for name in methods:
        spearman, verdict = data_randomization(ev.net, random_labels, images, targets, _bound(name, options[name]))
        judged[name] = {
            "title": METHODS[name].title,
            "mean": verdict.mean,
            "ci95": [verdict.low, verdict.high],
            "verdict": verdict.verdict,
            "spearman": spearman.tolist(),
        }
    numbers = {
        "random_labels_run": run_name,
        "images": len(chosen),
        "per_class": per_class,
        "classes": len(ev.classes),
        "threshold": DEFAULT_THRESHOLD,
        "methods": judged,
    }
    probe = ev.probe
    maps = [
        attribute(name, net, probe.inputs.to(ev.device), probe.labels.to(ev.device), **options[name]).cpu()
        for name in methods
        for net in (ev.net, random_labels)
    ]
    columns = ["image", *(f"{METHODS[n].title}{suffix}" for n in methods for suffix in ("", "\n(random labels)"))]
    fig = labeled_grid_figure(
        attribution_grid(probe.images, maps, overlay=False),
        "True-class attribution: the model beside the net trained on permuted labels",
        probe_row_labels(ev),
        columns,
        (ATTRIBUTION_COLORMAP, "|attribution| / image max"),
    )
    return SectionResult(numbers, {DATA_RANDOMIZATION_FIGURE: fig})


def _bound(name: str, options: dict[str, Any]) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """Method ``name`` with its options, as ``method(model, images, targets) -> maps``."""

    def method(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return attribute(name, model, images, targets, **options)

    return method


def scored_images(ev: Evaluation) -> tuple[int, Tensor, Tensor]:
    """The test images the methods are scored on: the first ``faithfulness_images / classes`` of each class (at least
    one). Returns ``(per class, indices [N] into the test set, normalized images [N, C, H, W] on the CPU)``."""
    test = ev.test
    per_class = max(1, ev.options.faithfulness_images // len(ev.classes))
    chosen = first_per_class(test.labels, per_class, len(ev.classes))
    images, _ = ev.datamodule.prepare_batch((test.images[chosen], test.labels[chosen]), train=False)
    return per_class, chosen, images


def chosen_text(images: int, per_class: int | None, classes: int) -> str:
    """How the scored images were chosen, as the numbers say: "the first of each class" only for one per class."""
    if per_class is None:  # a report written before the count was recorded
        return "a fixed stratified choice"
    first = "the first" if per_class == 1 else f"the first {per_class}"
    short = "" if images == per_class * classes else ", fewer where a class has fewer test images"
    return f"{first} of each class{short}"


def _auc_numbers(curves: PerturbationCurves, chance: PerturbationCurves | None = None) -> dict[str, Any]:
    """Per curve: the per-image AUCs, their mean, standard deviation and 95% bootstrap interval, and (given the
    random order's ``chance`` curves on the same images) the paired interval of the per-image difference."""
    numbers = {}
    for kind in ("deletion", "insertion"):
        values = getattr(curves, f"{kind}_auc")  # [N]
        low, high = bootstrap_interval(values)
        numbers[kind] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "ci95": [low, high],
            "per_image": values.tolist(),  # the comparison pairs runs image by image
        }
        if chance is not None:
            paired = paired_difference(values, getattr(chance, f"{kind}_auc"))
            numbers[kind]["vs_random"] = {"mean": paired.mean, "ci95": [paired.low, paired.high]}
    return numbers


def _verdict_numbers(result: RandomizationResult) -> dict[str, Any]:
    """The randomization verdict at the classifier steps, with its bootstrap interval over images."""
    verdict = randomization_verdict(result)
    return {
        "randomization_classifier": {
            "layers": list(verdict.layers),
            "mean": verdict.mean,
            "ci95": [verdict.low, verdict.high],
            "verdict": verdict.verdict,
        },
        "passes": verdict.passes,
    }


def beats_random(method: dict[str, Any]) -> dict[str, bool]:
    """Per curve, whether the paired 95% interval of (method - random order) per-image AUC excludes 0 on the
    good side: below 0 for deletion (the probability falls faster), above 0 for insertion."""
    return {
        "deletion": method["deletion"]["vs_random"]["ci95"][1] < 0,
        "insertion": method["insertion"]["vs_random"]["ci95"][0] > 0,
    }


def worse_than_random(method: dict[str, Any]) -> dict[str, bool]:
    """Per curve, whether the paired interval excludes 0 on the bad side."""
    return {
        "deletion": method["deletion"]["vs_random"]["ci95"][0] > 0,
        "insertion": method["insertion"]["vs_random"]["ci95"][1] < 0,
    }


def center_share(maps: Tensor) -> dict[str, Any]:
    """Share of each map's absolute attribution that falls in the central region (``[N, H, W]`` -> statistics)."""
    height, width = maps.shape[1:]
    top, left = round(height * (1 - CENTER_FRACTION) / 2), round(width * (1 - CENTER_FRACTION) / 2)
    magnitude = maps.abs()
    center = magnitude[:, top : height - top, left : width - left].sum(dim=(1, 2))
    share = center / magnitude.sum(dim=(1, 2)).clamp_min(torch.finfo(torch.float32).tiny)  # [N]
    return {
        "box": [height - 2 * top, width - 2 * left],
        "area_share": (height - 2 * top) * (width - 2 * left) / (height * width),
        "mean": float(share.mean()),
        "min": float(share.min()),
        "max": float(share.max()),
    }


def markdown(summary: dict[str, Any]) -> str:
    a = summary[KEY]
    methods = a["methods"]
    described = "; ".join(f"**{m['title']}**: {METHODS[n].description}" for n, m in methods.items())
    rows = [
        (
            m["title"],
            _randomization_cell(m["randomization_classifier"]),
            _interval(m["deletion"]),
            _interval(m["insertion"]),
            "n/a" if m["completeness"] is None else pct(m["completeness"]["median_relative"]),
            num(m["seconds_per_image"], 4),
            pct(m["center"]["mean"]),
        )
        for n, m in methods.items()
    ]
    chance = a["random_order"]
    header = [
        "method",
        "randomization: corr. at the classifier (95% CI)",
        "deletion AUC (95% CI)",
        "insertion AUC (95% CI)",
        "IG completeness error (median)",
        "s / image",
        "central share",
    ]
    paired_rows = [
        (
            m["title"],
            _interval(m["deletion"]["vs_random"]),
            _interval(m["insertion"]["vs_random"]),
            "yes" if all(beats_random(m).values()) else "no",
        )
        for m in methods.values()
    ]
    paired_header = [
        "method",
        "deletion AUC - random order (95% CI)",
        "insertion AUC - random order (95% CI)",
        "beats it on both",
    ]
    classifier = " and ".join(next(iter(methods.values()))["randomization_classifier"]["layers"])
    box = "x".join(map(str, next(iter(methods.values()))["center"]["box"]))
    return "\n".join(
        [
            "## Attributions",
            "",
            figure(FIGURE, "Attribution maps"),
            "",
            f"What it shows: for one validation image per class, where each method puts the evidence for the true "
            f"class, as |attribution| scaled to each image's maximum (bright = most). {described}. "
            f"{a['probe_correct']} of {a['probe_images']} probe images are classified correctly.",
            "",
            *table(header, rows, "lrrrrrr"),
            "",
            "Paired against the random order: per image, the method's AUC minus the random order's on the same "
            "image, averaged, with a 95% bootstrap interval over images. A method beats the random order on a "
            "curve only where that interval excludes 0 (below 0 for deletion, above for insertion); the two "
            "unpaired intervals above may overlap while the paired difference is consistent.",
            "",
            *table(paired_header, paired_rows, "lrrl"),
            "",
            f"Random pixel order (chance): deletion AUC {_interval(chance['deletion'])}, insertion AUC "
            f"{_interval(chance['insertion'])}. AUCs are over {a['faithfulness_images']} test images ("
            f"{chosen_text(a['faithfulness_images'], a.get('faithfulness_per_class'), len(summary['run']['classes']))}"
            f"), {a['steps']} steps, deleted pixels replaced by the image's blur; central share: the "
            f"attribution in the central {box} pixels ({pct(next(iter(methods.values()))['center']['area_share'])} "
            f"of the area), on the probe images.",
            "",
            *_verdicts(a),
            "",
            figure(RANDOMIZATION_FIGURE, "Randomization check"),
            "",
            f"The randomization check (Adebayo et al. 2018) re-initializes the layers one by one, from the logits "
            f"down ({', '.join(a['randomized_layers'])}), and compares each method's maps of the probe images with "
            f"the trained model's (Spearman rank correlation of |maps|); the figure shows the whole cascade. A "
            f"method whose maps stay alike once the layers that decide the class are random does not explain the "
            f"decision, whatever the lower layers do to its maps later. So the verdict is taken at the classifier "
            f"steps (after re-initializing {classifier}): each image's correlation averaged over those steps, then "
            f"over the {a['probe_images']} probe images, with a 95% bootstrap interval over images. A method passes "
            f"when the interval lies below {a['threshold']}, fails when it lies at or above it, and is unclear when "
            f"it straddles it.",
            "",
            figure(CURVES_FIGURE, "Deletion and insertion curves"),
            "",
            "Deletion and insertion (Petsiuk et al. 2018): the true class's probability as the pixels a method ranks "
            "highest are removed (a faithful map makes it fall fast: low AUC) or put back into a blurred image (it "
            "rises fast: high AUC), against a random pixel order.",
            "",
            *_data_randomization_lines(a.get("data_randomization"), a["threshold"]),
        ]
    )


def _data_randomization_lines(d: dict[str, Any] | None, threshold: float) -> list[str]:
    """The data randomization test's table, figure and verdicts; how to run it where it was not."""
    if d is None:
        return [
            "The data randomization test (Adebayo et al. 2018) was not run: train the same model on permuted labels "
            "(`python train.py <this run's overrides> data.random_labels_seed=0`) and give that run to "
            "`python analyze.py <this run> --random-labels-run <that run>`."
        ]
    methods = d["methods"].values()
    rows = [(m["title"], _interval(m, 2), {"fail": "**fail**"}.get(m["verdict"], m["verdict"])) for m in methods]
    by_verdict = {v: [m["title"] for m in methods if m["verdict"] == v] for v in ("pass", "fail", "unclear")}
    verdicts = f"- Data randomization: {', '.join(by_verdict['pass']) or 'no method'} pass"
    if by_verdict["fail"]:
        verdicts += (
            f"; {', '.join(by_verdict['fail'])} fail: their maps of a model that could only memorize are alike the "
            f"real model's, so they show the image more than what the model learned"
        )
    if by_verdict["unclear"]:
        verdicts += f"; unclear (the interval straddles {threshold}): {', '.join(by_verdict['unclear'])}"
    return [
        "### Data randomization",
        "",
        f"The data randomization test (Adebayo et al. 2018): the same architecture trained on permuted labels "
        f"(`{d['random_labels_run']}`) can only memorize its training set; a method that explains what the model "
        f"learned must give it different maps. Per image, the Spearman rank correlation of the two models' |maps| of "
        f"the true class, on {d['images']} test images "
        f"({chosen_text(d['images'], d['per_class'], d['classes'])}), averaged with a 95% bootstrap interval over "
        f"images. A method passes when the interval lies below {d['threshold']}, fails when it lies at or above it, "
        f"and is unclear when it straddles it: the same rule as the model randomization check.",
        "",
        *table(["method", "rank corr. with the random-label model's maps (95% CI)", "verdict"], rows, "lrl"),
        "",
        verdicts + ".",
        "",
        figure(DATA_RANDOMIZATION_FIGURE, "Maps of the model and of the random-label model"),
    ]


def _interval(stats: dict[str, Any], digits: int = 3) -> str:
    """``{"mean", "ci95"}`` as one unbreakable ``mean [low, high]``."""
    return interval(stats["mean"], *stats["ci95"], digits)


def _randomization_cell(r: dict[str, Any]) -> str:
    verdict = {"pass": "pass", "fail": "**fail**", "unclear": "unclear"}[r["verdict"]]
    return f"{_interval(r, 2)} {verdict}"


def _verdicts(a: dict[str, Any]) -> list[str]:
    """Sentences computed from the tables: who passes the randomization check, who beats the random order."""
    methods = a["methods"]
    by_verdict = {
        verdict: [
            f"{m['title']} ({num(m['randomization_classifier']['mean'], 2)})"
            for m in methods.values()
            if m["randomization_classifier"]["verdict"] == verdict
        ]
        for verdict in ("pass", "fail", "unclear")
    }
    line = f"- Randomization check at the classifier: {', '.join(by_verdict['pass']) or 'no method'} pass"
    if by_verdict["fail"]:
        line += f"; {', '.join(by_verdict['fail'])} fail: their maps survive re-initializing the classifier"
    if by_verdict["unclear"]:
        line += f"; unclear (the interval straddles {a['threshold']}): {', '.join(by_verdict['unclear'])}"
    lines = [line + "."]
    for m in methods.values():
        if m["negative_control"]:
            verdict = (
                "fails, as it should" if not m["passes"] else "passes, which it should not: treat the check with care"
            )
            lines.append(f"- {m['title']} is the known negative control (Adebayo et al. 2018) and {verdict}.")
    chance = a["random_order"]
    by_deletion = min(methods.values(), key=lambda m: m["deletion"]["mean"])
    by_insertion = max(methods.values(), key=lambda m: m["insertion"]["mean"])
    deletion, insertion = by_deletion["deletion"]["mean"], by_insertion["insertion"]["mean"]
    lines.append(
        f"- Lowest mean deletion AUC on this model: {by_deletion['title']} ({num(deletion)} vs "
        f"{num(chance['deletion']['mean'])} for a random order); highest insertion AUC: {by_insertion['title']} "
        f"({num(insertion)} vs {num(chance['insertion']['mean'])})."
    )
    worse = [m["title"] for m in methods.values() if any(worse_than_random(m).values())]
    if worse:
        lines.append(f"- Worse than a random pixel order on at least one curve (paired interval): {', '.join(worse)}.")
    beating = [m["title"] for m in methods.values() if all(beats_random(m).values())]
    undecided = [m["title"] for m in methods.values() if m["title"] not in beating and m["title"] not in worse]
    if undecided:
        lines.append(
            "- Not shown to beat a random pixel order on both curves (a paired interval includes 0): "
            f"{', '.join(undecided)}."
        )
    data = a.get("data_randomization")
    trusted = [
        m["title"]
        for n, m in methods.items()
        if m["passes"] and m["title"] in beating and (data is None or data["methods"][n]["verdict"] == "pass")
    ]
    checks = "the randomization check" if data is None else "both randomization checks (model and data, below)"
    lines.append(
        f"- Passing {checks} and beating the random order on both curves (paired intervals): "
        f"{', '.join(trusted) or 'none'}."
    )
    completeness = [m for m in methods.values() if m["completeness"] is not None]
    for m in completeness:
        c = m["completeness"]
        lines.append(
            f"- {m['title']} completeness: the maps sum to the logit's change within 1% for {pct(c['within_1pct'])} of "
            f"the images (median error {pct(c['median_relative'])}; largest {num(c['max_absolute'])} logits)."
        )
    if any(math.isnan(m["randomization_mean"]) for m in methods.values()):
        lines.append("- Some correlations are undefined (constant maps).")
    return lines
