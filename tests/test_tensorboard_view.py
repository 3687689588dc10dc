"""TensorBoard screenshots: a real TensorBoard and a headless Chromium on a three-step synthetic run.

The tests that start Chromium skip where none is installed (Debian: ``apt-get install chromium``); together
they take about 30 s on two CPU cores. The argument and input checks run everywhere.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from cnn_explorer.errors import UserError
from tools import tensorboard_view
from tools.tensorboard_view import capture_pages, event_runs, headless_chromium, tensorboard_server

needs_chromium = pytest.mark.skipif(
    tensorboard_view.find_chromium() is None,
    reason="no Chromium on PATH (Debian: apt-get install chromium)",
)

GREEN = (0, 200, 0)  # the image logged at the last step; TensorBoard shows a tag's last step first
RED = (200, 0, 0)  # the image logged at the steps before it


def write_curves_run(run_dir: Path) -> None:
    """Event files like train.py's: the learning curves as one tag in two sub-runs (train, validation), as Keras
    writes them, and five more groups in the run dir, whose names sort after "Curves"."""
    for run, offset in (("train", 0.1), ("validation", 0.0)):
        with SummaryWriter(str(run_dir / run)) as writer:
            for step in range(3):
                writer.add_scalar("Curves/accuracy", 0.3 + 0.2 * step + offset, step)
                writer.add_scalar("Curves/loss", 2.0 - 0.5 * step + offset, step)
    with SummaryWriter(str(run_dir)) as writer:
        for step in range(3):
            for group in ("attributions", "filters", "time", "val", "zeta"):
                writer.add_scalar(f"{group}/value", float(step), step)


def write_run(run_dir: Path) -> None:
    """Event files like train.py's, directly in run_dir: three scalar tags in three groups (time, train, val)
    and one image tag (filters) over three steps."""
    with SummaryWriter(str(run_dir)) as writer:
        for step in range(3):
            writer.add_scalar("train/loss", 2.0 - 0.5 * step, step)
            writer.add_scalar("val/acc", 0.3 + 0.2 * step, step)
            writer.add_scalar("time/epoch_s", 1.0, step)
            colour = GREEN if step == 2 else RED
            image = torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 32, 32)
            writer.add_image("filters/conv1", image, step)


def live_members(group: int) -> list[int]:
    """The processes of process group ``group`` that have not exited (zombies, already dead, are left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        except (OSError, IndexError):  # the process exited while we looked
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_until_gone(group: int, timeout_s: float = 5.0) -> list[int]:
    """Poll until ``group`` has no live member (SIGTERM'd helpers take a moment); return the ones left."""
    deadline = time.monotonic() + timeout_s
    while live_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    return live_members(group)


def pixels_near(png: Path, colour: tuple[int, int, int], tolerance: int = 3) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(colour)) <= tolerance).all(axis=-1).sum())


