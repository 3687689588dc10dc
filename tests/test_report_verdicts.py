"""The report's verdicts follow its own statistics: paired intervals for "beats the random order" and "more
faithful than", the randomization check judged at the classifier, class selectivity over live channels, the
usual median, and one CKA image set (issue 18, items 7, 8 and 12). Every case is hand-built."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cnn_explorer.interpret.attribution.faithfulness import PerturbationCurves, paired_difference
from cnn_explorer.interpret.attribution.sanity import (
    RandomizationResult,
    cascading_randomization,
    data_randomization,
    passes_randomization_check,
    randomization_verdict,
)
from cnn_explorer.interpret.features.cka import ActivationSample
from cnn_explorer.interpret.features.layer_stats import LayerStats, median
from cnn_explorer.report.comparison import (
    _faithfulness_section,
    _faithfulness_sentence,
    _features_section,
    first_images,
)
from cnn_explorer.report.sections import attributions, features

# --- item 7: paired intervals ----------------------------------------------------------------------------------


def flat_curves(deletion: list[float], insertion: list[float]) -> PerturbationCurves:
    """Curves that are constant per image over fractions [0, 1]: each image's AUC is its value."""
    d, i = torch.tensor(deletion), torch.tensor(insertion)
    return PerturbationCurves(torch.tensor([0.0, 1.0]), torch.stack([d, d], dim=1), torch.stack([i, i], dim=1))


RANDOM_DELETION = [0.35, 0.55, 0.75, 0.45, 0.65]  # mean 0.55; unpaired 95% interval about [0.43, 0.67]
RANDOM_INSERTION = [0.40, 0.60, 0.80, 0.50, 0.70]  # mean 0.60
CHANCE = flat_curves(RANDOM_DELETION, RANDOM_INSERTION)


def method_numbers(title: str, deletion: list[float], insertion: list[float], passes: bool = True) -> dict:
    numbers = attributions._auc_numbers(flat_curves(deletion, insertion), CHANCE)
    verdict = "pass" if passes else "fail"
    return {
        "title": title,
        "negative_control": False,
        "randomization_classifier": {"layers": ["fc"], "mean": 0.1, "ci95": [0.0, 0.2], "verdict": verdict},
        "randomization_mean": 0.1,
        "passes": passes,
        "completeness": None,
        **numbers,
    }


def test_paired_difference_by_hand() -> None:
    # Differences -0.02, -0.04, -0.06, -0.08: every resampled mean lies in [-0.08, -0.02], below 0.
    d = paired_difference(torch.tensor([0.48, 0.46, 0.44, 0.42]), torch.full((4,), 0.5))
    assert d.mean == pytest.approx(-0.05) and -0.08 <= d.low <= d.high <= -0.02 and d.below_zero
    # Differences +0.1, -0.1, +0.1, -0.1: centred on 0, resamples of all +0.1 or all -0.1 are likely.
    d = paired_difference(torch.tensor([0.6, 0.4, 0.6, 0.4]), torch.full((4,), 0.5))
    assert d.mean == pytest.approx(0.0, abs=1e-6) and d.low < 0 < d.high and not d.below_zero and not d.above_zero
    with pytest.raises(ValueError, match="same items"):
        paired_difference(torch.zeros(3), torch.zeros(4))


def test_beats_random_only_where_the_paired_interval_excludes_0() -> None:
    # 0.05 below the random order on every image for deletion, 0.05 above for insertion: the unpaired intervals
    # (method [0.38, 0.62]-ish, random [0.43, 0.67]-ish) overlap, the paired difference is exactly -0.05 / +0.05.
    consistent = method_numbers("Consistent", [v - 0.05 for v in RANDOM_DELETION], [v + 0.05 for v in RANDOM_INSERTION])
    assert consistent["deletion"]["ci95"][1] > attributions._auc_numbers(CHANCE)["deletion"]["ci95"][0]  # overlap
    assert consistent["deletion"]["vs_random"]["ci95"] == pytest.approx([-0.05, -0.05])
    assert attributions.beats_random(consistent) == {"deletion": True, "insertion": True}
    # Lower mean deletion AUC (0.53 vs 0.55) but +0.1 / -0.2 / ... per image: centred near 0, not "beats".
    noisy = method_numbers("Noisy", [0.45, 0.35, 0.85, 0.25, 0.75], [v + 0.05 for v in RANDOM_INSERTION])
    assert noisy["deletion"]["mean"] == pytest.approx(0.53)
    low, high = noisy["deletion"]["vs_random"]["ci95"]
    assert low < 0 < high
    assert attributions.beats_random(noisy) == {"deletion": False, "insertion": True}
    a = {"methods": {"c": consistent, "n": noisy}, "random_order": attributions._auc_numbers(CHANCE), "threshold": 0.5}
    text = "\n".join(attributions._verdicts(a))
    assert "Not shown to beat a random pixel order on both curves (a paired interval includes 0): Noisy." in text
    assert (
        "Passing the randomization check and beating the random order on both curves (paired intervals): "
        "Consistent." in text
    )
    assert "Worse than" not in text


