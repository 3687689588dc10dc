"""Every view and report section at image sizes and channel counts other than CIFAR-10's 32 px RGB, and class
names the figures' font cannot draw (issue 17, items 7 and 13).

As a user finds them: an ImageFolder of PNG files in tmp_path, train.py with every view (the default callbacks)
and analyze.py as subprocesses; then what they drew.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.text import Text
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnn_explorer.interpret.attribution import METHODS
from cnn_explorer.render.cards import CARD_BOX, confusion_card, mistakes_card
from cnn_explorer.render.figures import confusion_matrix_figure, figure_to_image, mistakes_figure
from cnn_explorer.render.fonts import figure_names, missing_glyphs, undrawable_note
from tests.conftest import TINY, run_cli

CAT = "猫"  # a CJK class name: DejaVu Sans, matplotlib's own font, has no glyph for it
FAST_METHODS = ["gradient", "grad_cam"]  # ANALYZE_FAST's: one gradient method, one CAM
ANALYZE_FAST_5 = ["--methods", *FAST_METHODS, "--faithfulness-images", "5"]  # ANALYZE_FAST, one image per class
TOFU = re.compile(r"Glyph \d+ .* missing from font")  # matplotlib's warning when it draws a box for a character


def image_folder(root: Path, classes: list[str], size: int, channels: int, per_class: int) -> Path:
    """``root/{train,test}/<class>/<i>.png``: noise with a bright vertical band whose position is the class."""
    rng = np.random.default_rng(0)
    band = size // len(classes)
    for split, count in (("train", per_class), ("test", max(2, per_class // 3))):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[:, label * band : (label + 1) * band] += 150
                Image.fromarray(pixels).convert("L" if channels == 1 else "RGB").save(folder / f"{i}.png")
    return root


def data_overrides(root: Path, classes: list[str], size: int, channels: int) -> list[str]:
    """The README's ImageFolder example for this folder, on the synthetic data's tiny run settings."""
    mean, std = ",".join(["0.5"] * channels), ",".join(["0.25"] * channels)
    return [
        *(o for o in TINY if not o.startswith("data")),
        "data=cifar10_folder",
        f"data.source.root={root}",
        "data.source.cache_dir=null",
        f"data.num_classes={len(classes)}",
        f"data.image_size={size}",
        f"data.channels={channels}",
        f"data.mean=[{mean}]",
        f"data.std=[{std}]",
        f"data.val_size={2 * len(classes)}",
        "data.batch_size=16",
        "callbacks.features.probe_images=100",
        "callbacks.features.projector_per_class=2",
    ]


def train_and_analyze(
    tmp_path: Path, classes: list[str], size: int, channels: int, methods: list[str], analyze: list[str]
) -> Path:
    """Train one epoch with every view (``methods`` in the attribution views) on a fresh ImageFolder, then analyze
    it: the run dir."""
    root = image_folder(tmp_path / "data", classes, size, channels, per_class=12)
    run_dir = tmp_path / "run"
    overrides = [
        *data_overrides(root, classes, size, channels),
        f"callbacks.attributions.methods=[{','.join(methods)}]",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
    ]
    trained = run_cli("train.py", *overrides, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert not TOFU.search(trained.stderr), "a TensorBoard card drew a box for a character"
    analyzed = run_cli("analyze.py", str(run_dir), *analyze, cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert not TOFU.search(analyzed.stderr), "a report figure drew a box for a character"
    return run_dir


def assert_cards_fit(run_dir: Path) -> None:
    """Every TensorBoard image shows at half its size or more in TensorBoard's card, and is not blank."""
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Tags()["images"]) > 10
    for tag in events.Tags()["images"]:
        image = events.Images(tag)[-1]
        assert min(CARD_BOX[0] / image.width, CARD_BOX[1] / image.height) >= 0.5, (tag, image.width, image.height)
        assert np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("L")).std() > 10, tag


