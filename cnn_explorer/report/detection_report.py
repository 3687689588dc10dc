"""The report of a finished detection run (``task=detection``): read the run -> evaluate -> figures and sentences ->
write atomically, as :mod:`cnn_explorer.report.run_report` does for a classifier.

Writes ``<run dir>/report/``: ``report.md``, ``metrics.json`` (every number the text states) and PNGs: the
precision-recall curve, ground truth against predictions on test images, the most confident false positives, the
missed objects. The net is rebuilt from the run's saved config through the allowlist and the best checkpoint (the
highest val_map in its file name) is loaded with ``weights_only=True``; the run dir is only read.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cnn_explorer.config import CHECKPOINT_DIR, resume_command
from cnn_explorer.detection.analysis import (
    THRESHOLDS,
    DetectionMatches,
    confident_false_positives,
    match_detections,
    missed_objects,
    precision_recall,
    threshold_table,
)
from cnn_explorer.detection.data import DetectionDataModule, Target
from cnn_explorer.detection.module import MAP_KEYS, mean_average_precision
from cnn_explorer.errors import UserError
from cnn_explorer.evaluate import EvaluationOptions, load_datamodule, pick_device
from cnn_explorer.interpret.detection.checks import MATCH_IOU, checks_markdown, explanation_checks
from cnn_explorer.output_dir import check_replaceable, replacing_dir
from cnn_explorer.render.boxes import (
    BoxesOnImage,
    detections_figure,
    legend,
    precision_recall_figure,
    threshold_markdown,
)
from cnn_explorer.render.detection_maps import checks_figure
from cnn_explorer.render.figures import save_png
from cnn_explorer.report.markdown import figure, num, pct, table
from cnn_explorer.report.metrics_json import nan_to_none, write_metrics
from cnn_explorer.report.run_report import METRICS_FILE, REPORT_DIR, REPORT_FILE  # one layout for both reports
from cnn_explorer.run_status import describe, read_status
from cnn_explorer.rundir import MetricsLog, load_net, load_run_config, read_metrics, run_overrides

# ModelCheckpoint's filename in conf/callbacks/detection.yaml: "epoch{epoch:03d}-val_map{val/map:.4f}".
BEST_DETECTION_CHECKPOINT = re.compile(r"^epoch(?P<epoch>\d+)-val_map(?P<val_map>\d+(?:\.\d+)?)\.ckpt$")
SCORE_THRESHOLD = 0.5  # the operating point of the pictures and the sentences
SHOWN = 6  # images per figure
PR_FIGURE, TEST_FIGURE = "precision_recall.png", "test_detections.png"
FALSE_POSITIVES_FIGURE, MISSED_FIGURE = "false_positives.png", "missed_objects.png"
EXPLANATIONS_FIGURE = "explanations.png"
EXPLAINED_OBJECTS = 4  # D-RISE costs ~2.5 CPU-minutes per object and cascade step on Penn-Fudan (see checks.py)
DRISE_MASKS = 100
MAP_NAMES = {
    "map": "mAP@[.5:.95] (COCO's primary)",
    "map_50": "mAP@.5",
    "map_75": "mAP@.75",
    "map_small": "AP small (< 32² px)",
    "map_medium": "AP medium (32²-96² px)",
    "map_large": "AP large (> 96² px)",
    "mar_100": "recall, 100 detections per image",
}


@dataclass(frozen=True)
class DetectionRun:
    """A detection run dir, read: its config, best checkpoint (by val_map in the file name) and metrics."""

    dir: Path
    config: DictConfig
    checkpoint: Path
    epoch: int
    val_map: float
    metrics: MetricsLog
    overrides: list[str]
    status: dict[str, Any] | None


def read_detection_run(run_dir: Path) -> DetectionRun:
    """Read a detection run dir (nothing is written).

    Raises:
        UserError: if it is not a run dir, not of ``task=detection``, or has no best checkpoint or metrics.
    """
    run_dir = run_dir.resolve()
    config = load_run_config(run_dir)
    if config.get("task") != "detection":
        raise UserError(f"{run_dir} is a {config.get('task', 'classification')} run, not task=detection")
    folder = run_dir / CHECKPOINT_DIR
    found = [
        (float(m["val_map"]), -int(m["epoch"]), path)
        for path in sorted(folder.glob("epoch*.ckpt"))
        if (m := BEST_DETECTION_CHECKPOINT.match(path.name))
    ]
    if not found:
        last = folder / "last.ckpt"
        fix = f"resume it: {resume_command(last)}" if last.is_file() else "train it again"
        raise UserError(
            f"{run_dir} has no best checkpoint: {folder} holds no epochNNN-val_mapX.XXXX.ckpt file (ModelCheckpoint "
            f"writes one after each improving validation); {fix}."
        )
    val_map, neg_epoch, path = max(found)  # ties: the earlier epoch, as ModelCheckpoint keeps its first best
    return DetectionRun(
        run_dir, config, path, -neg_epoch, val_map, read_metrics(run_dir), run_overrides(run_dir), read_status(run_dir)
    )


def predict_detections(
    net: nn.Module, datamodule: DetectionDataModule, batch_size: int
) -> tuple[list[Target], list[Target]]:
    """The net's detections on the test split (eval mode, no gradients, the DataModule's own test transform) and
    the test targets, both on the CPU."""
    device = next(net.parameters()).device
    net.eval()
    images, targets = datamodule.test_images, datamodule.test_targets
    predictions: list[Target] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = (
                [image.to(device) for image in images[start : start + batch_size]],
                targets[start : start + batch_size],
            )
            inputs, _ = datamodule.prepare_batch(batch, train=False)
            predictions += [{k: v.cpu() for k, v in out.items()} for out in net(inputs)]
    return predictions, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]


def is_detection_run(run_dir: Path) -> bool:
    """Whether ``run_dir``'s saved config is of ``task=detection`` (analyze.py picks the report by it).

    Raises:
        UserError: as :func:`~cnn_explorer.rundir.load_run_config` (not a run dir, an unreadable config).
    """
    return load_run_config(run_dir.resolve()).get("task") == "detection"


def write_detection_report(
    run_dir: Path,
    out: Path | None = None,
    options: EvaluationOptions | None = None,
    explained_objects: int = EXPLAINED_OBJECTS,
    drise_masks: int = DRISE_MASKS,
) -> Path:
    """Evaluate the detection run's best checkpoint on its test split and write ``<run_dir>/report/`` (or ``out``);
    returns that folder.

    ``explained_objects``: how many found test objects (the first in test order) the explanation checks explain
    (:func:`~cnn_explorer.interpret.detection.checks.explanation_checks`, ``drise_masks`` D-RISE masks each); 0: none.

    Raises:
        UserError: naming the path and the problem (not a detection run dir, no or unreadable checkpoint, one that
            does not fit the config, missing metrics or data, a report folder holding files analyze.py did not
            write); the run dir is then as it was.
    """
    options = options or EvaluationOptions()
    run = read_detection_run(run_dir)
    target = out if out is not None else run.dir / REPORT_DIR
    check_replaceable(target)  # now, not after minutes of evaluation
    device = pick_device(options.device)
    net = load_net(run.config, run.checkpoint).to(device)
    datamodule = load_datamodule(run.config, options.data_root, DetectionDataModule)
    predictions, targets = predict_detections(net, datamodule, min(options.batch_size, datamodule.eval_batch_size))

    metric = mean_average_precision()
    metric.update(predictions, targets)
    coco = {key: float(value) for key, value in metric.compute().items() if key in MAP_KEYS}
    matches = match_detections(predictions, targets)
    curve = precision_recall(matches)
    names = list(datamodule.test_names)
    summary = nan_to_none(_numbers(run, datamodule, net, coco, matches, curve.average_precision))
    figures = {
        PR_FIGURE: precision_recall_figure(
            curve.recall,
            curve.precision,
            curve.scores,
            curve.average_precision,
            THRESHOLDS,
            f"test split ({matches.num_images} images, {matches.num_objects} objects)",
        ),
        TEST_FIGURE: detections_figure(
            [_image_item(datamodule, predictions, matches, i, names[i]) for i in range(min(SHOWN, len(names)))],
            "Test images: ground truth and predictions",
            legend(SCORE_THRESHOLD),
        ),
        FALSE_POSITIVES_FIGURE: detections_figure(
            [_false_positive_item(datamodule, matches, int(d), names) for d in summary["false_positives"]["shown"]],
            "The most confident false positives",
            "cyan: ground truth; orange: the false positive",
        ),
        MISSED_FIGURE: detections_figure(
            [_missed_item(datamodule, predictions, matches, int(g), names) for g in summary["missed"]["shown"]],
            f"Objects missed at score >= {SCORE_THRESHOLD:g}",
            f"cyan: the missed object; orange: predictions scored >= {SCORE_THRESHOLD:g}",
        ),
    }
    explained, explanation_figures = explanation_section(net, datamodule, matches, explained_objects, drise_masks)
    summary["explanations"] = nan_to_none(explained)
    figures |= explanation_figures
    summary["figures"] = list(figures)
    markdown = render_markdown(summary)
    with replacing_dir(target) as folder:
        for name, fig in figures.items():
            save_png(fig, folder / name)
        write_metrics(folder / METRICS_FILE, summary)
        (folder / REPORT_FILE).write_text(markdown)
    return target


def _numbers(
    run: DetectionRun,
    datamodule: DetectionDataModule,
    net: nn.Module,
    coco: dict[str, float],
    matches: DetectionMatches,
    ap_50: float,
) -> dict[str, Any]:
    ended, how = describe(run.status, run.dir)
    val_map = [v for v in run.metrics.get("val/map") if not math.isnan(v)]
    seconds = [s for s in run.metrics.get("time/epoch_s") if not math.isnan(s)]
    found = matches.found(SCORE_THRESHOLD)
    heights = matches.gt_box[:, 3] - matches.gt_box[:, 1]
    false_positives = confident_false_positives(matches, SHOWN)
    missed = missed_objects(matches, SCORE_THRESHOLD)
    names = list(datamodule.test_names)
    return {
        "run": {
            "name": run.dir.name,
            "checkpoint": {"file": str(run.checkpoint.relative_to(run.dir)), "epoch": run.epoch},
            "net": {"class": type(net).__name__, "parameters": sum(p.numel() for p in net.parameters())},
            "classes": list(datamodule.classes),
            "overrides": run.overrides,
            "ended": ended,
            "how_it_ended": how,
            # analyze.py prints these (as for a classification report's "run" entry)
            "warnings": ([] if ended else ["the run did not finish; the report covers its best checkpoint so far."])
            + [f"{path.name}: its last line was cut off and was left out." for path in run.metrics.cut_lines],
            "epochs": len(run.metrics.epochs),
            "best_val_map": max(val_map) if val_map else None,
            "sec_per_epoch": statistics.median(seconds) if seconds else None,
        },
        "test": {
            "images": matches.num_images,
            "objects": matches.num_objects,
            "coco": coco,
            "logged": {key: run.metrics.test.get(f"test/{key}") for key in MAP_KEYS},
            "ap_50_matching": ap_50,
        },
        "thresholds": [row.__dict__ for row in threshold_table(matches)],
        "operating_point": {
            "score_threshold": SCORE_THRESHOLD,
            "found": int(found.sum()),
            "median_height_found": _median(heights[found]),
            "median_height_missed": _median(heights[~found]),
        },
        "false_positives": {
            "count": int((~matches.det_true & (matches.det_score >= SCORE_THRESHOLD)).sum()),
            "shown": false_positives.tolist(),
            "items": [
                {
                    "image": names[int(matches.det_image[d])],
                    "score": float(matches.det_score[d]),
                    "iou": float(matches.det_iou[d]),
                    "kind": _false_positive_kind(float(matches.det_iou[d]), matches.iou_threshold),
                }
                for d in false_positives.tolist()
            ],
        },
        "missed": {
            "count": len(missed),
            "shown": missed[:SHOWN].tolist(),
            "items": [
                {
                    "image": names[int(matches.gt_image[g])],
                    "height_px": float(heights[g]),
                    "best_iou": float(matches.gt_best_iou[g]),
                    "matched_score": float(matches.gt_score[g]),
                }
                for g in missed[:SHOWN].tolist()
            ],
        },
    }


def explanation_section(
    net: nn.Module, datamodule: DetectionDataModule, matches: DetectionMatches, objects: int, drise_masks: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The explanation checks of the first ``objects`` test objects some detection finds (IoU >= 0.5), on the
    images holding them: their numbers and Markdown (``{"skipped": reason}`` when there is nothing to explain) and
    the figure of their maps."""
    if objects < 1:
        return {"skipped": "not asked for (0 objects to explain)"}, {}
    if any("masks" not in t for t in datamodule.test_targets):
        return {"skipped": "the data have no instance masks, which the localization check needs"}, {}
    found = (matches.gt_best_iou >= MATCH_IOU).nonzero().squeeze(1)[:objects]  # any score, as the checks match
    if not len(found):
        return {"skipped": "no test object is found by a detection (IoU >= 0.5): there is nothing to explain"}, {}
    chosen = sorted({int(matches.gt_image[g]) for g in found})
    device = next(net.parameters()).device
    batch = ([datamodule.test_images[i].to(device) for i in chosen], [datamodule.test_targets[i] for i in chosen])
    images, targets = datamodule.prepare_batch(batch, train=False)
    targets = [{k: t[k].to(device) for k in ("boxes", "labels", "masks")} for t in targets]
    checks = explanation_checks(net, images, targets, masks_per_image=drise_masks, max_objects=objects)
    methods = {
        name: {
            "share": float(result.share.mean()),
            "chance": float(result.chance.mean()),
            "localizes": result.localizes,
            "deletion_auc": float(result.deletion_auc.mean()),
            "insertion_auc": float(result.insertion_auc.mean()),
            "seconds": result.seconds,
        }
        for name, result in checks.methods.items()
    }
    numbers = {"objects": len(checks.objects), "images": len(chosen), "methods": methods}
    numbers["markdown"] = checks_markdown(checks)
    return numbers, {EXPLANATIONS_FIGURE: checks_figure(checks)}


