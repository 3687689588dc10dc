"""analyze.py as a user runs it: a real short training run, then the report read back and checked against
numbers computed here from the checkpoint; a two-run sweep and its comparison; every bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import analyze
from cnn_explorer.errors import UserError
from cnn_explorer.models import ConvNet
from cnn_explorer.output_dir import MANIFEST, replacing_dir
from cnn_explorer.render import charts
from cnn_explorer.render import figures as plots
from cnn_explorer.report.comparison import _faithfulness_sentence
from cnn_explorer.report.sections.confusions import check_claims
from cnn_explorer.rundir import best_checkpoint, read_metrics
from cnn_explorer.sources import SyntheticImages
from tests.conftest import ANALYZE_FAST, TINY_MINIMAL, run_cli, tree_snapshot

# The tiny synthetic run of conftest, with only the callbacks a report needs (checkpoints, epoch timer).
RUN = TINY_MINIMAL
# The sweep is smaller still: one epoch on 200 training images per job.
SWEEP = [o for o in RUN if not o.startswith(("trainer.max_epochs=", "data.source.train_size="))]
SWEEP += ["trainer.max_epochs=1", "data.source.train_size=400"]
FIXED_SIZE_FIGURES = {
    "loss_curves.png": charts.CURVE_FIGSIZE,
    "accuracies.png": charts.CURVE_FIGSIZE,
    "confusion_matrix.png": plots.CONFUSION_FIGSIZE,
}
GRID_FIGURES = [
    "misclassified_examples.png",
    "conv1_filters.png",
    "attributions.png",
    "features_conv1.png",
    "features_conv2.png",
    "features_conv3.png",
    "features_classes.png",
    "features_cka.png",
    "conv1_filters_at_init.png",
]
CHART_FIGURES = ["attribution_randomization.png", "attribution_curves.png", "features_by_depth.png"]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(script, *args)


snapshot = tree_snapshot


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    result = run_script("train.py", *RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def analyzed_run(trained_run) -> tuple[Path, subprocess.CompletedProcess]:
    result = run_script("analyze.py", str(trained_run), *ANALYZE_FAST)
    return trained_run, result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_script("train.py", "-m", *SWEEP, "model=small,deep", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    return sweep_dir


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())


# --- one run: files, pictures, numbers ---------------------------------------------------------------------


def test_report_has_every_figure_valid_and_referenced(analyzed_run):
    run_dir, result = analyzed_run
    assert result.returncode == 0, result.stderr
    report = run_dir / "report"
    assert f"report: {report / 'report.md'}" in result.stdout
    markdown = (report / "report.md").read_text()
    names = {p.name for p in report.glob("*.png")}
    expected = {*FIXED_SIZE_FIGURES, *GRID_FIGURES, *CHART_FIGURES, "feature_maps_conv1.png", "feature_maps_conv2.png"}
    expected.add("feature_maps_conv3.png")  # model=small has three conv blocks
    assert names == expected
    for name in names:
        assert f"]({name})" in markdown, f"{name} is not shown in report.md"
        with Image.open(report / name) as image:
            image.verify()
        with Image.open(report / name) as image:
            size, pixels = image.size, image.convert("RGB")
            # Not blank: even the "no mistakes" placeholder has anti-aliased text, not one background colour.
            assert len(pixels.getcolors(maxcolors=1 << 24)) > 5, f"{name} looks blank"
        if name in FIXED_SIZE_FIGURES:
            width, height = FIXED_SIZE_FIGURES[name]
            assert size == (round(width * plots.DPI), round(height * plots.DPI)), name
        elif name in CHART_FIGURES:
            assert size[0] in (round(charts.CURVE_FIGSIZE[0] * plots.DPI), round(charts.BARS_FIGSIZE[0] * plots.DPI))
        else:
            assert 100 <= size[0] <= plots.LABELED_GRID_WIDTH * plots.DPI, (name, size)
            assert 100 <= size[1] <= plots.LABELED_GRID_MAX_HEIGHT * plots.DPI, (name, size)
    # Built beside report/ and moved in: nothing temporary is left behind.
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".report")]


def test_report_numbers_equal_an_independent_evaluation(analyzed_run):
    run_dir, _ = analyzed_run
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    summary = json.loads((run_dir / "report" / "metrics.json").read_text())
    markdown = (run_dir / "report" / "report.md").read_text()

    # The best checkpoint, by the val_acc in its name; its net weights into a ConvNet built by hand.
    ckpt = max((run_dir / "checkpoints").glob("epoch*.ckpt"), key=lambda p: float(p.stem.split("val_acc")[1]))
    assert summary["run"]["checkpoint"]["file"] == f"checkpoints/{ckpt.name}"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net_cfg = cfg.model.net
    net = ConvNet(list(net_cfg.architecture), net_cfg.hidden, 10, net_cfg.batch_norm, net_cfg.dropout)
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    net.eval()

    # The test set as train.py saw it, normalized by hand.
    source = cfg.data.source
    splits = SyntheticImages(source.train_size, source.test_size, 10, source.signal, source.seed).load()
    mean, std = torch.tensor(list(cfg.data.mean)).view(1, 3, 1, 1), torch.tensor(list(cfg.data.std)).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = net((splits.test_images.float() / 255 - mean) / std).argmax(dim=1)
    labels = splits.test_labels
    counts = torch.zeros(10, 10, dtype=torch.long)
    counts.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    accuracy = (predicted == labels).float().mean().item()

    test = summary["test"]
    assert test["confusion_matrix"] == counts.tolist()
    assert test["acc"] == pytest.approx(accuracy)
    assert test["correct"] == int((predicted == labels).sum())
    for i, name in enumerate(splits.classes):
        assert test["per_class_acc"][name] == pytest.approx((counts[i, i] / counts[i].sum()).item())
        assert f"| {name} | {test['per_class_acc'][name]:.2%} | {counts[i, i]} / {counts[i].sum()} |" in markdown
    assert f"**{accuracy:.2%}** ({int((predicted == labels).sum()):,} of {len(labels):,})" in markdown

    # The most confused pair, by rate.
    rates = counts.float() / counts.sum(dim=1, keepdim=True)
    rates.fill_diagonal_(-1)
    if rates.max() > 0:
        true, pred = divmod(int(rates.argmax()), 10)
        top = summary["confusions"]["top_confused"][0]
        assert (top["true"], top["predicted"]) == (splits.classes[true], splits.classes[pred])
        assert top["rate"] == pytest.approx(rates[true, pred].item())
        assert f"| 1 | {top['true']} | {top['predicted']} | {top['rate']:.2%} | {counts[true, pred]} |" in markdown

    # The same accuracy train.py logged for this checkpoint.
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    logged = [float(r["test/acc"]) for r in rows if r.get("test/acc")]
    assert abs(100 * (accuracy - logged[-1])) <= 0.1

    # Best epoch and the train-vs-val gaps, from the CSV.
    val = {int(r["epoch"]): float(r["val/acc"]) for r in rows if r.get("val/acc")}
    train = {int(r["epoch"]): float(r["train/acc"]) for r in rows if r.get("train/acc")}
    best = max(val, key=lambda e: (val[e], -e))
    training = summary["training"]
    assert training["best_epoch"] == best
    assert training["gap_best"]["acc_gap_pp"] == pytest.approx(100 * (train[best] - val[best]))
    last = max(val)
    assert training["gap_end"]["acc_gap_pp"] == pytest.approx(100 * (train[last] - val[last]))
    assert f"gap **{training['gap_end']['acc_gap_pp']:+.2f} percentage points**" in markdown
    # Synthetic classes are not CIFAR-10's: the seed's claims are said not to apply.
    assert summary["confusions"]["claims"]["applies"] is False
    assert "the claims do not apply" in markdown


def test_report_measures_features_and_explanations(analyzed_run):
    run_dir, _ = analyzed_run
    summary = json.loads((run_dir / "report" / "metrics.json").read_text())
    markdown = (run_dir / "report" / "report.md").read_text()
    layers = summary["features"]["layers"]
    # model=small: conv 3x3 -> pool -> conv -> pool -> conv, by hand: 3 px / 1, 8 px / 2, 18 px / 4.
    assert [(r["receptive_field"], r["stride"]) for r in layers] == [(3, 1), (8, 2), (18, 4)]
    assert all(0 <= r["probe_val_acc"] <= 1 and 0 <= r["sparsity"] <= 1 for r in layers)
    filters = summary["features"]["filters"]
    assert filters["initial"] is not None and filters["drift"]["relative_change"] > 0  # train.py kept the init
    claims = {c["claim"]: c for c in summary["features"]["claims"]}
    assert claims["feature abstraction increases with depth"]["values"] == [r["probe_val_acc"] for r in layers]
    assert "| feature abstraction increases with depth |" in markdown
    methods = summary["attributions"]["methods"]
    assert list(methods) == ["gradient", "grad_cam"]  # ANALYZE_FAST's choice
    for name, m in methods.items():
        assert 0 <= m["deletion"]["mean"] <= 1 and 0 <= m["insertion"]["mean"] <= 1, name
        assert m["deletion"]["ci95"][0] <= m["deletion"]["mean"] <= m["deletion"]["ci95"][1], name
        assert len(m["randomization_spearman"]) == 5  # fc2, fc1, conv3, conv2, conv1
        assert f"| {m['title']} |" in markdown
    assert summary["attributions"]["faithfulness_images"] == 20
    (metadata,) = (run_dir / "report" / "projector").glob("*/penultimate/metadata.tsv")
    assert len(metadata.read_text().splitlines()) == 200  # 20 validation images per class, 10 classes


# --- a sweep ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # several full runs: the long checks (pytest -m slow; CI runs them too)
def test_sweep_gets_a_report_per_run_and_a_comparison(sweep):
    result = run_script("analyze.py", str(sweep), *ANALYZE_FAST)
    assert result.returncode == 0, result.stderr
    comparison = sweep / "comparison"
    assert f"comparison: {comparison / 'comparison.md'}" in result.stdout
    for job in jobs(sweep):
        assert (job / "report" / "report.md").is_file()
    markdown = (comparison / "comparison.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(table) == 2
    assert "| small |" in table[0] and "model=small" in table[0]
    assert "| deep |" in table[1] and "model=deep" in table[1]
    data = json.loads((comparison / "comparison.json").read_text())
    assert [r["model"] for r in data["runs"]] == ["small", "deep"]
    for run, job in zip(data["runs"], jobs(sweep), strict=True):
        own = json.loads((job / "report" / "metrics.json").read_text())
        assert run["test_acc"] == own["test"]["acc"]
        assert f"{own['test']['acc']:.2%}" in table[run["number"] - 1]
    for name in ("accuracy_curves.png", "per_class_accuracy.png"):
        assert f"]({name})" in markdown
        with Image.open(comparison / name) as image:
            image.verify()
    assert "## Confusions that change most between runs" in markdown
    assert "## Features by depth, run by run" in markdown and "## Explanations, run by run" in markdown
    cka = data["cka"]
    assert len(cka["layers"]) == 3 + 6 and cka["layers"][0] == "#1 conv1" and cka["layers"][3] == "#2 conv1"
    for i in range(9):
        assert cka["matrix"][i][i] == pytest.approx(1.0, abs=1e-6)


def test_compare_only_compares_the_reports_the_runs_have_and_evaluates_none(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    first, second = jobs(copy)
    for job in (first, second):
        shutil.rmtree(job / "report", ignore_errors=True)
    assert analyze.main([str(first), "--device", "cpu", *ANALYZE_FAST]) == 0
    out = tmp_path / "compared"
    # The second run has no report: named, with what to do, and nothing is evaluated or written for it.
    assert analyze.main([str(first), str(second), "--out", str(out), "--compare-only"]) == 1
    err = capsys.readouterr().err
    assert f"{second} has no report to compare (report/metrics.json): run analyze.py {second} first" in err
    assert not (second / "report").exists()
    assert analyze.main([str(second), "--device", "cpu", *ANALYZE_FAST]) == 0

    def reports() -> dict:
        return {job: (snapshot(job / "report"), (job / "report").stat().st_mtime_ns) for job in (first, second)}

    before = reports()
    assert analyze.main([str(first), str(second), "--out", str(out), "--compare-only"]) == 0
    assert reports() == before  # read, not rewritten (a rewrite replaces the folder: a new mtime)
    data = json.loads((out / "comparison.json").read_text())
    assert [r["test_acc"] for r in data["runs"]] == [
        json.loads((job / "report" / "metrics.json").read_text())["test"]["acc"] for job in (first, second)
    ]
    assert analyze.main([str(first), "--compare-only"]) == 1
    assert "--compare-only needs several runs to compare" in capsys.readouterr().err
    # Reports without their run dirs, as committed in outputs/: compared the same, without the cross-run CKA
    # (no net to run). Without --compare-only such a dir is refused as before.
    bare = [tmp_path / "bare" / job.name for job in (first, second)]
    for job, copy_of in zip((first, second), bare, strict=True):
        shutil.copytree(job / "report", copy_of / "report")
    from_reports = tmp_path / "from_reports"
    assert analyze.main([*map(str, bare), "--out", str(from_reports), "--compare-only"]) == 0
    again = json.loads((from_reports / "comparison.json").read_text())
    assert [r["test_acc"] for r in again["runs"]] == [r["test_acc"] for r in data["runs"]]
    assert again["cka"] is None and data["cka"] is not None
    assert analyze.main([*map(str, bare), "--out", str(from_reports)]) == 1
    assert f"{bare[0]} is not a run dir" in capsys.readouterr().err


def test_sweep_with_a_broken_run_reports_the_good_one_and_lists_the_broken(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    good, bad = jobs(copy)
    assert analyze.main([str(good), "--device", "cpu", *ANALYZE_FAST]) == 0  # an earlier report, to be replaced
    earlier = (good / "report").stat().st_ino  # an edited report.md would be the user's, and kept
    ckpt = next((bad / "checkpoints").glob("epoch*.ckpt"))
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    before = snapshot(bad)

    assert analyze.main([str(copy), "--device", "cpu", *ANALYZE_FAST]) == 1
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {ckpt}" in err
    assert f"1 run(s) could not be reported: {bad}" in err
    assert snapshot(bad) == before
    assert (good / "report" / "report.md").read_text().startswith("# Report: ")
    assert (good / "report").stat().st_ino != earlier  # replaced
    assert not [p.name for p in good.iterdir() if p.name.startswith(".report")]
    markdown = (copy / "comparison" / "comparison.md").read_text()
    assert "## Runs that could not be reported" in markdown and f"`../{bad.name}`" in markdown
    assert "| 1 |" in markdown and "| 2 |" not in markdown


# --- bad input ----------------------------------------------------------------------------------------------


def break_nothing(run_dir: Path) -> Path:
    return run_dir


def remove_checkpoints(run_dir: Path) -> Path:
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    return run_dir


def truncate_checkpoint(run_dir: Path) -> Path:
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return ckpt


def garble_checkpoint(run_dir: Path) -> Path:
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    ckpt.write_bytes(os.urandom(4096))
    return ckpt


def edit_architecture(run_dir: Path) -> Path:
    config = run_dir / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("- 128\n", "- 96\n", 1))  # conv3: 128 -> 96 channels
    return next((run_dir / "checkpoints").glob("epoch*.ckpt"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (remove_checkpoints, "has no best checkpoint"),
        (truncate_checkpoint, "cannot read checkpoint {path}: it is truncated or corrupt"),
        (garble_checkpoint, "cannot read checkpoint {path}: it is truncated or corrupt"),
        (edit_architecture, "{path} does not fit the net described by"),
    ],
    ids=["no-checkpoint", "truncated", "corrupt", "does-not-fit-config"],
)
def test_broken_run_gets_one_message_and_is_left_as_it_was(trained_run, tmp_path, capsys, damage, message):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("report"))
    with replacing_dir(run_dir / "report") as folder:
        (folder / "report.md").write_text("an earlier report, to be kept")
    path = damage(run_dir)
    before = snapshot(run_dir)
    assert analyze.main([str(run_dir), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert message.format(path=path) in err
    assert str(run_dir) in err
    assert snapshot(run_dir) == before


def test_checkpoint_of_another_model_names_checkpoint_and_config(trained_run, sweep, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("report"))
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    deep = jobs(sweep)[1]
    shutil.copyfile(next((deep / "checkpoints").glob("epoch*.ckpt")), ckpt)
    before = snapshot(run_dir)
    assert analyze.main([str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{ckpt} does not fit the net described by {run_dir / '.hydra' / 'config.yaml'}" in err
    assert snapshot(run_dir) == before


def test_path_that_is_not_a_run_dir_gets_a_message(tmp_path, capsys):
    # In-process: main() returns the exit status; an exception other than UserError would fail this test
    # as it would print a traceback from the command line.
    (tmp_path / "notes").mkdir()
    assert analyze.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} is not a run dir (it has no .hydra/config.yaml) nor a sweep dir")
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing"], "{tmp}/missing does not exist"),
        (["{run}", "{run}"], "say where their comparison goes with --out DIR"),
        (["{run}", "--batch-size", "0"], "--batch-size must be a positive number"),
        (["{run}", "{run}", "--out", "{run}"], "{run} exists and was not written by analyze.py"),
    ],
)
def test_bad_arguments(trained_run, tmp_path, capsys, args, message):
    fill = {"tmp": tmp_path, "run": trained_run}
    assert analyze.main([a.format(**fill) for a in args]) == 1
    assert message.format(**fill) in capsys.readouterr().err


# --- the pieces, on hand-made inputs ------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "step", "test/acc", "time/epoch_s", "train/acc", "train/loss", "val/acc", "val/loss"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def test_read_metrics_merges_train_and_val_rows_and_later_versions_win(tmp_path):
    write_csv(
        tmp_path / "csv" / "version_0" / "metrics.csv",
        [
            {"epoch": 0, "step": 9, "val/acc": 0.5, "val/loss": 1.5},
            {"epoch": 0, "step": 9, "train/acc": 0.4, "train/loss": 1.8, "time/epoch_s": 9.0},
            {"epoch": 1, "step": 19, "val/acc": 0.6, "val/loss": 1.2},  # interrupted before its train row
        ],
    )
    write_csv(
        tmp_path / "csv" / "version_1" / "metrics.csv",
        [
            {"epoch": 1, "step": 19, "val/acc": 0.65, "val/loss": 1.1},
            {"epoch": 1, "step": 19, "train/acc": 0.6, "train/loss": 1.2, "time/epoch_s": 3.0},
            {"epoch": 2, "step": 20, "test/acc": 0.63},
        ],
    )
    metrics = read_metrics(tmp_path)
    assert metrics.epochs == [0, 1]  # the test row's epoch is not an epoch
    assert metrics.get("val/acc") == [0.5, 0.65]
    assert metrics.get("train/acc") == [0.4, 0.6]
    assert metrics.get("time/epoch_s") == [9.0, 3.0]
    assert all(math.isnan(v) for v in metrics.get("val/acc_best"))
    assert metrics.test == {"test/acc": 0.63}


def test_read_metrics_names_the_file_with_a_bad_value(tmp_path):
    write_csv(tmp_path / "csv" / "version_0" / "metrics.csv", [{"epoch": 0, "step": 1, "val/acc": "oops"}])
    with pytest.raises(UserError, match=r"version_0/metrics.csv line 2: column 'val/acc' holds 'oops'"):
        read_metrics(tmp_path)


def test_best_checkpoint_is_the_highest_val_acc_and_the_earlier_epoch_on_a_tie(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("epoch002-val_acc0.7000.ckpt", "epoch005-val_acc0.7100.ckpt", "epoch007-val_acc0.7100.ckpt"):
        (folder / name).touch()
    (folder / "last.ckpt").touch()
    best = best_checkpoint(tmp_path)
    assert (best.path.name, best.epoch, best.val_acc) == ("epoch005-val_acc0.7100.ckpt", 5, 0.71)


def test_replacing_dir_leaves_the_old_folder_when_building_fails(tmp_path):
    target = tmp_path / "report"
    with replacing_dir(target) as folder:
        (folder / "report.md").write_text("old")
    with pytest.raises(RuntimeError), replacing_dir(target) as folder:
        (folder / "report.md").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "report.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with replacing_dir(target) as folder:
        (folder / "report.md").write_text("new")
    assert (target / "report.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "report.md"]


def test_replacing_dir_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not a report")
    with (
        pytest.raises(UserError, match="notes exists and was not written by analyze.py"),
        replacing_dir(tmp_path / "notes") as folder,
    ):
        (folder / "report.md").write_text("new")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]
    # A folder holding just a file named like ours is not ours either (no manifest).
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "comparison.md").write_text("mine")
    (tmp_path / "thesis" / "thesis.tex").write_text("mine too")
    with pytest.raises(UserError, match="was not written by analyze.py"), replacing_dir(tmp_path / "thesis"):
        pass
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == ["comparison.md", "thesis.tex"]


def test_replacing_dir_refuses_to_drop_a_file_a_user_added_to_its_folder(tmp_path):
    target = tmp_path / "report"
    with replacing_dir(target) as folder:
        (folder / "report.md").write_text("first")
    (target / "my_notes.md").write_text("written by a person")
    with pytest.raises(UserError, match=r"holds 1 file\(s\) analyze.py did not write \(my_notes.md\)"):
        with replacing_dir(target) as folder:
            (folder / "report.md").write_text("second")
    assert (target / "my_notes.md").read_text() == "written by a person"
    assert (target / "report.md").read_text() == "first"


def test_claimed_confusions_are_checked_against_the_top_pairs():
    classes = list(CIFAR10_CLASSES)
    index = {name: i for i, name in enumerate(classes)}
    cm = torch.eye(10, dtype=torch.long) * 100  # 100 test images per class
    cm[index["cat"], index["dog"]], cm[index["cat"], index["cat"]] = 30, 70  # rank 1: 30%
    cm[index["horse"], index["deer"]], cm[index["horse"], index["horse"]] = 5, 95  # rank 2: 5%
    cm[0, 1:], cm[0, 0] = 2, 82  # airplane -> each other class 2%: ranks 3 to 11
    cm[index["automobile"], index["truck"]], cm[index["automobile"], index["automobile"]] = 1, 99  # rank 12: 1%
    result = check_claims(cm.tolist(), classes)
    assert result["applies"] and result["k"] == 10 and result["directed_pairs"] == 90
    by_pair = {(p["a"], p["b"]): p for p in result["pairs"]}
    cat_dog, deer_horse, car_truck = by_pair["cat", "dog"], by_pair["deer", "horse"], by_pair["automobile", "truck"]
    assert (cat_dog["rate_ab"], cat_dog["rank_ab"], cat_dog["rank_ba"]) == (pytest.approx(0.3), 1, None)
    assert (deer_horse["rate_ba"], deer_horse["rank_ba"]) == (pytest.approx(0.05), 2)
    assert (car_truck["rate_ab"], car_truck["rank_ab"]) == (pytest.approx(0.01), 12)
    assert [p["in_top_k"] for p in result["pairs"]] == [True, True, False]
    assert check_claims(cm.tolist(), [f"class{i}" for i in range(10)])["applies"] is False


def test_missing_data_root_says_how_to_point_to_the_data(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("report"))
    config = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.data.source = {"_target_": "cnn_explorer.sources.ImageFolderSource", "root": "no/such/cifar10-jpeg"}
    OmegaConf.save(cfg, config)
    before = snapshot(run_dir)
    assert analyze.main([str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "are not at no/such/cifar10-jpeg (data.source.root in" in err
    assert f"python analyze.py {run_dir} --data-root /path/to/the/data" in err
    assert snapshot(run_dir) == before


def _scored_run(number: int, per_image: list[float], ci95: tuple[float, float], chance: float) -> tuple[dict, dict]:
    run = {"number": number, "label": f"model=m{number}"}
    deletion = {"mean": sum(per_image) / len(per_image), "ci95": list(ci95), "per_image": per_image}
    summary = {
        "attributions": {
            "methods": {"grad_cam": {"title": "Grad-CAM", "deletion": deletion}},
            "random_order": {"deletion": {"mean": chance}},
        }
    }
    return run, summary


def test_comparison_names_the_most_faithful_run_only_where_the_paired_difference_excludes_0() -> None:
    # Run 2 is 0.12 lower on every one of 4 images: every resampled mean difference is -0.12.
    clear = [
        _scored_run(1, [0.32, 0.42, 0.52, 0.42], (0.37, 0.47), 0.53),
        _scored_run(2, [0.20, 0.30, 0.40, 0.30], (0.25, 0.35), 0.55),
    ]
    runs, summaries = zip(*clear, strict=True)
    sentence = _faithfulness_sentence("grad_cam", list(runs), list(summaries))
    assert sentence.startswith("- Grad-CAM: most faithful in #2 (model=m2)")
    # Best first, with the drop below each run's own random order: 0.55 - 0.30 and 0.53 - 0.42.
    assert "#2 0.300 [0.250, 0.350], 0.250 below random; #1 0.420 [0.370, 0.470], 0.110 below random" in sentence
    assert "paired difference #2 minus: #1 -0.120 [-0.120, -0.120]" in sentence

    # The same means, but the per-image differences are +0.08, -0.12, +0.08, -0.12 (mean -0.02): centred near 0.
    mixed = [
        _scored_run(1, [0.32, 0.42, 0.52, 0.42], (0.37, 0.47), 0.53),
        _scored_run(2, [0.40, 0.30, 0.60, 0.30], (0.30, 0.50), 0.55),
    ]
    runs, summaries = zip(*mixed, strict=True)
    sentence = _faithfulness_sentence("grad_cam", list(runs), list(summaries))
    assert sentence.startswith("- Grad-CAM: no run is clearly more faithful (every paired difference's 95% interval")
