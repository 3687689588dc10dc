"""The README's results section quotes the committed study (outputs/shallow_vs_deep): every number in its table
and in its sentences must be the one the committed reports hold, so a rerun of the study that changes a number
fails here until the README says the new one (issue 18, item 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "outputs" / "shallow_vs_deep"
MODELS = ("small", "medium", "deep")


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Results on CIFAR-10")
    return text[start : text.index("\n## ", start + 1)]


def _metrics(model: str) -> dict:
    (run,) = [p for p in STUDY.glob(f"*_model={model}*") if p.is_dir()]
    return json.loads((run / "report" / "metrics.json").read_text())


def _row(section: str, model: str) -> list[str]:
    (line,) = [line for line in section.splitlines() if line.startswith(f"| `{model}`")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def _pct(value: float, decimals: int = 2) -> str:
    return f"{100 * value:.{decimals}f}%"


def _probe(metrics: dict) -> list[float]:
    return [layer["probe_val_acc"] for layer in metrics["features"]["layers"]]


def _zeros(metrics: dict) -> list[float]:
    return [layer["sparsity"] for layer in metrics["features"]["layers"]]


def _rate(metrics: dict, true: str, predicted: str) -> float:
    (rate,) = [
        c["rate"] for c in metrics["confusions"]["top_confused"] if (c["true"], c["predicted"]) == (true, predicted)
    ]
    return rate


@pytest.mark.parametrize("model", MODELS)
def test_the_results_table_quotes_the_committed_reports(model: str) -> None:
    metrics = _metrics(model)
    training, net = metrics["training"], metrics["run"]["net"]
    probe = _probe(metrics)
    row = _row(_section(), model)
    assert row[1] == f"{net['parameters']:,}"
    assert row[2] == f"{_pct(training['best_val_acc'])} ({training['best_epoch']})"
    assert row[3] == _pct(metrics["test"]["acc"])
    assert row[4] == _pct(_rate(metrics, "cat", "dog"), 1)
    assert row[5] == _pct(_rate(metrics, "dog", "cat"), 1)
    assert row[6] == f"{_pct(probe[0], 1)} -> {_pct(probe[-1], 1)}"


def test_the_sentences_under_the_table_follow_the_committed_numbers() -> None:
    section = _section()
    metrics = {model: _metrics(model) for model in MODELS}
    tests = {model: m["test"]["acc"] for model, m in metrics.items()}
    most_accurate = max(tests, key=tests.get)
    assert f"The {most_accurate} model is the most accurate" in section
    for m in metrics.values():  # "cat <-> dog is the most confused pair in all three"
        top = m["confusions"]["top_confused"][0]
        assert {top["true"], top["predicted"]} == {"cat", "dog"}
    rising = [all(b > a for a, b in zip(p, p[1:], strict=False)) for p in map(_probe, metrics.values())]
    if all(rising):
        assert "Linear probe accuracy rises block by block in every model" in section
    quoted = ", ".join(f"{_pct(z[0], 0)} -> {_pct(z[-1], 0)}" for z in map(_zeros, metrics.values()))
    assert f"({quoted})" in section


IMAGENETTE = ROOT / "outputs" / "imagenette"


@pytest.mark.parametrize("model, run", [("resnet18", "resnet18"), ("efficientnet_lite0", "lite0")])
def test_the_imagenette_table_quotes_the_committed_reports(model: str, run: str) -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Results on Imagenette")
    section = text[start : text.index("\n## ", start + 1)]
    metrics = json.loads((IMAGENETTE / run / "report" / "metrics.json").read_text())
    training = metrics["training"]
    row = _row(section, model)
    assert row[2] == f"{_pct(training['best_val_acc'])} ({training['best_epoch']})"
    assert row[3] == _pct(metrics["test"]["acc"])
    assert f"{metrics['test']['images']:,} test images" in section
