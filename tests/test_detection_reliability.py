"""The classification half's reliability promises, kept by task=detection (issue 19): a stopped run resumes as if
never stopped, SIGTERM leaves a resumable last.ckpt and exit status 143, bad data is refused with one message and
no run dir left behind, and a doctored detection run dir is refused by analyze.py with nothing run or written.

Each run is train.py or analyze.py in a subprocess, as a user runs them, on 24 synthetic images (tests/conftest.py).
"""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnn_explorer.detection.sources import CocoJsonSource, PennFudanSource, VocFolderSource
from cnn_explorer.errors import UserError
from tests.conftest import ROOT, TINY_DETECTION, run_cli, tree_snapshot
from tests.test_reliability import Marker
from tests.test_resume_and_signals import assert_same_run, last_state, signal_at, status
from tests.test_untrusted_run_dir import edit_config

# Two epochs of two steps (limit_train_batches=2 of TINY_DETECTION), no test and no view: what resuming must restore
# is the training (weights, optimizer, RNG, the DataModule's place, the running losses), which the views only read.
RUN = [*TINY_DETECTION, "trainer.max_epochs=2", "test=false", "threads=1", "~callbacks.detections"]
STEPS_PER_EPOCH = 2
BATCH = 4  # data.batch_size of conf/data/synthetic_detection.yaml


