"""What the reports say, read as a reader meets it (issue 18, item 13): each problem stated once, names that mean
something outside the analyst's shell, no repeated sentences, captions that match the pictures, cells that do not
wrap."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.colors import to_rgb
from omegaconf import OmegaConf
from torch import nn

from cnn_explorer.interpret.attribution.faithfulness import PerturbationCurves
from cnn_explorer.render.figures import confusion_matrix_figure
from cnn_explorer.report.comparison import NO_RUN_MORE_FAITHFUL, _faithfulness_section, render_comparison
from cnn_explorer.report.markdown import NBSP, interval
from cnn_explorer.report.sections import attributions, confusions, learning_curves, overview

CLASSES = ["cat", "dog"]


def fake_evaluation(run_dir: Path, status: dict | None, eval_crop: float = 1.0, tta: str = "none") -> SimpleNamespace:
    """What overview.compute reads of an Evaluation, for a run dir that need not exist."""
    config = OmegaConf.create({"model": {"net": {"architecture": [8, "M"]}, "tta": tta}, "test": True})
    run = SimpleNamespace(
        dir=run_dir,
        config=config,
        status=status,
        metrics=SimpleNamespace(cut_lines=[]),
        choices={"model": "small"},
        overrides=["model=small"],
        checkpoint=SimpleNamespace(path=run_dir / "checkpoints" / "epoch003-val_acc0.5000.ckpt", epoch=3),
    )
    datamodule = SimpleNamespace(eval_crop=eval_crop)
    return SimpleNamespace(run=run, net=nn.Linear(2, 2), classes=CLASSES, datamodule=datamodule)


def summary_of(run: dict) -> dict:
    """The summary overview.markdown reads, around the numbers of overview.compute."""
    return {
        "run": run,
        "test": {
            "logged_acc": None,
            "difference_pp": None,
            "per_class_acc": {"cat": 0.5, "dog": 0.75},
            "acc": 0.625,
            "correct": 5,
            "images": 8,
        },
        "training": {
            "best_val_acc": 0.5,
            "best_epoch": 3,
            "epochs": 4,
            "last_epoch": 3,
            "sec_per_epoch": 1.0,
            "first_epoch_s": 2.0,
        },
        "confusions": {"top_confused": []},
    }


def test_the_runs_warning_and_how_it_ended_appear_once(tmp_path) -> None:
    status = {"status": "killed", "time": "2026-12-06T10:00:00", "message": "SIGKILL from the OOM killer"}
    numbers = overview.compute(fake_evaluation(tmp_path / "run20", status)).numbers
    numbers["warnings"] *= 3  # however many times a warning is recorded, the report says it once
    text = overview.markdown(summary_of(numbers))
    assert text.count("killed (2026-12-06T10:00:00): SIGKILL from the OOM killer") == 1
    assert text.count("> **Warning:**") == 1 and text.count("did not finish") == 2  # the warning, the test/acc line
    assert "- How it ended: killed (2026-12-06T10:00:00): SIGKILL from the OOM killer" in text
    assert "train.py logged no test/acc: the run did not finish (how it ended: above)." in text


def test_run_dir_is_the_folder_name_not_a_path_relative_to_the_shell(tmp_path, monkeypatch) -> None:
    (tmp_path / "run20").mkdir()
    (tmp_path / "shell").mkdir()
    monkeypatch.chdir(tmp_path / "shell")
    numbers = overview.compute(fake_evaluation(Path("../run20"), {"status": "completed", "time": "t"})).numbers
    text = overview.markdown(summary_of(numbers))
    assert "- Run dir: `run20`" in text and ".." not in text
    assert "Warning" not in text


def test_the_summary_says_how_the_test_images_were_shown_where_not_whole_and_once(tmp_path) -> None:
    status = {"status": "completed", "time": "t"}
    plain = overview.markdown(summary_of(overview.compute(fake_evaluation(tmp_path / "run", status)).numbers))
    assert "(5 of 8),\n  computed here. train.py logged no test/acc" in plain
    cropped = fake_evaluation(tmp_path / "run", status, eval_crop=0.875, tta="flip")
    text = overview.markdown(summary_of(overview.compute(cropped).numbers))
    assert (
        "computed here on the centred 87.5% of each image's side, the logits of each image and its mirror averaged "
        "(model.tta=flip). train.py" in text
    )
    flipped = overview.compute(fake_evaluation(tmp_path / "run", status, tta="flip")).numbers
    assert "computed here, the logits of each image and its mirror averaged" in overview.markdown(summary_of(flipped))
    del flipped["eval_crop"], flipped["test_views"]  # a report written before they were recorded
    assert "computed here. train.py" in overview.markdown(summary_of(flipped))


def test_a_net_without_an_architecture_list_is_not_shown_with_an_empty_one(tmp_path) -> None:
    evaluation = fake_evaluation(tmp_path / "run20", {"status": "completed", "time": "t"})
    evaluation.run.config.model.net = {"_target_": "cnn_explorer.airbench.AirbenchNet"}
    text = overview.markdown(summary_of(overview.compute(evaluation).numbers))
    assert "- Model: `small` (Linear, 6 parameters)" in text and "architecture" not in text
    with_list = overview.markdown(summary_of(overview.compute(fake_evaluation(tmp_path / "run20", None)).numbers))
    assert "(Linear, architecture `[8, 'M']`, 6 parameters)" in with_list


def test_the_smoothed_loss_floor_by_hand_and_by_pytorch() -> None:
    # label_smoothing 0.2 over 10 classes: target 0.82 on the label, 0.02 on each other class; its entropy
    # -(0.82 ln 0.82 + 9 * 0.02 ln 0.02) = 0.16273 + 0.70416.
    assert learning_curves.smoothed_loss_floor(0.2, 10) == pytest.approx(0.86689, abs=1e-5)
    assert learning_curves.smoothed_loss_floor(0.0, 10) == 0.0
    # Logits equal to the log of the smoothed target reach it, and any other logits stay above it.
    target = torch.full((1, 10), 0.02)
    target[0, 3] = 0.82
    at_floor = torch.nn.functional.cross_entropy(target.log(), torch.tensor([3]), label_smoothing=0.2)
    assert at_floor.item() == pytest.approx(0.86689, abs=1e-5)
    other = torch.nn.functional.cross_entropy(torch.randn(64, 10), torch.randint(0, 10, (64,)), label_smoothing=0.2)
    assert other.item() > 0.86689


def test_a_label_smoothed_training_loss_is_not_compared_with_the_validation_loss() -> None:
    plain = learning_curves.markdown(curves_summary(19, 19))
    assert "(val - train = +0.200)" in plain and "label-smoothed" not in plain
    summary = curves_summary(19, 19)
    summary[learning_curves.KEY] |= {"label_smoothing": 0.2, "smoothed_loss_floor": 0.86689, "dropout": False}
    smoothed = learning_curves.markdown(summary)
    assert "val - train" not in smoothed and "loss train 0.500, val 0.700 (smoothed)" in smoothed
    assert "label-smoothed cross-entropy (label_smoothing 0.2" in smoothed and "below 0.867" in smoothed
    assert "dropout" not in smoothed
    summary[learning_curves.KEY]["dropout"] = True
    assert "augmented batches, dropout on, and averaged" in learning_curves.markdown(summary)


def gap(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "train_acc": 0.8,
        "val_acc": 0.7,
        "acc_gap_pp": 10.0,
        "train_loss": 0.5,
        "val_loss": 0.7,
        "loss_gap": 0.2,
    }


def curves_summary(best: int, end: int) -> dict:
    numbers = {
        "gap_best": gap(best),
        "gap_end": gap(end),
        "val_loss_min": 0.7,
        "val_loss_last": 0.7,
        "val_loss_min_epoch": end,
        "last_epoch": end,
        "best_epoch": best,
        "overfit_rise": 0.05,
    }
    return {learning_curves.KEY: numbers}


def test_best_epoch_and_end_bullets_are_one_when_they_are_the_same_epoch() -> None:
    same = learning_curves.markdown(curves_summary(19, 19))
    assert "- At the best epoch, which is also the last (epoch 19): " in same
    assert "At the end" not in same and same.count("train acc 80.00%") == 1
    apart = learning_curves.markdown(curves_summary(12, 19))
    assert "- At the best epoch (epoch 12): " in apart and "- At the end (epoch 19): " in apart


def comparison_summary(per_image: dict[str, list[float]]) -> dict:
    methods = {
        name: {"title": name.title(), "deletion": {"mean": sum(v) / len(v), "ci95": [0.3, 0.7], "per_image": v}}
        | {"insertion": {"mean": 0.5}, "passes": True}
        for name, v in per_image.items()
    }
    chance = {"deletion": {"mean": 0.6}, "insertion": {"mean": 0.5}}
    return {"attributions": {"methods": methods, "random_order": chance}}


def test_the_comparison_says_no_run_is_clearly_more_faithful_once() -> None:
    runs = [{"number": 1, "label": "a"}, {"number": 2, "label": "b"}]
    noisy = {"gradient": [0.4, 0.6, 0.5, 0.5], "saliency": [0.6, 0.4, 0.5, 0.5], "grad_cam": [0.6, 0.4, 0.5, 0.5]}
    # Run 2 differs from run 1 by +0.1 and -0.1 on alternate images for every method: each interval includes 0;
    # for grad_cam it is 0.03 lower on every image: run 2 is more faithful there.
    other = {"gradient": [0.5, 0.5, 0.4, 0.6], "saliency": [0.5, 0.5, 0.6, 0.4], "grad_cam": [0.57, 0.37, 0.47, 0.47]}
    lines = _faithfulness_section(runs, [comparison_summary(noisy), comparison_summary(other)])
    text = "\n".join(lines)
    assert text.count(NO_RUN_MORE_FAITHFUL) == 1
    assert f"- Gradient, Saliency: {NO_RUN_MORE_FAITHFUL}." in text
    assert "  - Gradient: deletion AUC #" in text and "  - Saliency: deletion AUC #" in text  # the numbers stay
    assert "- Grad_Cam: most faithful in #2 (b)" in text


def comparison_data(report_exists: list[bool]) -> dict:
    runs = [
        {
            "number": i + 1,
            "label": f"run{i + 1}",
            "run_dir": f"../{i}_model=small",
            "report_exists": exists,
            "run_name": f"{i}_model=small",
            "model": "small",
            "parameters": 1000,
            "best_val_acc": 0.5,
            "test_acc": 0.5,
            "sec_per_epoch": 1.0,
            "differing_overrides": [],
        }
        for i, exists in enumerate(report_exists)
    ]
    return {"runs": runs, "broken": [], "cka": None, "confusion_changes": []}


def test_the_comparison_marks_a_run_whose_report_is_absent_instead_of_linking_it() -> None:
    text = render_comparison(comparison_data([True, False]), [{}, {}], same_classes=False)
    assert "| 1 | [0_model=small](<../0_model=small/report/report.md>) |" in text
    assert "| 2 | 1_model=small (no report) |" in text and "1_model=small/report" not in text
    assert "A run marked (no report) had no report.md" in text
    assert "(no report)" not in render_comparison(comparison_data([True, True]), [{}, {}], same_classes=False)


def luminance(rgb: tuple[float, ...]) -> float:
    r, g, b = rgb[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_the_confusion_caption_says_what_the_colour_map_shows() -> None:
    fig = confusion_matrix_figure(torch.tensor([[9, 1], [0, 10]]), CLASSES, "test")
    cmap = fig.axes[0].images[0].cmap  # the map the figure draws with
    assert luminance(cmap(1.0)) < luminance(cmap(0.0)) < luminance(to_rgb("white")) + 1e-9  # high rates are dark
    summary = {
        confusions.KEY: {"top_confused": [], "claims": {"applies": False}},
        "run": {"classes": CLASSES},
    }
    caption = confusions.markdown(summary)
    assert "dark off-diagonal cells are systematic confusions" in caption and "bright" not in caption
    assert "white 0% to dark blue 100%" in caption


def test_first_of_each_class_only_when_it_is_one_per_class() -> None:
    assert attributions.chosen_text(10, 1, 10) == "the first of each class"
    assert attributions.chosen_text(200, 20, 10) == "the first 20 of each class"
    assert (
        attributions.chosen_text(195, 20, 10) == "the first 20 of each class, fewer where a class has fewer test images"
    )


def test_intervals_in_tables_do_not_wrap() -> None:
    cell = interval(0.459, 0.419, 0.497)
    assert cell == f"0.459{NBSP}[0.419,{NBSP}0.497]"
    # No place a browser breaks a line: no ordinary space, and no dash between numbers (signs are part of a number).
    signed = attributions._interval({"mean": -0.068, "ci95": [-0.09, -0.047]})
    for text in (
        cell,
        signed,
        attributions._randomization_cell({"mean": 0.8, "ci95": [0.75, 0.85], "verdict": "fail"}),
    ):
        number_part = text.split(" ")[0]  # the randomization cell's verdict follows after a space
        assert re.fullmatch(rf"-?\d\.\d+{NBSP}\[-?\d\.\d+,{NBSP}-?\d\.\d+\]", number_part), text


def test_a_method_failing_data_randomization_is_not_trusted() -> None:
    # Two methods that beat the random order by 0.05 on every image and pass the model randomization check; the
    # data randomization test fails the second: only the first is named trusted.
    deletion, insertion = [0.35, 0.55, 0.75], [0.40, 0.60, 0.80]
    chance = PerturbationCurves(
        torch.tensor([0.0, 1.0]),
        torch.tensor([deletion, deletion]).T,
        torch.tensor([insertion, insertion]).T,
    )
    better = PerturbationCurves(chance.fractions, chance.deletion - 0.05, chance.insertion + 0.05)
    method = {
        "negative_control": False,
        "randomization_classifier": {"mean": 0.1, "ci95": [0.0, 0.2], "verdict": "pass"},
        "randomization_mean": 0.1,
        "passes": True,
        "completeness": None,
        **attributions._auc_numbers(better, chance),
    }
    a = {
        "methods": {"kept": method | {"title": "Kept"}, "memorized": method | {"title": "Memorized"}},
        "random_order": attributions._auc_numbers(chance),
        "threshold": 0.5,
        "data_randomization": {"methods": {"kept": {"verdict": "pass"}, "memorized": {"verdict": "fail"}}},
    }
    text = "\n".join(attributions._verdicts(a))
    assert "Passing both randomization checks (model and data, below) and beating the random order on both " in text
    assert "(paired intervals): Kept." in text
    del a["data_randomization"]
    assert (
        "Passing the randomization check and beating the random order on both curves (paired intervals): Kept, "
        "Memorized." in "\n".join(attributions._verdicts(a))
    )