def assert_report_complete(run_dir: Path, classes: list[str], channels: int) -> None:
    """Every section's figures exist and show something; grayscale runs make no colour claims."""
    report = run_dir / "report"
    text = (report / "report.md").read_text()
    for png in re.findall(r"\]\(([^)]+\.png)\)", text):
        pixels = np.asarray(Image.open(report / png).convert("L"))
        assert pixels.std() > 1, f"{png} is blank"
    metrics = json.loads((report / "metrics.json").read_text())
    claims = [c["claim"] for c in metrics["features"]["claims"]]
    assert ("first-layer filters learn colour contrasts" in claims) == (channels == 3)
    if channels == 1:
        assert "one grayscale channel" in text and "there is no colour to measure" in text
    assert metrics["run"]["classes"] == classes  # text keeps the real names


def test_a_grayscale_40px_image_folder_with_a_cjk_class_trains_and_analyzes(tmp_path):
    # Like the README's own example (1 channel, 64 px, 5 classes: the slow test below), which crashed analyze.py's
    # class visualization at any size but 32 px, with one class named in CJK, which drew as boxes in the confusion
    # matrix. 40 px keeps it fast.
    classes = ["bird", "cat", "dog", "frog", CAT]
    run_dir = train_and_analyze(tmp_path, classes, 40, 1, FAST_METHODS, ANALYZE_FAST_5)
    assert_report_complete(run_dir, classes, channels=1)
    assert_cards_fit(run_dir)
    text = (run_dir / "report" / "report.md").read_text()
    if missing_glyphs(CAT):  # no CJK font installed: the figures say class 4, and the report says why
        assert f"class 4 = {CAT}" in text and "fonts-noto-cjk" in text
    else:
        assert "figures show these classes by index" not in text


@pytest.mark.slow  # every attribution method in the views and the report: about a minute each on two cores
@pytest.mark.parametrize(("size", "channels"), [(64, 1), (36, 3)])  # the README's example; RGB, not a power of 2
def test_every_method_and_section_at_other_sizes(tmp_path, size, channels):
    classes = ["a", "b", "c", "d"]
    # Every method (analyze.py's default), as their report sections differ by method.
    run_dir = train_and_analyze(tmp_path, classes, size, channels, list(METHODS), ["--faithfulness-images", "8"])
    assert_report_complete(run_dir, classes, channels)
    assert_cards_fit(run_dir)


def drawn_texts(fig) -> list[str]:
    """Every text the figure draws (titles, tick labels, cell labels), after drawing it."""
    figure_to_image(fig)
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def test_a_class_name_without_glyphs_is_drawn_by_index_in_every_figure_with_class_names():
    names = ["airplane", CAT, "dog"]
    cm = torch.tensor([[3, 1, 0], [0, 4, 1], [2, 0, 2]])
    images = torch.zeros(2, 1, 40, 40, dtype=torch.uint8)
    true, pred, confidence = torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0.9, 0.6])
    shown = figure_names(names)
    figures = [
        confusion_matrix_figure(cm, shown, "test"),
        confusion_card(cm, shown, "val"),
        mistakes_figure(images, true, pred, confidence, shown),
        mistakes_card(images, true, pred, confidence, shown, "val"),
    ]
    for fig in figures:
        assert all(missing_glyphs(text) == "" for text in drawn_texts(fig))
    if missing_glyphs(CAT):
        assert shown == ["airplane", "class 1", "dog"]
        assert undrawable_note(names).startswith(f"No installed font draws '{CAT}'")
    else:
        assert shown == names and undrawable_note(names) == ""
    assert figure_names(["cat", "chien", "Ärger"]) == ["cat", "chien", "Ärger"]  # Latin-1 is drawn as is


def test_a_confusion_card_of_few_classes_is_as_wide_as_its_title():
    title = "test confusion (tested checkpoint): acc 40.0%"
    fig = confusion_card(torch.eye(3, dtype=torch.long), ["a", "b", "c"], title)
    figure_to_image(fig)
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    for text in fig.findobj(Text):
        if text.get_text():
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= width, f"{text.get_text()!r} is cut off"