@needs_chromium
def test_pages_show_the_runs_cards(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    out = tmp_path / "shots"

    shots = capture_pages(tmp_path / "run", out, width=1200, height=800, full_page=True, open_groups=True)

    assert [shot.page for shot in shots] == ["timeseries", "scalars", "images"]  # no text or hparams logged
    for shot in shots:
        assert shot.png == out / f"{shot.page}.png"
        with Image.open(shot.png) as image:
            assert image.size == (1200, shot.height)
            assert shot.height >= 800
            assert np.asarray(image.convert("L"), dtype=np.float32).std() > 10, f"{shot.png} is blank"
    text = {shot.page: shot.text for shot in shots}
    # TensorBoard opens the first two tag groups (filters, time; time, train), the view opens the others.
    assert [(group.name, group.open) for group in text_groups(shots[0])] == [
        ("filters", True), ("time", True), ("train", True), ("val", True)
    ]  # fmt: skip
    for title in ("filters/conv1", "time/epoch_s", "train/loss", "val/acc"):
        assert title in text["timeseries"].splitlines(), title
    assert {"time/epoch_s", "train/loss", "val/acc"} <= set(text["scalars"].splitlines())
    assert "filters/conv1" not in text["scalars"]
    assert "tag: filters/conv1" in text["images"].splitlines()
    assert "step 2" in text["images"].splitlines()
    # The 32 x 32 image is drawn at least at its size: its last step (green) shows, the earlier ones (red) do not.
    assert pixels_near(out / "images.png", GREEN) >= 32 * 32
    assert pixels_near(out / "images.png", RED) == 0


def text_groups(shot: tensorboard_view.PageShot) -> list[tensorboard_view.Group]:
    return [group for group in shot.groups if group.name]  # the Polymer tabs add a nameless search-results group


@needs_chromium
def test_the_default_view_shows_train_and_validation_on_one_chart_on_the_first_screen(tmp_path: Path) -> None:
    write_curves_run(tmp_path / "run")

    shots = capture_pages(tmp_path / "run", tmp_path / "shots")  # the default view: 1280 x 800, no clicks

    timeseries = shots[0]
    assert timeseries.page == "timeseries" and timeseries.height == 800
    with Image.open(timeseries.png) as image:
        assert image.size == (1280, 800)
    # TensorBoard's own choice stands: the first two groups open, the others closed (sorted: capitals first).
    assert [(group.name, group.open) for group in text_groups(timeseries)] == [
        ("Curves", True), ("attributions", True), ("filters", False), ("time", False), ("val", False),
        ("zeta", False),
    ]  # fmt: skip
    # Read from the page, not from pixels: the accuracy chart lies wholly on the first screen, its legend lists
    # both runs, and it draws one line colour per run, each run's own.
    (accuracy,) = [card for card in timeseries.cards if card.title == "Curves/accuracy"]
    assert accuracy.kind == "scalar" and 0 < accuracy.top < accuracy.bottom <= 800
    assert accuracy.runs == ("train", "validation")
    assert len(set(accuracy.run_colours)) == 2 and set(accuracy.line_colours) == set(accuracy.run_colours)
    # The cards of a closed group are not drawn at all.
    assert not [card for card in timeseries.cards if card.title.startswith(("filters/", "zeta/"))]


def test_the_cli_takes_the_default_view_unless_all_groups_are_asked_for() -> None:
    default = tensorboard_view.parse_args(["run", "--out", "shots"])
    assert (default.all_groups, default.full_page, default.width, default.height) == (False, None, 1280, 800)
    assert tensorboard_view.parse_args(["run", "--out", "shots", "--default-view"]).all_groups is False
    assert tensorboard_view.parse_args(["run", "--out", "shots", "--all-groups"]).all_groups is True
    with pytest.raises(SystemExit):  # one view or the other
        tensorboard_view.parse_args(["run", "--out", "shots", "--all-groups", "--default-view"])


@needs_chromium
def test_tensorboard_and_chromium_are_stopped_by_pid_on_an_interrupt(tmp_path: Path) -> None:
    write_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):  # what Ctrl-C raises in the middle of the screenshots
        with headless_chromium() as browser, tensorboard_server(tmp_path) as server:
            assert server.url.startswith("http://127.0.0.1:")
            assert server.runs == (".",)
            assert {"timeseries", "scalars", "images"} <= server.plugins
            # Chromium's zygote, GPU and utility processes share its group, as TensorBoard's data server shares its.
            assert server.pid in live_members(server.pid)
            assert len(live_members(browser.pid)) >= 2
            raise KeyboardInterrupt
    assert wait_until_gone(server.pid) == []
    assert wait_until_gone(browser.pid) == []


def test_event_runs_are_named_as_tensorboard_names_them(tmp_path: Path) -> None:
    for run in ("", "a", "b/c", "empty"):
        (tmp_path / run).mkdir(parents=True, exist_ok=True)
        (tmp_path / run / "events.out.tfevents.1.host.1.0").write_bytes(b"" if run == "empty" else b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.csv").write_text("epoch\n")

    # An empty event file (a writer that never flushed) is not a run TensorBoard lists.
    assert event_runs(tmp_path) == [".", "a", "b/c"]


def test_a_dir_without_event_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no TensorBoard event files with data"):
        event_runs(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        event_runs(tmp_path / "missing")


def test_cli_without_chromium_says_so_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path / "run")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    status = tensorboard_view.main([str(tmp_path / "run"), "--out", str(tmp_path / "shots")])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.startswith("error: Chromium is not installed")
    assert "apt-get install chromium" in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "shots").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--samples-per-plugin", "images"], "--samples-per-plugin must look like"),
        (["--width", "0"], "--width and --height must be"),
        (["--timeout", "-1"], "--timeout must be a positive"),
    ],
)
def test_cli_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    write_run(tmp_path / "run")
    # A Chromium that is never started: the options are checked first.
    argv = [str(tmp_path / "run"), "--out", str(tmp_path / "shots"), "--chromium", "/nonexistent/chromium", *options]

    assert tensorboard_view.main(argv) == 1
    assert message in capsys.readouterr().err


def test_an_unknown_page_is_refused_before_anything_starts(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    with pytest.raises(UserError, match=r"unknown pages \['projector'\]; the pages are timeseries, scalars"):
        capture_pages(tmp_path / "run", tmp_path / "shots", pages=["timeseries", "projector"], chromium="/nonexistent")
    assert not (tmp_path / "shots").exists()
