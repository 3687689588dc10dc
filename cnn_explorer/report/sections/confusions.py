"""Which classes the model confuses: the test confusion matrix, the most confused pairs, and the original
notebook's claims about CIFAR-10 checked against them."""

from __future__ import annotations

from typing import Any

import torch

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret import most_confused_pairs, row_normalize
from cnn_explorer.render.figures import confusion_matrix_figure
from cnn_explorer.render.fonts import figure_names, undrawable_note
from cnn_explorer.report.markdown import figure, pct, table
from cnn_explorer.report.section import SectionResult

KEY = "confusions"
FIGURE = "confusion_matrix.png"
TOP_PAIRS = 10  # most confused (true -> predicted) pairs listed, and the "top k" the claims are checked against
# The original notebook's claim: these CIFAR-10 pairs are the ones a CNN confuses most.
CLAIMED_CONFUSIONS = (("cat", "dog"), ("deer", "horse"), ("automobile", "truck"))


def compute(ev: Evaluation) -> SectionResult:
    cm, classes = ev.test.confusion, ev.classes
    counts = cm.tolist()
    errors = int(cm.sum() - cm.diagonal().sum())
    pairs = most_confused_pairs(cm, TOP_PAIRS)
    numbers = {
        "top_confused": [
            {"true": classes[t], "predicted": classes[p], "rate": rate, "count": counts[t][p]} for t, p, rate in pairs
        ],
        "top_confused_share_of_errors": sum(counts[t][p] for t, p, _ in pairs) / errors if errors else None,
        "claims": check_claims(counts, classes),
    }
    accuracy = 1 - errors / int(cm.sum())
    title = f"Test set, best checkpoint (epoch {ev.run.checkpoint.epoch}): {accuracy:.2%} accuracy"
    return SectionResult(numbers, {FIGURE: confusion_matrix_figure(cm, figure_names(classes), title)})


def check_claims(cm_counts: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """Check the claimed most-confused pairs against a test confusion matrix.

    A claim (a, b) agrees when a -> b or b -> a is among the :data:`TOP_PAIRS` highest directed rates.
    Ranks count all directed pairs by rate (1 = most confused); ``None`` when the pair never occurred.
    """
    if not all(name in classes for pair in CLAIMED_CONFUSIONS for name in pair):
        return {"applies": False, "k": TOP_PAIRS, "pairs": []}
    cm = torch.tensor(cm_counts)
    everything = most_confused_pairs(cm, k=len(classes) ** 2)
    rank = {(t, p): i + 1 for i, (t, p, _) in enumerate(everything)}
    rates = row_normalize(cm)
    pairs = []
    for a, b in CLAIMED_CONFUSIONS:
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


def markdown(summary: dict[str, Any]) -> str:
    numbers = summary[KEY]
    lines = [
        "## Confusion matrix",
        "",
        figure(FIGURE, "Test-set confusion matrix"),
        "",
        "What it shows: row = true class, column = predicted class; each cell gives the count and the fraction "
        "of the true class (colour: white 0% to dark blue 100%). The diagonal is the per-class accuracy; dark "
        "off-diagonal cells are systematic confusions.",
        "",
    ]
    if note := undrawable_note(summary["run"]["classes"]):
        lines += [note, ""]
    top = numbers["top_confused"]
    if not top:
        lines.append("No off-diagonal cell is non-zero: every test image is classified correctly.")
    else:
        rows = [(rank, p["true"], p["predicted"], pct(p["rate"]), p["count"]) for rank, p in enumerate(top, start=1)]
        lines += [
            f"Most confused (true -> predicted) pairs, at most {TOP_PAIRS}, by rate: the fraction of the true "
            f"class's test images predicted as the other class.",
            "",
            *table(["rank", "true", "predicted as", "rate", "images"], rows, "rllrr"),
            "",
            f"Together they account for {pct(numbers['top_confused_share_of_errors'])} of all test errors.",
        ]
    return "\n".join(lines) + "\n\n" + _claims_markdown(numbers["claims"], summary["run"]["classes"])


def _claims_markdown(claims: dict[str, Any], classes: list[str]) -> str:
    names = ", ".join(f"{a} <-> {b}" for a, b in CLAIMED_CONFUSIONS)
    head = f"## The original notebook's claims: {names}"
    if not claims["applies"]:
        return (
            f"{head}\n\nThe notebook says these CIFAR-10 pairs are the most confused. This run's classes "
            f"({', '.join(classes[:3])}, ...) are not CIFAR-10's, so the claims do not apply."
        )
    k = claims["k"]
    rows = [
        (
            f"{p['a']} <-> {p['b']}",
            pct(p["rate_ab"]),
            pct(p["rate_ba"]),
            f"{p['rank_ab'] or '-'}, {p['rank_ba'] or '-'}",
            "yes" if p["in_top_k"] else "no",
        )
        for p in claims["pairs"]
    ]
    agree = [f"{p['a']} <-> {p['b']}" for p in claims["pairs"] if p["in_top_k"]]
    verdict = f"This run agrees with {len(agree)} of {len(claims['pairs'])} claims"
    return "\n".join(
        [
            head,
            "",
            f"A claim agrees when either direction of the pair is among this run's top {k} of "
            f"{claims['directed_pairs']} directed pairs (rank 1 = most confused; '-' = never confused).",
            "",
            *table(["pair", "rate a -> b", "rate b -> a", "ranks", f"in top {k}?"], rows, "lrrrl"),
            "",
            verdict + (f" ({', '.join(agree)})." if agree else "."),
        ]
    )