def _median(values: Tensor) -> float | None:
    return float(values.median()) if len(values) else None  # torch: the lower middle value for an even count


def _false_positive_kind(iou: float, threshold: float) -> str:
    """Why a detection is false: a second box on a found object, a box off its object, or one on background."""
    if iou >= threshold:
        return "duplicate"  # overlaps an object enough, but a higher-scored box took it
    return "misplaced" if iou >= 0.1 else "background"


def _image_item(
    datamodule: DetectionDataModule, predictions: list[Target], matches: DetectionMatches, i: int, name: str
) -> BoxesOnImage:
    keep = predictions[i]["scores"] >= SCORE_THRESHOLD
    truth = datamodule.test_targets[i]["boxes"]
    hits = int(matches.found(SCORE_THRESHOLD)[matches.gt_image == i].sum())
    return BoxesOnImage(
        datamodule.test_images[i],
        truth,
        predictions[i]["boxes"][keep],
        predictions[i]["scores"][keep],
        f"{name}: {hits} of {len(truth)} found, boxes shown: {int(keep.sum())}",
    )


def _false_positive_item(
    datamodule: DetectionDataModule, matches: DetectionMatches, d: int, names: list[str]
) -> BoxesOnImage:
    i = int(matches.det_image[d])
    iou = float(matches.det_iou[d])
    return BoxesOnImage(
        datamodule.test_images[i],
        datamodule.test_targets[i]["boxes"],
        matches.det_box[d : d + 1],
        matches.det_score[d : d + 1],
        f"{names[i]}: {_false_positive_kind(iou, matches.iou_threshold)}, IoU {iou:.2f}",
    )