def test_comparison_says_more_faithful_on_a_consistent_paired_difference_despite_overlapping_intervals() -> None:
    def scored(number: int, per_image: list[float], ci95: list[float]) -> tuple[dict, dict]:
        deletion = {"mean": sum(per_image) / len(per_image), "ci95": ci95, "per_image": per_image}
        methods = {"grad_cam": {"title": "Grad-CAM", "deletion": deletion}}
        summary = {"attributions": {"methods": methods, "random_order": {"deletion": {"mean": 0.6}}}}
        return {"number": number, "label": f"run{number}"}, summary

    # Run 2 is 0.03 lower on every image; the unpaired intervals [0.40, 0.70] and [0.37, 0.67] overlap.
    a_values = [0.40, 0.50, 0.60, 0.70]
    runs, summaries = zip(
        scored(1, a_values, [0.40, 0.70]), scored(2, [v - 0.03 for v in a_values], [0.37, 0.67]), strict=True
    )
    sentence = _faithfulness_sentence("grad_cam", list(runs), list(summaries))
    assert sentence.startswith("- Grad-CAM: most faithful in #2 (run2)")
    assert "paired difference #2 minus: #1 -0.030 [-0.030, -0.030]" in sentence
    # A report without per-image AUCs cannot be paired: no verdict.
    del summaries[0]["attributions"]["methods"]["grad_cam"]["deletion"]["per_image"]
    sentence = _faithfulness_sentence("grad_cam", list(runs), list(summaries))
    assert sentence.startswith("- Grad-CAM: not compared")


def test_the_comparison_table_gives_each_runs_randomization_verdict_unclear_included() -> None:
    def summary(classifier: dict | None, passes: bool) -> dict:
        curve = {"mean": 0.3, "ci95": [0.2, 0.4], "per_image": [0.2, 0.3, 0.4]}
        method = {"title": "Grad-CAM", "deletion": curve, "insertion": {"mean": 0.7}, "passes": passes}
        if classifier is not None:
            method["randomization_classifier"] = classifier
        chance = {"deletion": {"mean": 0.5}, "insertion": {"mean": 0.5}}
        return {"attributions": {"methods": {"grad_cam": method}, "random_order": chance}}

    runs = [{"number": n, "label": f"run{n}"} for n in (1, 2, 3)]
    summaries = [
        summary({"verdict": "unclear", "mean": 0.48, "ci95": [0.41, 0.55]}, passes=False),  # straddles 0.5
        summary({"verdict": "pass", "mean": 0.1, "ci95": [0.0, 0.2]}, passes=True),
        summary(None, passes=False),  # a report from before the classifier-step verdict: pass/fail only
    ]
    (row,) = [line for line in _faithfulness_section(runs, summaries) if line.startswith("| Grad-CAM |")]
    assert row == "| Grad-CAM | 0.300 / 0.700 (unclear) | 0.300 / 0.700 (pass) | 0.300 / 0.700 (fail) |"


# --- item 8: randomization judged at the classifier -------------------------------------------------------------


