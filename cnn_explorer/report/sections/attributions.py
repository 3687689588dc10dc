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
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from cnn_explorer.data import first_per_class
from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.attribution import METHODS, attribute, check_methods, method_options
from cnn_explorer.interpret.attribution.faithfulness import PerturbationCurves, bootstrap_interval
from cnn_explorer.interpret.attribution.sanity import DEFAULT_THRESHOLD, passes_randomization_check
from cnn_explorer.interpret.attribution.scores import score_methods
from cnn_explorer.render.charts import perturbation_figure, randomization_figure
from cnn_explorer.render.figures import labeled_grid_figure
from cnn_explorer.render.grids import ATTRIBUTION_COLORMAP, attribution_grid
from cnn_explorer.report.markdown import figure, num, pct, table
from cnn_explorer.report.section import SectionResult
from cnn_explorer.report.sections.feature_maps import probe_row_labels

KEY = "attributions"
FIGURE, RANDOMIZATION_FIGURE, CURVES_FIGURE = (
    "attributions.png",
    "attribution_randomization.png",
    "attribution_curves.png",
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
    per_class = max(1, ev.options.faithfulness_images // len(ev.classes))
    chosen = first_per_class(test.labels, per_class, len(ev.classes))
    images, _ = ev.datamodule.prepare_batch((test.images[chosen], test.labels[chosen]), train=False)
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
                "passes": passes_randomization_check(s.randomization),
                **_auc_numbers(s.curves),
                "completeness": None
                if s.completeness is None
                else {
                    "median_relative": float(s.completeness.relative.median()),
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


def _auc_numbers(curves: PerturbationCurves) -> dict[str, Any]:
    """Mean, standard deviation and 95% bootstrap interval of the deletion and insertion AUCs over images."""
    numbers = {}
    for kind, values in (("deletion", curves.deletion_auc), ("insertion", curves.insertion_auc)):
        low, high = bootstrap_interval(values)
        numbers[kind] = {"mean": float(values.mean()), "std": float(values.std()), "ci95": [low, high]}
    return numbers


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
            f"{num(m['randomization_end'], 2)} / {num(m['randomization_mean'], 2)} "
            f"{'pass' if m['passes'] else '**fail**'}",
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
        "randomization: corr. all layers random / cascade mean",
        "deletion AUC (95% CI)",
        "insertion AUC (95% CI)",
        "IG completeness error (median)",
        "s / image",
        "central share",
    ]
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
            f"Random pixel order (chance): deletion AUC {_interval(chance['deletion'])}, insertion AUC "
            f"{_interval(chance['insertion'])}. AUCs are over {a['faithfulness_images']} test images (the first of "
            f"each class), {a['steps']} steps, deleted pixels replaced by the image's blur; central share: the "
            f"attribution in the central {box} pixels ({pct(next(iter(methods.values()))['center']['area_share'])} "
            f"of the area), on the probe images.",
            "",
            *_verdicts(a),
            "",
            figure(RANDOMIZATION_FIGURE, "Randomization check"),
            "",
            f"The randomization check (Adebayo et al. 2018) re-initializes the layers one by one, from the logits "
            f"down ({', '.join(a['randomized_layers'])}), and compares each method's maps of the probe images with "
            f"the trained model's (Spearman rank correlation of |maps|). A method whose maps stay alike while the "
            f"weights they claim to explain are random is explaining the image, not the model: a method passes when "
            f"its correlation, averaged over the cascade, is below {a['threshold']}.",
            "",
            figure(CURVES_FIGURE, "Deletion and insertion curves"),
            "",
            "Deletion and insertion (Petsiuk et al. 2018): the true class's probability as the pixels a method ranks "
            "highest are removed (a faithful map makes it fall fast: low AUC) or put back into a blurred image (it "
            "rises fast: high AUC), against a random pixel order.",
        ]
    )


def _interval(stats: dict[str, Any]) -> str:
    low, high = stats["ci95"]
    return f"{num(stats['mean'])} ({num(low)}-{num(high)})"


def _verdicts(a: dict[str, Any]) -> list[str]:
    """Sentences computed from the table: who passes the randomization check, who is most faithful."""
    methods = a["methods"]
    passing = [m["title"] for m in methods.values() if m["passes"]]
    failing = [f"{m['title']} ({num(m['randomization_mean'], 2)})" for m in methods.values() if not m["passes"]]
    lines = [
        f"- Randomization check: {', '.join(passing) or 'no method'} pass"
        + (f"; {', '.join(failing)} fail: their maps barely depend on the weights." if failing else ".")
    ]
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
        f"- Most faithful on this model: {by_deletion['title']} by deletion (AUC {num(deletion)} "
        f"vs {num(chance['deletion']['mean'])} for a random order), {by_insertion['title']} by insertion "
        f"(AUC {num(insertion)} vs {num(chance['insertion']['mean'])})."
    )
    worse = [
        m["title"]
        for m in methods.values()
        if m["deletion"]["ci95"][0] > chance["deletion"]["mean"]
        or m["insertion"]["ci95"][1] < chance["insertion"]["mean"]
    ]
    if worse:
        lines.append(f"- No better than a random pixel order on at least one curve: {', '.join(worse)}.")
    trusted = [m["title"] for m in methods.values() if m["passes"] and m["title"] not in worse]
    lines.append(
        "- Passing the randomization check and beating the random order on both curves: "
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
