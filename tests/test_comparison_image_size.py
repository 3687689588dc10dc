"""Issue 22: a comparison of runs at different image sizes says, in sentences computed from each run's own numbers,
what changes from the smaller size to the larger in what the attribution methods show and how they score; every
sentence flips when its numbers do. The run report records the image size it needs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cnn_explorer.report import run_report
from cnn_explorer.report.comparison import _image_size_section, image_sizes, render_comparison
from cnn_explorer.report.section import SectionResult
from tests.test_report_text import comparison_data

BEATS_DELETION = (-0.20, -0.10)  # method - random per-image deletion AUC: below 0, a faithful map
BEATS_INSERTION = (0.05, 0.10)  # above 0 for insertion
INCLUDES_0 = (-0.05, 0.02)
WORSE_DELETION = (0.04, 0.11)  # deletion AUC above the random order's on the same images


def method(
    deletion: tuple[float, float] = BEATS_DELETION,
    insertion: tuple[float, float] = BEATS_INSERTION,
    verdict: tuple[str, float] = ("pass", 0.10),
    center: float = 0.30,
    seconds: float = 0.001,
) -> dict:
    """One method's numbers as a run report's metrics.json holds them (only what the comparison reads)."""

    def curve(ci95: tuple[float, float], mean: float) -> dict:
        return {"mean": mean, "ci95": [mean - 0.1, mean + 0.1], "vs_random": {"mean": sum(ci95) / 2, "ci95": ci95}}

    name, mean = verdict
    return {
        "title": "Grad-CAM",
        "passes": name == "pass",
        "deletion": curve(deletion, 0.3),
        "insertion": curve(insertion, 0.7),
        "randomization_classifier": {
            "layers": ["fc"],
            "mean": mean,
            "ci95": [mean - 0.05, mean + 0.05],
            "verdict": name,
        },
        "center": {"box": [16, 16], "area_share": 0.25, "mean": center, "min": center - 0.1, "max": center + 0.1},
        "seconds_per_image": seconds,
    }


def summary(size: int | None, grad_cam: dict, net: str = "ConvNet") -> dict:
    """A run's metrics.json, reduced to what the comparison's explanation sections read."""
    run = {"net": {"class": net}} | ({} if size is None else {"image_size": size})
    chance = {"deletion": {"mean": 0.5}, "insertion": {"mean": 0.5}}
    return {"run": run, "attributions": {"methods": {"grad_cam": grad_cam}, "random_order": chance}}


def section(*summaries: dict) -> str:
    runs = [{"number": i + 1, "label": f"run{i + 1}"} for i in range(len(summaries))]
    return "\n".join(_image_size_section(runs, list(summaries)))


def test_a_method_that_beats_random_only_at_the_larger_size_is_named_and_the_sentence_flips_with_the_numbers() -> None:
    text = section(summary(32, method(deletion=INCLUDES_0)), summary(128, method()))
    assert "## From 32 px to 128 px: what the attribution methods show and how they score" in text
    assert "- Beat their own random pixel order on both curves: #1 (32 px): none; #2 (128 px): Grad-CAM." in text
    assert "- Beat it on both curves at 128 px but not at 32 px: Grad-CAM (#1: deletion interval includes 0)." in text
    assert "at 32 px but not at 128 px" not in text and "changes side" not in text
    # The other way round, and worse than random rather than undecided.
    text = section(summary(32, method()), summary(128, method(deletion=WORSE_DELETION)))
    assert "- Beat their own random pixel order on both curves: #1 (32 px): Grad-CAM; #2 (128 px): none." in text
    assert "- Beat it on both curves at 32 px but not at 128 px: Grad-CAM (#2: deletion worse than random)." in text
    assert "| Grad-CAM | #2 | 128 px | no (worse), 0.075\u00a0[0.040,\u00a00.110] |" in text


def test_identical_verdicts_say_the_same_and_a_changed_randomization_verdict_is_named() -> None:
    text = section(summary(32, method()), summary(128, method()))
    assert "- No method changes side from 32 px to 128 px: beat it on both curves at both sizes: Grad-CAM." in text
    assert "- No randomization verdict changes from 32 px to 128 px: pass at both sizes: Grad-CAM." in text
    assert "Beat it on both curves at" not in text and "verdict at the classifier" not in text
    text = section(summary(32, method(insertion=INCLUDES_0)), summary(128, method(insertion=INCLUDES_0)))
    assert "- No method changes side from 32 px to 128 px: at neither size: Grad-CAM." in text
    text = section(summary(32, method()), summary(128, method(verdict=("fail", 0.8))))
    assert (
        "changes: Grad-CAM pass at 32 px (#1 0.10) -> fail at 128 px (#2 0.80)." in text
        and "No randomization verdict changes" not in text
    )


def test_runs_of_one_size_that_disagree_are_listed_run_by_run() -> None:
    text = section(summary(32, method()), summary(128, method()), summary(128, method(deletion=INCLUDES_0)))
    assert "- Not the same in every run of one size: Grad-CAM (#1 yes, #2 yes, #3 no)." in text


def test_centre_share_differences_are_stated_with_their_direction_and_no_verdict() -> None:
    # 30% -> 35% of the map in a box that is 25% of the image at both sizes: +5.0 points above the box's share.
    text = section(summary(32, method(center=0.30)), summary(128, method(center=0.35)))
    assert "Grad-CAM #1 30.00% (32 px) -> #2 35.00% (128 px), +5.0 points." in text
    assert "concentrate in the centre more at 128 px than at 32 px: Grad-CAM." in text
    assert "no interval for this share" in text
    text = section(summary(32, method(center=0.35)), summary(128, method(center=0.30)))
    assert "-5.0 points" in text and "less at 128 px than at 32 px: Grad-CAM." in text


def test_cost_is_set_against_the_pixel_count_ratio() -> None:
    # 128 px has (128 / 32)^2 = 16x the pixels; 0.001 s -> 0.030 s is 30x the seconds, more than the pixels.
    text = section(summary(32, method(seconds=0.001)), summary(128, method(seconds=0.030), net="ResNet"))
    assert (
        "- Cost per image: 128 px has 16x the pixels of 32 px; the seconds per image scale by 30x for Grad-CAM "
        "(#2 over #1): more than the pixel count for Grad-CAM. The nets differ too (ConvNet at 32 px, ResNet at "
        "128 px)" in text
    )
    # 0.001 s -> 0.008 s: 8x, fewer than the pixels; the same net: no sentence about nets.
    text = section(summary(32, method(seconds=0.001)), summary(128, method(seconds=0.008)))
    assert "scale by 8.0x for Grad-CAM (#2 over #1): no more than the pixel count for Grad-CAM." in text
    assert "nets differ" not in text


@pytest.mark.parametrize("sizes", [(32, None), (None, None), (128, 128)])
def test_the_section_is_left_out_without_every_image_size_or_with_one_size(sizes) -> None:
    summaries = [summary(size, method()) for size in sizes]
    text = render_comparison(comparison_data([True, True]), summaries, same_classes=False)
    assert "## Explanations, run by run" in text  # the rest of the comparison is written
    assert "## From" not in text and " px" not in text
    assert image_sizes(summaries) == (None if None in sizes else list(sizes))


def test_the_run_report_records_the_datamodules_image_size(tmp_path, monkeypatch) -> None:
    # The DataModule's side, not the config's: a config without data.image_size still gets the size the net saw.
    evaluation = SimpleNamespace(datamodule=SimpleNamespace(image_size=48))
    overview = SimpleNamespace(KEY="run", compute=lambda ev: SectionResult({"name": "run"}), markdown=lambda s: "# r")
    monkeypatch.setattr(run_report, "read_run", lambda path: SimpleNamespace(dir=path))
    monkeypatch.setattr(run_report, "evaluate_run", lambda run, options: evaluation)
    monkeypatch.setattr(run_report, "SECTIONS", (overview,))
    folder = run_report.write_run_report(tmp_path / "run")
    assert json.loads((folder / run_report.METRICS_FILE).read_text())["run"] == {"name": "run", "image_size": 48}
