"""Accuracy of the best checkpoint on the test set, overall and per class, checked against train.py's log."""

from __future__ import annotations

from typing import Any

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret import per_class_accuracy
from cnn_explorer.report.markdown import pct, table
from cnn_explorer.report.section import SectionResult

KEY = "test"


def compute(ev: Evaluation) -> SectionResult:
    cm, classes = ev.test.confusion, ev.classes
    correct, total = int(cm.diagonal().sum()), int(cm.sum())
    acc = correct / total
    logged_acc = ev.run.metrics.test.get("test/acc")
    return SectionResult(
        {
            "images": total,
            "correct": correct,
            "acc": acc,
            "logged_acc": logged_acc,
            "difference_pp": 100 * (acc - logged_acc) if logged_acc is not None else None,
            "per_class_acc": dict(zip(classes, per_class_accuracy(cm).tolist(), strict=True)),
            "per_class_images": dict(zip(classes, cm.sum(dim=1).tolist(), strict=True)),
            "per_class_correct": dict(zip(classes, cm.diagonal().tolist(), strict=True)),
            "confusion_matrix": cm.tolist(),
        }
    )


def markdown(summary: dict[str, Any]) -> str:
    test = summary[KEY]
    accs = test["per_class_acc"]
    ordered = sorted(accs, key=accs.get)
    rows = [(c, pct(accs[c]), f"{test['per_class_correct'][c]} / {test['per_class_images'][c]}") for c in accs]
    spread = 100 * (accs[ordered[-1]] - accs[ordered[0]])
    return "\n".join(
        [
            "## Per-class test accuracy",
            "",
            *table(["class", "accuracy", "correct / images"], rows),
            "",
            f"The three weakest classes are {', '.join(f'{c} ({pct(accs[c])})' for c in ordered[:3])}; "
            f"best and worst class differ by {spread:.2f} percentage points.",
        ]
    )
