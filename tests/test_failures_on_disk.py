"""train.py when the disk and the folders it is given misbehave (issue 17, items 12 and 13): a full disk, a data
error in an explicit ``hydra.run.dir``, a hidden folder among the classes. Each as a user meets it, through the CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cnn_explorer.run_status import STATUS_FILE, read_status, write_status
from tests.conftest import TINY_MINIMAL, run_cli, tree_snapshot, write_image_folder

SHORT = [*(o for o in TINY_MINIMAL if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=1"]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: the default net's initial weights (2.4 MB) fit, its first checkpoint does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_gives_one_message_a_failed_status_and_no_partial_file(full_disk):
    run_dir = full_disk / "run"
    result = run_cli("train.py", *SHORT, f"hydra.run.dir={run_dir}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    message = f"no space left on the device that holds the run dir {run_dir}: free some space there"
    assert result.stderr.count(message) == 1 and "hydra.run.dir=" in result.stderr
    status = read_status(run_dir)
    assert status["status"] == "failed" and status["message"].startswith(message)
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("tmp*"))
    for checkpoint in run_dir.glob("checkpoints/*.ckpt"):  # the one cut short is gone; any other one is whole
        torch.load(checkpoint, map_location="cpu", weights_only=True)


def test_a_status_that_cannot_be_written_leaves_the_old_one_and_no_temp_file(full_disk):
    write_status(full_disk, "running")
    before = (full_disk / STATUS_FILE).read_bytes()
    with pytest.raises(OSError), open(full_disk / "filler", "wb") as filler:
        while True:  # fill the disk to the last byte
            filler.write(b"\0" * 65536)
    with pytest.raises(OSError, match="No space left"):
        write_status(full_disk, "failed", "a message much longer than nothing " * 100)
    assert (full_disk / STATUS_FILE).read_bytes() == before
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", STATUS_FILE]


def assert_refused_for_missing_data(run_dir: Path, tmp_path: Path) -> None:
    """train.py with a data root that does not exist and ``hydra.run.dir=run_dir``: one message, exit 1."""
    result = run_cli(
        "train.py",
        "data=cifar10_folder",
        f"data.source.root={tmp_path / 'missing'}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("is not an ImageFolder dataset") == 1


def test_a_data_error_removes_the_explicit_run_dir_it_made(tmp_path):
    before = tree_snapshot(tmp_path)
    assert_refused_for_missing_data(tmp_path / "new" / "run", tmp_path)
    assert tree_snapshot(tmp_path) == before  # no run dir, nor the folder made above it


def test_a_data_error_in_an_existing_folder_removes_only_what_the_run_added(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    before = tree_snapshot(tmp_path)
    assert_refused_for_missing_data(folder, tmp_path)
    assert tree_snapshot(tmp_path) == before


def test_hidden_folders_and_files_are_no_classes_and_no_images(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, [f"c{label}" for label in range(10)], per_class=4)
    for split in ("train", "test"):
        (data / split / ".git" / "objects").mkdir(parents=True)  # a dataset kept in git
        (data / split / "c0" / "._0.png").write_bytes(b"macOS metadata, not pixels")
    run_dir = tmp_path / "run"
    overrides = [o for o in SHORT if not o.startswith("data")]
    result = run_cli(
        "train.py",
        *overrides,
        "data=cifar10_folder",
        f"data.source.root={data}",
        "data.source.cache_dir=null",
        "data.val_size=10",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / STATUS_FILE).read_text())["status"] == "completed"