def head_model(pixels: int = 16) -> nn.Module:
    """conv (one 1x1 filter of weight 1) -> flatten -> linear head whose class rows weight pixel p by (p + 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Flatten(), nn.Linear(pixels * pixels, 4))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.copy_(torch.arange(1.0, pixels * pixels + 1).expand(4, -1))
        model[2].bias.zero_()
    return model


def input_gradient(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """The vanilla gradient of the target logit: here conv weight x the head's row, so it depends on the head."""
    x = images.detach().clone().requires_grad_(True)
    model(x).gather(1, targets[:, None]).sum().backward()
    return x.grad[:, 0]


def conv_activation(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """A map that reads only the layers below the head (like guided backprop's, in Adebayo et al.'s figure 2)."""
    return model[0](images)[:, 0]


def test_a_map_that_survives_the_head_fails_and_one_that_depends_on_it_passes() -> None:
    images = torch.randn(8, 1, 16, 16)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    surviving = cascading_randomization(head_model(), images, targets, conv_activation)
    assert surviving.layers == ("2", "0") and surviving.classifier_steps == 1
    # Re-initializing the head leaves the conv output untouched: correlation exactly 1 on every image.
    torch.testing.assert_close(surviving.spearman[0], torch.ones(8))
    verdict = randomization_verdict(surviving)
    assert verdict.layers == ("2",) and (verdict.mean, verdict.low, verdict.high) == pytest.approx((1, 1, 1))
    assert verdict.verdict == "fail" and not passes_randomization_check(surviving)
    # The trained gradient ranks pixels by p; the random head's |U(-1/16, 1/16)| rows are independent of p, so the
    # rank correlation over 256 pixels is about N(0, 1/sqrt(255) = 0.063): far below 0.5.
    depending = cascading_randomization(head_model(), images, targets, input_gradient)
    verdict = randomization_verdict(depending)
    assert verdict.high < 0.5 and verdict.verdict == "pass" and passes_randomization_check(depending)


def test_the_classifier_verdict_ignores_what_the_lower_layers_do_later() -> None:
    # By hand: 0.9 and 0.8 at the two head steps, then 0.0 at three conv steps: cascade mean 1.7 / 5 = 0.34
    # passes the lenient whole-cascade rule; at the classifier the mean is 0.85 on both images: fails.
    made_up = RandomizationResult(
        layers=("fc2", "fc1", "conv3", "conv2", "conv1"),
        spearman=torch.tensor([[0.9, 0.9], [0.8, 0.8], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        ssim=torch.zeros(5, 2),
        classifier_steps=2,
    )
    assert passes_randomization_check(made_up, over="cascade")
    verdict = randomization_verdict(made_up)
    assert verdict.layers == ("fc2", "fc1") and verdict.mean == pytest.approx(0.85) and verdict.verdict == "fail"
    # Straddling the threshold: per-image classifier means 0.3 and 0.7 -> the interval spans 0.5: unclear.
    straddling = RandomizationResult(
        layers=("fc", "conv"), spearman=torch.tensor([[0.3, 0.7], [0.0, 0.0]]), ssim=torch.zeros(2, 2)
    )
    verdict = randomization_verdict(straddling)
    assert (verdict.low, verdict.high) == pytest.approx((0.3, 0.7)) and verdict.verdict == "unclear"
    assert not verdict.passes


def test_data_randomization_fails_a_map_the_labels_do_not_change() -> None:
    # The "random-labels" model: the same architecture whose head weights pixel p by (P - p) instead of (p + 1),
    # so the gradient's |map| ranks the pixels in exactly the reverse order: correlation -1 on every image.
    real, memorized = head_model(), head_model()
    with torch.no_grad():
        memorized[2].weight.copy_(memorized[2].weight.flip(1))
    images = torch.randn(6, 1, 16, 16)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    spearman, verdict = data_randomization(real, memorized, images, targets, input_gradient)
    torch.testing.assert_close(spearman, torch.full((6,), -1.0))
    assert verdict.verdict == "pass" and verdict.layers == ()
    # A map of the shared conv layer alone is the same for both models: correlation 1, fails.
    spearman, verdict = data_randomization(real, memorized, images, targets, conv_activation)
    torch.testing.assert_close(spearman, torch.ones(6))
    assert verdict.verdict == "fail" and (verdict.low, verdict.high) == pytest.approx((1.0, 1.0))


# --- item 12: live channels, the usual median, one CKA image set ------------------------------------------------


def test_median_is_the_usual_one() -> None:
    assert median(torch.tensor([0.0398, 0.0591])) == pytest.approx((0.0398 + 0.0591) / 2)  # torch says 0.0398
    assert median(torch.tensor([3.0, 1.0, 2.0])) == 2.0
    assert median(torch.tensor([float("nan"), 1.0, 4.0, 2.0, 3.0])) == 2.5
    assert math.isnan(median(torch.tensor([])))


def layer(selectivity: list[float], dead: list[bool]) -> LayerStats:
    channels = len(selectivity)
    return LayerStats(
        sparsity=0.5,
        channel_sparsity=torch.zeros(channels),
        dead=torch.tensor(dead),
        class_means=torch.zeros(2, channels, dtype=torch.float64),
        selectivity=torch.tensor(selectivity, dtype=torch.float64),
        pooled=None,
        labels=torch.zeros(0, dtype=torch.long),
    )


def test_class_specificity_with_depth_is_judged_over_live_channels() -> None:
    # Layer 3 has two dead channels (index 0 by convention): over all channels its mean 0.15 is below layer 2's
    # 0.2 ("no"); over live ones it is (0.4 + 0.2) / 2 = 0.3 ("yes").
    stats = [layer([0.1, 0.1], [False, False]), layer([0.2, 0.2], [False, False])]
    stats.append(layer([0.4, 0.2, 0.0, 0.0], [False, False, True, True]))
    assert float(stats[2].selectivity.mean()) == pytest.approx(0.15)
    assert stats[2].selectivity_mean == pytest.approx(0.3) and stats[2].selectivity_median == pytest.approx(0.3)
    rows = [
        {"selectivity_mean": s.selectivity_mean, "dead": s.dead_count, "probe_val_acc": 0.5, "sparsity": 0.5}
        for s in stats
    ]
    claims = {c["claim"]: c for c in features.check_claims({"layers": rows, "filters": {"initial": None}})}
    specific = claims["deeper layers are more class-specific"]
    assert specific["values"] == pytest.approx([0.1, 0.2, 0.3]) and specific["holds"]
    assert "over live channels" in specific["measure"] and "left out: 0, 0, 2" in specific["measure"]


def test_the_comparison_takes_the_first_validation_images_as_the_run_report_does() -> None:
    batches = [
        (torch.arange(i, i + 3).float()[:, None, None, None], torch.zeros(3), torch.arange(i, i + 3)) for i in (0, 3, 6)
    ]
    kept = list(first_images(iter(batches), 5))
    assert [b[2].tolist() for b in kept] == [[0, 1, 2], [3, 4]]
    # The run report's sample keeps the first 5 images seen over the whole split: the same rows.
    report, comparison = ActivationSample(5), ActivationSample(5)
    for images, _, _ in batches:
        report.update("x", images, None, None)
    for images, _, _ in kept:
        comparison.update("x", images, None, None)
    assert torch.equal(report.result()["x"], comparison.result()["x"])


def test_the_cka_text_states_the_pooling_and_the_image_set() -> None:
    summary = {"features": {"layers": [{"probe_val_acc": 0.5, "sparsity": 0.5, "selectivity_mean": 0.2}]}}
    runs = [{"number": 1, "label": "a"}, {"number": 2, "label": "b"}]
    cka = {"images": 1000, "pool": 4, "layers": [], "matrix": []}
    text = "\n".join(_features_section(runs, [summary, summary], cka))
    assert (
        "on the first 1,000 validation images (the ones each run's report uses), each map average-pooled to 4x4" in text
    )


def test_one_item_gives_no_interval_and_so_no_claim():
    # One object (a detection report explaining one pedestrian): every resampled mean is that one value, so a
    # percentile interval would be the point [d, d] and "better than chance" would follow from a single item.
    one = paired_difference(torch.tensor([0.30]), torch.tensor([0.18]))
    assert one.mean == pytest.approx(0.12)
    assert (one.low, one.high) == (-math.inf, math.inf)
    assert not one.above_zero and not one.below_zero
    two = paired_difference(torch.tensor([0.30, 0.40]), torch.tensor([0.18, 0.20]))
    assert two.above_zero  # both differences (0.12, 0.20) are positive: every resample's mean is too
