"""The Markdown of a run's report, written from its summary (the dict saved as metrics.json).

Every number here comes from the summary, so the text and metrics.json cannot disagree; every
observation is stated with the number behind it. Accuracies are fractions in the summary and
percentages with two decimals in the text.
"""

from __future__ import annotations

from typing import Any

OVERFIT_RISE = 0.05  # val loss this far (relative) above its minimum at the end counts as rising


def pct(value: float | None) -> str:
    """``0.9731 -> "97.31%"``; ``None`` (not logged) -> ``"n/a"``."""
    return "n/a" if value is None else f"{value:.2%}"


def num(value: float | None, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals; ``None`` -> ``"n/a"``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_report(s: dict[str, Any]) -> str:
    """The whole report.md for summary ``s`` (see :func:`cnn_explorer.report.write_run_report`)."""
    sections = [
        _header(s),
        _summary(s),
        _learning_curves(s),
        _per_class(s),
        _confusions(s),
        _seed_claims(s),
        _mistakes(s),
        _filters(s),
        _feature_maps(s),
        _saliency(s),
    ]
    return "\n\n".join(section.strip("\n") for section in sections) + "\n"


def _header(s: dict[str, Any]) -> str:
    net, choices = s["net"], s["choices"]
    model = f"`{choices['model']}` " if "model" in choices else ""
    data = f"`{choices['data']}`" if "data" in choices else "the run's data"
    overrides = " ".join(s["overrides"]) or "none"
    return f"""
# Report: {s["run_name"]}

- Run dir: `{s["run_dir"]}`
- Model: {model}({net["class"]}, architecture `{net["architecture"]}`, {net["parameters"]:,} parameters)
- Data: {data}, {s["test"]["images"]:,} test images, classes: {", ".join(s["classes"])}
- Overrides: `{overrides}`
- Evaluated: `{s["checkpoint"]["file"]}` (epoch {s["checkpoint"]["epoch"]}), the best-val/acc checkpoint: the
  `epochNNN-val_accX.XXXX.ckpt` file with the highest val_acc in its name.
"""


def _summary(s: dict[str, Any]) -> str:
    test, training = s["test"], s["training"]
    if test["logged_acc"] is None:
        logged = "train.py logged no test/acc for this run (trained with test=false)."
    else:
        logged = (
            f"train.py logged test/acc {pct(test['logged_acc'])} for this checkpoint "
            f"(difference {_signed_pp(test['difference_pp'])})."
        )
    per_class = sorted(test["per_class_acc"].items(), key=lambda item: item[1])
    top = test["top_confused"][0] if test["top_confused"] else None
    confused = (
        f"- Most confused: {top['true']} -> {top['predicted']}, {pct(top['rate'])} of the {top['true']} test "
        f"images ({top['count']})."
        if top
        else "- No test image was confused with another class."
    )
    if per_class[0][1] == per_class[-1][1]:
        extremes = f"- Every class has the same test accuracy, {pct(per_class[0][1])}."
    else:
        weakest, strongest = per_class[0], per_class[-1]
        extremes = (
            f"- Weakest class: {weakest[0]} ({pct(weakest[1])}); strongest: {strongest[0]} ({pct(strongest[1])})."
        )
    return f"""
## Summary

- Test accuracy of the best checkpoint: **{pct(test["acc"])}** ({test["correct"]:,} of {test["images"]:,}),
  computed here. {logged}
- Best validation accuracy: {pct(training["best_val_acc"])} at epoch {training["best_epoch"]}
  ({training["epochs"]} epochs logged, the last is epoch {training["last_epoch"]}).
{extremes}
{confused}
- Seconds per epoch (training plus validation): median {num(training["sec_per_epoch"], 1)} s; the first epoch,
  which also pays for start-up, took {num(training["first_epoch_s"], 1)} s.
"""


def _learning_curves(s: dict[str, Any]) -> str:
    t = s["training"]
    lines = [
        "## Learning curves",
        "",
        "![Loss per epoch](loss_curves.png)",
        "",
        "![Accuracy per epoch](accuracies.png)",
        "",
        "What they show: the mean cross-entropy and the accuracy per epoch on the training batches and on the "
        "validation split. Training values are measured on augmented batches (random crops and flips, dropout on) "
        "and averaged over the epoch while the weights change, so early on they can sit *below* validation.",
        "",
    ]
    for label, gap in (("At the best epoch", t["gap_best"]), ("At the end", t["gap_end"])):
        if gap is None:
            continue
        lines.append(
            f"- {label} (epoch {gap['epoch']}): train acc {pct(gap['train_acc'])}, val acc {pct(gap['val_acc'])}: "
            f"train-vs-val gap **{_signed_pp(gap['acc_gap_pp'])}**; loss train {num(gap['train_loss'])}, "
            f"val {num(gap['val_loss'])} (val - train = {_signed(gap['loss_gap'])})."
        )
    lines.append(f"- {_loss_trend(t)}")
    return "\n".join(lines)


def _loss_trend(t: dict[str, Any]) -> str:
    low, last, low_epoch = t["val_loss_min"], t["val_loss_last"], t["val_loss_min_epoch"]
    if low is None or last is None:
        return "Validation loss was not logged."
    if low_epoch == t["last_epoch"]:
        return (
            f"Validation loss was still falling at the last epoch ({num(last)}, its lowest): "
            f"training had not converged, and more epochs may still help."
        )
    rise = (last - low) / low if low > 0 else 0.0
    if rise > OVERFIT_RISE:
        return (
            f"Validation loss bottomed out at {num(low)} in epoch {low_epoch} and ended at {num(last)} "
            f"({rise:+.0%}): the model overfits after epoch {low_epoch}; the checkpoint with the best val acc "
            f"(epoch {t['best_epoch']}) is what this report evaluates."
        )
    return (
        f"Validation loss flattened: lowest {num(low)} in epoch {low_epoch}, {num(last)} at the end "
        f"({rise:+.0%}, within {OVERFIT_RISE:.0%})."
    )


def _per_class(s: dict[str, Any]) -> str:
    test = s["test"]
    accs = test["per_class_acc"]
    ordered = sorted(accs, key=accs.get)
    lines = [
        "## Per-class test accuracy",
        "",
        "| class | accuracy | correct / images |",
        "| --- | ---: | ---: |",
    ]
    for cls in s["classes"]:
        lines.append(
            f"| {cls} | {pct(accs[cls])} | {test['per_class_correct'][cls]} / {test['per_class_images'][cls]} |"
        )
    spread = 100 * (accs[ordered[-1]] - accs[ordered[0]])
    lines += [
        "",
        f"The three weakest classes are {', '.join(f'{c} ({pct(accs[c])})' for c in ordered[:3])}; "
        f"best and worst class differ by {spread:.2f} percentage points.",
    ]
    return "\n".join(lines)


def _confusions(s: dict[str, Any]) -> str:
    test = s["test"]
    lines = [
        "## Confusion matrix",
        "",
        "![Test-set confusion matrix](confusion_matrix.png)",
        "",
        "What it shows: row = true class, column = predicted class; each cell gives the count and the fraction "
        "of the true class (colour). The diagonal is the per-class accuracy; bright off-diagonal cells are "
        "systematic confusions.",
        "",
    ]
    if not test["top_confused"]:
        return "\n".join([*lines, "No off-diagonal cell is non-zero: every test image is classified correctly."])
    lines += [
        f"Most confused (true -> predicted) pairs, at most {s['seed_claims']['k']}, by rate: the fraction of the "
        f"true class's test images predicted as the other class.",
        "",
        "| rank | true | predicted as | rate | images |",
        "| ---: | --- | --- | ---: | ---: |",
    ]
    for rank, pair in enumerate(test["top_confused"], start=1):
        lines.append(f"| {rank} | {pair['true']} | {pair['predicted']} | {pct(pair['rate'])} | {pair['count']} |")
    lines += ["", f"Together they account for {pct(test['top_confused_share_of_errors'])} of all test errors."]
    return "\n".join(lines)


def _seed_claims(s: dict[str, Any]) -> str:
    claims = s["seed_claims"]
    head = "## The seed's claims: cat <-> dog, deer <-> horse, automobile <-> truck"
    if not claims["applies"]:
        return (
            f"{head}\n\nThe seed says these CIFAR-10 pairs are the most confused. This run's classes "
            f"({', '.join(s['classes'][:3])}, ...) are not CIFAR-10's, so the claims do not apply."
        )
    k, total = claims["k"], claims["directed_pairs"]
    lines = [
        head,
        "",
        f"A claim agrees when either direction of the pair is among this run's top {k} of {total} directed "
        f"pairs (rank 1 = most confused; '-' = never confused).",
        "",
        "| pair | rate a -> b | rate b -> a | ranks | in top " + str(k) + "? |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for p in claims["pairs"]:
        ranks = f"{p['rank_ab'] or '-'}, {p['rank_ba'] or '-'}"
        lines.append(
            f"| {p['a']} <-> {p['b']} | {pct(p['rate_ab'])} | {pct(p['rate_ba'])} | {ranks} | "
            f"{'yes' if p['in_top_k'] else 'no'} |"
        )
    agree = [f"{p['a']} <-> {p['b']}" for p in claims["pairs"] if p["in_top_k"]]
    verdict = f"This run agrees with {len(agree)} of {len(claims['pairs'])} claims"
    lines += ["", verdict + (f" ({', '.join(agree)})." if agree else ".")]
    return "\n".join(lines)


def _mistakes(s: dict[str, Any]) -> str:
    m, test = s["mistakes"], s["test"]
    if m["count"] == 0:
        return (
            "## Misclassified examples\n\n![Most confident mistakes](misclassified_examples.png)\n\n"
            f"None: all {test['images']:,} test images are classified correctly."
        )
    share = m["confident"] / m["count"] if m["count"] else 0.0
    return f"""
## Misclassified examples

![Most confident mistakes](misclassified_examples.png)

What it shows: the {m["shown"]} test images the model got wrong with the highest softmax confidence, each
titled with its true class and the predicted class and confidence. Confident mistakes show where the model
learned a shortcut or where the label itself is doubtful.

{m["count"]:,} of {test["images"]:,} test images are misclassified ({pct(m["count"] / test["images"])}); of these,
{m["confident"]:,} ({pct(share)}) were predicted with confidence >= {m["confidence_threshold"]}.
"""


def _filters(s: dict[str, Any]) -> str:
    c = s["conv1"]
    return f"""
## First-layer filters

![conv1 filters](conv1_filters.png)

What it shows: the {c["filters"]} filters of `{c["layer"]}` ({c["kernel"][0]}x{c["kernel"][1]} pixels over
{c["in_channels"]} colour channels), each scaled to its own min..max so its colour and edge pattern is visible;
the scaling hides how strong a filter is. Filter L2 norms: min {num(c["norm_min"])}, median
{num(c["norm_median"])}, max {num(c["norm_max"])}; {c["weak"]} of {c["filters"]} filters have a norm below 10% of
the largest (nearly unused).
"""


def _feature_maps(s: dict[str, Any]) -> str:
    lines = [
        "## Feature maps",
        "",
        "What they show: for one validation image per class (rows, labelled with the true class and, if "
        "wrong, the prediction), the input and the first channels of each conv block's output (after ReLU), "
        "upsampled to the image size; each row is scaled to its own largest activation. Early layers respond "
        "to colours and edges where they are; deeper layers are coarser and more selective.",
        "",
        "| layer | channels | size | zero activations | channels zero on every probe image |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for layer in s["feature_maps"]:
        size = "x".join(map(str, layer["size"]))
        lines.append(
            f"| {layer['layer']} | {layer['channels']} | {size} | {pct(layer['zero_fraction'])} | "
            f"{layer['dead_channels']} |"
        )
    lines.append("")
    for layer in s["feature_maps"]:
        lines += [f"![Feature maps of {layer['layer']}]({layer['figure']})", ""]
    return "\n".join(lines)


def _saliency(s: dict[str, Any]) -> str:
    a = s["saliency"]
    box = "x".join(map(str, a["center_box"]))
    return f"""
## Saliency

![Saliency maps](saliency.png)

What it shows: for the same probe images, the magnitude of the gradient of the true class's logit with
respect to each input pixel (max over colour channels; Simonyan et al. 2014), scaled per image: bright pixels
are those that would change the class score most. {a["correct"]} of {a["images"]} probe images are classified
correctly.

On average {pct(a["center_share_mean"])} of an image's saliency falls in its central {box} pixels, which cover
{pct(a["center_area_share"])} of the area (per image: {pct(a["center_share_min"])} to {pct(a["center_share_max"])});
a share well above the area means the model looks where CIFAR objects usually are, not at the borders.
"""


def _signed_pp(value: float | None) -> str:
    # round first, so that -0.001 reads +0.00 rather than -0.00
    return "n/a" if value is None else f"{round(value, 2) + 0.0:+.2f} percentage points"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"
