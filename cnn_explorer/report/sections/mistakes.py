"""The test images the model gets wrong with the highest confidence."""

from __future__ import annotations

from typing import Any

from cnn_explorer.evaluate import Evaluation
from cnn_explorer.interpret.mistakes import MISTAKES_SHOWN, confident_mistakes
from cnn_explorer.render.figures import mistakes_figure
from cnn_explorer.render.fonts import figure_names
from cnn_explorer.report.markdown import figure, pct
from cnn_explorer.report.section import SectionResult

KEY = "mistakes"
FIGURE = "misclassified_examples.png"
SURE_AND_WRONG = 0.9  # softmax confidence above which a mistake counts as confident


def compute(ev: Evaluation) -> SectionResult:
    test = ev.test
    wrong = confident_mistakes(test.logits, test.labels, k=len(test.labels))  # every mistake, most confident first
    shown = int(ev.view_settings("misclassified").get("k", MISTAKES_SHOWN))  # the run's setting, as in TensorBoard
    top = wrong.indices[:shown]
    names = figure_names(ev.classes)
    fig = mistakes_figure(
        test.images[top], test.labels[top], wrong.predictions[:shown], wrong.confidences[:shown], names
    )
    numbers = {
        "count": len(wrong.indices),
        "shown": len(top),
        "confident": int((wrong.confidences >= SURE_AND_WRONG).sum()),
        "confidence_threshold": SURE_AND_WRONG,
    }
    return SectionResult(numbers, {FIGURE: fig})


def markdown(summary: dict[str, Any]) -> str:
    m, images = summary[KEY], summary["test"]["images"]
    head = f"## Misclassified examples\n\n{figure(FIGURE, 'Most confident mistakes')}\n\n"
    if m["count"] == 0:
        return head + f"None: all {images:,} test images are classified correctly."
    return head + (
        f"What it shows: the {m['shown']} test images the model got wrong with the highest softmax confidence, each "
        f"titled with its true class and the predicted class and confidence. Confident mistakes show where the "
        f"model learned a shortcut or where the label itself is doubtful.\n\n"
        f"{m['count']:,} of {images:,} test images are misclassified ({pct(m['count'] / images)}); of these, "
        f"{m['confident']:,} ({pct(m['confident'] / m['count'])}) were predicted with confidence >= "
        f"{m['confidence_threshold']}."
    )