def _missed_item(
    datamodule: DetectionDataModule, predictions: list[Target], matches: DetectionMatches, g: int, names: list[str]
) -> BoxesOnImage:
    i = int(matches.gt_image[g])
    keep = predictions[i]["scores"] >= SCORE_THRESHOLD
    return BoxesOnImage(
        datamodule.test_images[i],
        matches.gt_box[g : g + 1],
        predictions[i]["boxes"][keep],
        predictions[i]["scores"][keep],
        f"{names[i]}: best IoU {float(matches.gt_best_iou[g]):.2f}",
    )


def render_markdown(summary: dict[str, Any]) -> str:
    """The report's Markdown, written from the summary as metrics.json holds it (the text and the file agree)."""
    run, test, op = summary["run"], summary["test"], summary["operating_point"]
    coco, logged = test["coco"], test["logged"]
    rows = [[MAP_NAMES[k], _coco_value(coco[k]), _coco_value(logged[k])] for k in MAP_KEYS]
    at = next(r for r in summary["thresholds"] if r["threshold"] == op["score_threshold"])
    objects, images = test["objects"], test["images"]
    fp, missed = summary["false_positives"], summary["missed"]
    lines = [
        f"# Detection report: {run['name']}",
        "",
        *(f"> **Warning:** {warning}\n" for warning in run["warnings"]),
        f"- How it ended: {run['how_it_ended']}",
        f"- Model: {run['net']['class']} ({run['net']['parameters']:,} parameters); classes: "
        f"{', '.join(run['classes'])}",
        f"- Evaluated: `{run['checkpoint']['file']}` (epoch {run['checkpoint']['epoch']}), the checkpoint with the "
        f"highest val_map in its name; {images} test images, {objects} objects.",
        f"- Overrides: `{' '.join(run['overrides']) or 'none'}`",
        f"- Training: epochs logged: {run['epochs']}; best val mAP@[.5:.95] {num(run['best_val_map'])}; median "
        f"{num(run['sec_per_epoch'], 1)} s per epoch.",
        "",
        "## Test mAP",
        "",
        "COCO's metrics (pycocotools through torchmetrics), computed here on the test split, beside what train.py "
        "logged for the same checkpoint:",
        "",
        *table(["metric", "computed here", "logged by train.py"], rows),
        "",
        f"AP@.5 from this report's own matching (the curve below): {num(test['ap_50_matching'])}.",
        "",
        "## Precision and recall",
        "",
        figure(PR_FIGURE, "Precision-recall curve at IoU 0.5"),
        "",
        "Every detection ranked by score; a detection is right when it takes a not yet matched object with IoU >= 0.5 "
        "(COCO's matching). The dots mark the score thresholds of the table.",
        "",
        threshold_markdown_from(summary["thresholds"]),
        "",
        f"At score >= {op['score_threshold']:g}, {at['true_positives']} of {objects} objects are found "
        f"({pct(at['recall'])} recall) with {at['false_positives']} false positives, "
        f"{num(at['false_positives_per_image'], 2)} per image (precision {pct(at['precision'])}).",
    ]
    if op["median_height_missed"] is not None and op["median_height_found"] is not None:
        lines.append(
            f"The objects missed there are {num(op['median_height_missed'], 0)} px tall (median), the found ones "
            f"{num(op['median_height_found'], 0)} px (in the resized test images)."
        )
    lines += ["", "## Ground truth and predictions", "", figure(TEST_FIGURE, "Test images with boxes"), ""]
    lines += ["## The most confident false positives", "", figure(FALSE_POSITIVES_FIGURE, "Confident false positives")]
    if fp["items"]:
        top = fp["items"][0]
        kinds = [item["kind"] for item in fp["items"]]
        lines += [
            "",
            f"The most confident false positive scores {num(top['score'], 2)} ({top['image']}, {top['kind']}: IoU "
            f"{num(top['iou'], 2)} with the nearest object). Of the {len(kinds)} shown: "
            + ", ".join(f"{kinds.count(k)} {k}" for k in ("background", "misplaced", "duplicate") if k in kinds)
            + ". Duplicate: a second box on an object another box took; misplaced: IoU 0.1-0.5; background: < 0.1.",
        ]
    else:
        lines += ["", "None: every detection matched an object."]
    lines += ["", f"## Objects missed at score >= {op['score_threshold']:g}", ""]
    if missed["count"]:
        lines += [
            figure(MISSED_FIGURE, "Missed objects"),
            "",
            f"{missed['count']} of {objects} objects have no detection scored >= {op['score_threshold']:g} with IoU "
            f">= 0.5; the first {len(missed['items'])} in test order are shown, with the best IoU any box of their "
            f"class reached.",
        ]
    else:
        lines.append(f"None: all {objects} objects are found.")
    lines += ["", "## Explanations", ""]
    explained = summary["explanations"]
    if "skipped" in explained:
        lines.append(f"No explanation checks: {explained['skipped']}.")
    else:
        lines += [figure(EXPLANATIONS_FIGURE, "Explanations of found objects"), "", explained["markdown"]]
    return "\n".join(lines) + "\n"


def _coco_value(value: float | None) -> str:
    # pycocotools writes -1 for an AP with no object of that size in the set
    return "no such objects" if value is not None and value < 0 else num(value)


def threshold_markdown_from(rows: list[dict[str, Any]]) -> str:
    """:func:`~cnn_explorer.render.boxes.threshold_markdown` of the rows as metrics.json holds them (NaN as None)."""
    from cnn_explorer.detection.analysis import ThresholdRow

    restored = [ThresholdRow(**{k: math.nan if v is None else v for k, v in row.items()}) for row in rows]
    return threshold_markdown(restored)
