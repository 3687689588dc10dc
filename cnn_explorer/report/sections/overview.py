"""The report's head: which run, model, data and checkpoint, and the outcome in five lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnn_explorer.evaluate import Evaluation, test_time_views
from cnn_explorer.models import count_parameters
from cnn_explorer.report.markdown import num, pct, signed_pp
from cnn_explorer.report.section import SectionResult
from cnn_explorer.run_status import describe

KEY = "run"


def compute(ev: Evaluation) -> SectionResult:
    run = ev.run
    architecture = run.config.model.net.get("architecture", [])
    ended, how = describe(run.status, run.dir)
    name = run.dir.resolve().name  # "." or "../run20" given on the command line still names the folder
    # How it ended is stated once, in its bullet; the warning and the test/acc sentence point to it.
    unfinished = "the run did not finish (how it ended: below); the report covers what was logged so far."
    warnings = [] if ended else [unfinished]
    warnings += [
        f"{_in_run(path, run.dir)}: its last line was cut off mid-line (the process was killed while writing it) "
        f"and was left out."
        for path in run.metrics.cut_lines
    ]
    return SectionResult(
        {
            "name": name,
            # The folder's name, not a path: one relative to the shell analyze.py ran in means nothing in a report,
            # and an absolute one would name the analyst's machine.
            "dir": name,
            "choices": run.choices,
            "overrides": run.overrides,
            "net": {
                "class": type(ev.net).__name__,
                "architecture": [a if isinstance(a, str) else int(a) for a in architecture],
                "parameters": count_parameters(ev.net),
            },
            "checkpoint": {"file": str(run.checkpoint.path.relative_to(run.dir)), "epoch": run.checkpoint.epoch},
            "classes": ev.classes,
            "status": run.status["status"] if run.status else None,
            "ended": ended,
            "how_it_ended": how,
            "tested": bool(run.config.get("test", True)),
            "eval_crop": ev.datamodule.eval_crop,
            "test_views": test_time_views(run.config),
            "warnings": warnings,
        }
    )


def markdown(summary: dict[str, Any]) -> str:
    run, test, training = summary[KEY], summary["test"], summary["training"]
    net, choices = run["net"], run["choices"]
    model = f"`{choices['model']}` " if "model" in choices else ""
    data = f"`{choices['data']}`" if "data" in choices else "the run's data"
    overrides = " ".join(run["overrides"]) or "none"
    if test["logged_acc"] is None:
        # The reason is stated only where it was checked: the config's test flag, or the recorded end of the run.
        if not run["tested"]:
            logged = "train.py logged no test/acc: the run was trained with test=false."
        elif not run["ended"]:
            logged = "train.py logged no test/acc: the run did not finish (how it ended: above)."
        else:
            logged = "train.py logged no test/acc for this checkpoint."
    else:
        logged = (
            f"train.py logged test/acc {pct(test['logged_acc'])} for this checkpoint "
            f"(difference {signed_pp(test['difference_pp'])})."
        )
    per_class = sorted(test["per_class_acc"].items(), key=lambda item: item[1])
    if per_class[0][1] == per_class[-1][1]:
        extremes = f"Every class has the same test accuracy, {pct(per_class[0][1])}."
    else:
        (weakest, low), (strongest, high) = per_class[0], per_class[-1]
        extremes = f"Weakest class: {weakest} ({pct(low)}); strongest: {strongest} ({pct(high)})."
    top = summary["confusions"]["top_confused"]
    confused = (
        f"Most confused: {top[0]['true']} -> {top[0]['predicted']}, {pct(top[0]['rate'])} of the {top[0]['true']} "
        f"test images ({top[0]['count']})."
        if top
        else "No test image was confused with another class."
    )
    warnings = "".join(f"\n> **Warning:** {w}\n" for w in dict.fromkeys(run["warnings"]))  # each once
    # Only the seed's ConvNet is built from an architecture list; other nets have none to show.
    architecture = f"architecture `{net['architecture']}`, " if net["architecture"] else ""
    return f"""# Report: {run["name"]}
{warnings}
- Run dir: `{run["dir"]}`
- How it ended: {run["how_it_ended"]}
- Model: {model}({net["class"]}, {architecture}{net["parameters"]:,} parameters)
- Data: {data}, {test["images"]:,} test images, classes: {", ".join(run["classes"])}
- Overrides: `{overrides}`
- Evaluated: `{run["checkpoint"]["file"]}` (epoch {run["checkpoint"]["epoch"]}), the best-val/acc checkpoint: the
  `epochNNN-val_accX.XXXX.ckpt` file with the highest val_acc in its name.

## Summary

- Test accuracy of the best checkpoint: **{pct(test["acc"])}** ({test["correct"]:,} of {test["images"]:,}),
  computed here{_how_tested(run)}. {logged}
- Best validation accuracy: {pct(training["best_val_acc"])} at epoch {training["best_epoch"]}
  ({training["epochs"]} epochs logged, the last is epoch {training["last_epoch"]}).
- {extremes}
- {confused}
- Seconds per epoch (training plus validation): median {num(training["sec_per_epoch"], 1)} s; the first epoch,
  which also pays for start-up, took {num(training["first_epoch_s"], 1)} s.
"""


TEST_VIEWS = {
    "flip": "the logits of each image and its mirror averaged (model.tta=flip)",
    "flip_translate": "the logits of six flipped and shifted views of each image averaged (model.tta=flip_translate)",
}


def _how_tested(run: dict[str, Any]) -> str:
    """How the net saw the test images where not whole and once, to follow "computed here"; else ``""``."""
    crop = run.get("eval_crop", 1.0)  # absent from reports written before it was recorded
    how = [f" on the centred {crop:.1%} of each image's side"] if crop < 1 else []
    how += [f", {TEST_VIEWS[run['test_views']]}"] if run.get("test_views") in TEST_VIEWS else []
    return "".join(how)


def _in_run(path: Path, run_dir: Path) -> str:
    """``path`` relative to the run dir where it lies inside it (a report names the run's files that way)."""
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path.name