def train_py(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, cwd=cwd)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train_py(*RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# --- resume and SIGTERM ---------------------------------------------------------------------------------------------


def test_sigterm_mid_epoch_exits_143_with_a_last_ckpt_that_resumes_exactly(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    step = STEPS_PER_EPOCH + 1  # the first step of epoch 1
    stopped = train_py(*RUN, *signal_at(step, "SIGTERM"), f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
    assert status(run_dir) == "interrupted"
    state = last_state(run_dir)
    assert state["global_step"] == step  # the state at the last finished step, mid-epoch
    # The cut epoch's running loss is in the checkpoint: one batch of 4 images summed so far.
    assert state["state_dict"]["train_losses.loss.weight"].item() == BATCH

    resumed = train_py(*RUN, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status(run_dir) == "completed"
    assert_same_run(uninterrupted, run_dir)  # weights, step and every logged value (train/loss of epoch 1 included)


@pytest.mark.slow  # two more train.py runs, ~30 s
def test_kill_9_after_an_epoch_then_resume_from_last_ckpt_ends_as_if_never_killed(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    killed = train_py(*RUN, *signal_at(STEPS_PER_EPOCH + 1, "SIGKILL"), f"hydra.run.dir={run_dir}")
    assert killed.returncode == -signal.SIGKILL
    assert last_state(run_dir)["global_step"] == STEPS_PER_EPOCH  # epoch 0's last.ckpt, nothing after it
    resumed = train_py(*RUN, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(uninterrupted, run_dir)


# --- bad input ------------------------------------------------------------------------------------------------------


def write_coco(folder: Path, boxes: list[list[float]], files: int = 3, size: int = 64) -> Path:
    """``files`` grey ``size`` px PNGs in ``folder/images`` and a COCO JSON with one person per image, image i's
    box ``boxes[i]`` (``[x, y, w, h]``)."""
    (folder / "images").mkdir(parents=True)
    for i in range(files):
        Image.new("RGB", (size, size), (100, 100, 100)).save(folder / "images" / f"{i}.png")
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in range(len(boxes))],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for i, box in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    (folder / "coco.json").write_text(json.dumps(coco))
    return folder / "coco.json"


def refused_without_a_run_dir(tmp_path: Path, message: str, *overrides: str) -> None:
    before = tree_snapshot(tmp_path)
    result = train_py("task=detection", *overrides, f"hydra.run.dir={tmp_path / 'runs' / 'run'}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count(message) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert tree_snapshot(tmp_path) == before  # no run dir, nor the folder made above it


def test_train_py_refuses_a_missing_pennfudan_root_and_leaves_no_run_dir(tmp_path):
    missing = tmp_path / "nowhere"
    refused_without_a_run_dir(tmp_path, f"data.source.root {missing} is not a folder", f"data.source.root={missing}")


def test_train_py_refuses_a_coco_box_outside_its_image_and_leaves_no_run_dir(tmp_path):
    # Image 1's box x = 50, w = 30 ends at x2 = 80, past the 64 px image.
    annotations = write_coco(tmp_path / "data", [[4, 4, 20, 30], [50, 10, 30, 20], [8, 8, 16, 16]])
    message = "image 1.png: object 0's box (x1, y1, x2, y2) = (50, 10, 80, 30) is not inside the 64 x 64 image"
    data = ["data=detection_folder", f"data.source.images={tmp_path / 'data' / 'images'}"]
    data += [f"data.source.annotations={annotations}", "data.num_classes=1", "data.val_size=1", "data.test_size=1"]
    refused_without_a_run_dir(tmp_path, message, *data, "data.min_size=64", "data.max_size=64")


@pytest.mark.parametrize(
    ("boxes", "files", "message"),
    [
        ([[0, 0, 10, 10], [5, 5, 0, 8]], 2, r"image 1.png: object 0's box .* = \(5, 5, 5, 13\) is not inside"),
        ([[0, 0, 10, 10], [-2, 5, 10, 8]], 2, r"= \(-2, 5, 8, 13\) is not inside the 64 x 64 image"),
        ([[0, 0, 10, 10], [5, 5, 10, 8]], 1, "names the image 1.png, which is not in data.source.images="),
    ],
    ids=["zero-width", "negative-x", "missing-file"],
)
def test_coco_boxes_outside_or_of_no_size_and_missing_files_are_refused(tmp_path, boxes, files, message):
    annotations = write_coco(tmp_path, boxes, files=files)
    with pytest.raises(UserError, match=message):
        CocoJsonSource(str(tmp_path / "images"), str(annotations)).load()


def test_a_file_that_is_not_coco_json_is_refused_naming_it(tmp_path):
    write_coco(tmp_path, [[0, 0, 10, 10]])
    (tmp_path / "coco.json").write_text("{not json")
    with pytest.raises(UserError, match=r"coco.json is not a COCO detection file \(JSONDecodeError"):
        CocoJsonSource(str(tmp_path / "images"), str(tmp_path / "coco.json")).load()
    (tmp_path / "coco.json").write_text(
        json.dumps(
            {
                "images": [{"id": 0, "file_name": "0.png"}],
                "annotations": [{"id": 0, "image_id": 0, "category_id": 1}],
                "categories": [{"id": 1, "name": "person"}],
            }
        )
    )
    with pytest.raises(UserError, match=r"is not a COCO detection file \(KeyError: 'bbox'\)"):  # no box
        CocoJsonSource(str(tmp_path / "images"), str(tmp_path / "coco.json")).load()


def test_a_voc_box_outside_its_image_and_a_broken_xml_are_refused(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "JPEGImages" / "a.jpg")
    box = "<bndbox><xmin>11</xmin><ymin>6</ymin><xmax>51</xmax><ymax>20</ymax></bndbox>"  # xmax 51 > 50
    (tmp_path / "Annotations" / "a.xml").write_text(f"<annotation><object><name>cat</name>{box}</object></annotation>")
    with pytest.raises(UserError, match=r"a.xml: object 0's box .* = \(10, 5, 51, 20\) is not inside the 50 x 40"):
        VocFolderSource(str(tmp_path)).load()
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match="a.xml is not a Pascal-VOC annotation"):
        VocFolderSource(str(tmp_path)).load()


def write_pennfudan(root: Path) -> None:
    """One Penn-Fudan image of 40 x 30 px with one pedestrian at columns 5..14, rows 3..22 (annotation 6..15,
    4..23: 1-based inclusive)."""
    for folder in ("images", "masks", "annotations"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "images" / "P1.png")
    mask = Image.new("L", (40, 30))
    mask.paste(1, (5, 3, 15, 23))
    mask.save(root / "masks" / "P1_mask.png")
    (root / "annotations" / "P1.txt").write_text('Bounding box for object 1 "PASperson" : (6, 4) - (15, 23)\n')


def test_a_pennfudan_folder_reads_and_its_broken_files_are_refused_naming_each(tmp_path):
    write_pennfudan(tmp_path)
    (sample,) = PennFudanSource(str(tmp_path)).load().samples
    assert sample.boxes.tolist() == [[5.0, 3.0, 15.0, 23.0]]  # the mask's box, equal to the annotated one

    (tmp_path / "masks" / "P1_mask.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read the mask .*P1_mask.png"):
        PennFudanSource(str(tmp_path)).load()
    Image.new("L", (40, 30)).save(tmp_path / "masks" / "P1_mask.png")  # no pedestrian in it
    with pytest.raises(UserError, match="P1_mask.png is not P1.png's instance mask: .* 0 pedestrians"):
        PennFudanSource(str(tmp_path)).load()
    (tmp_path / "masks" / "P1_mask.png").unlink()
    with pytest.raises(UserError, match="P1_mask.png is missing"):
        PennFudanSource(str(tmp_path)).load()
    write_pennfudan(tmp_path / "again")  # whole again, but for its image
    (tmp_path / "again" / "images" / "P1.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(UserError, match="cannot read the image .*P1.png"):
        PennFudanSource(str(tmp_path / "again")).load()


# --- untrusted run dirs ---------------------------------------------------------------------------------------------


def analyze_refuses(run_dir: Path, tmp_path: Path, message: str) -> None:
    before = tree_snapshot(tmp_path)
    result = run_cli("analyze.py", str(run_dir), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert tree_snapshot(tmp_path) == before  # no report, no temp folder, nothing changed


@pytest.fixture
def run_copy(uninterrupted, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(uninterrupted, copy, ignore=shutil.ignore_patterns("report"))
    return copy


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.net._target_", "os.system", "names _target_ 'os.system', which analyze.py does not build"),
        ("model.net.fpn_channels", 64, "does not fit the net described by"),
        ("data.source.num_images", "${oc.env:HOME}", "data.source.num_images calls the resolver 'oc.env'"),
    ],
    ids=["target", "fpn-width", "resolver"],
)
def test_analyze_refuses_a_doctored_detection_config(run_copy, tmp_path, key, value, message):
    edit_config(run_copy, key, value)
    analyze_refuses(run_copy, tmp_path, message)


@pytest.mark.parametrize("damage", ["pickled-code", "truncated"])
def test_analyze_refuses_a_doctored_detection_checkpoint_and_runs_nothing(run_copy, tmp_path, damage):
    marker = tmp_path / "PWNED"
    (best,) = (run_copy / "checkpoints").glob("epoch*-val_map*.ckpt")
    if damage == "pickled-code":
        torch.save({"state_dict": {}, "epoch": 0, "payload": Marker(marker)}, best)
        message = "holds Python objects other than tensors and plain data"
    else:
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
        message = f"cannot read checkpoint {best}: it is truncated or corrupt"
    analyze_refuses(run_copy, tmp_path, message)
    assert not marker.exists()


def test_a_detection_run_naming_a_backbone_run_dir_is_rebuilt_without_reading_it(run_copy, tmp_path):
    """The backbone run dir is read when training starts; a rebuilt run takes every weight from its own checkpoint,
    so analyze.py never opens a path a run dir's config names (here one that does not exist)."""
    from cnn_explorer.report.detection_report import read_detection_run
    from cnn_explorer.rundir import load_net

    edit_config(run_copy, "model.net.backbone_run_dir", str(tmp_path / "nowhere"))
    run = read_detection_run(run_copy)
    net = load_net(run.config, run.checkpoint)
    saved = torch.load(run.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[f"net.{key}"]) for key, value in net.state_dict().items())


def test_pickle_marker_would_leave_its_mark(tmp_path):
    """The payload of the checkpoint case does run when unpickled unsafely: its absence there is the loader's doing."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Marker(marker)))
    assert marker.exists()
