"""The report of one finished run: read the run -> evaluate -> each section -> write atomically.

Writes ``<run dir>/report/``: ``report.md`` (the sections' Markdown), ``metrics.json`` (every number the text
states; the comparison of a sweep reads it) and the sections' PNG figures. The run dir is read-only input:
everything that can fail on a bad input is read before anything is written, and the report folder is built
beside ``report/`` and swapped in complete (:mod:`cnn_explorer.output_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from cnn_explorer.errors import UserError
from cnn_explorer.evaluate import EvaluationOptions, evaluate_run
from cnn_explorer.output_dir import check_replaceable, replacing_dir
from cnn_explorer.render.figures import save_png
from cnn_explorer.report.metrics_json import nan_to_none, write_metrics
from cnn_explorer.report.sections import SECTIONS, attributions, overview
from cnn_explorer.rundir import Run, load_net, read_run

REPORT_DIR = "report"
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"


def write_run_report(
    run_dir: Path,
    options: EvaluationOptions | None = None,
    out: Path | None = None,
    random_labels_run: Path | None = None,
) -> Path:
    """Evaluate the run's best checkpoint and write ``<run_dir>/report/`` (or ``out``); returns that folder.

    ``random_labels_run``: the same architecture trained on permuted labels (``data.random_labels_seed``); the
    attributions section then adds Adebayo et al.'s data randomization test
    (:func:`~cnn_explorer.report.sections.attributions.data_randomization_result`).

    Raises:
        UserError: naming the path and the problem (not a run dir, no or unreadable checkpoint, one that does
            not fit the config, missing metrics or data, a report folder holding files analyze.py did not
            write, a random-label run that is not one or not of the same architecture); the run dir is then as
            it was.
    """
    run = read_run(run_dir)
    target = out if out is not None else run.dir / REPORT_DIR
    check_replaceable(target)  # now, not after minutes of evaluation
    random_labels = read_random_labels_net(run, random_labels_run) if random_labels_run is not None else None
    ev = evaluate_run(run, options or EvaluationOptions())

    summary: dict[str, Any] = {}
    figures, writers = {}, []
    for section in SECTIONS:
        result = section.compute(ev)
        summary[section.KEY] = result.numbers
        figures.update(result.figures)
        writers += [result.write] if result.write else []
    if random_labels is not None:
        name, net = random_labels
        result = attributions.data_randomization_result(ev, net.to(ev.device), name)
        summary[attributions.KEY]["data_randomization"] = result.numbers
        figures.update(result.figures)
    # The side the net saw, the DataModule's (a config without data.image_size gets its default): the comparison of
    # runs at different sizes says what changes with it.
    summary[overview.KEY]["image_size"] = ev.datamodule.image_size
    summary["figures"] = list(figures)
    summary = nan_to_none(summary)  # the Markdown states exactly what metrics.json holds
    markdown = "\n\n".join(section.markdown(summary).strip("\n") for section in SECTIONS) + "\n"

    with replacing_dir(target) as folder:
        for name, fig in figures.items():
            save_png(fig, folder / name)
        for write in writers:
            write(folder)
        write_metrics(folder / METRICS_FILE, summary)
        (folder / REPORT_FILE).write_text(markdown)
    return target


def read_random_labels_net(run: Run, random_labels_run: Path) -> tuple[str, nn.Module]:
    """The best net of ``random_labels_run`` (on the CPU) and its folder's name, checked to be what the data
    randomization test needs: trained on permuted labels, with exactly the net of ``run`` (the same class and the
    same parameter names and shapes).

    Raises:
        UserError: if it is not a readable run dir, was not trained with ``data.random_labels_seed``, ``run``
            itself was, or the nets differ (the message says which and how to train the right one).
    """
    other = read_run(random_labels_run)
    fix = (
        f"train the model of {run.dir} again with its overrides plus data.random_labels_seed=0, and give that run "
        f"to --random-labels-run"
    )
    if other.config.data.get("random_labels_seed") is None:
        raise UserError(
            f"--random-labels-run {other.dir} was trained on the true labels (data.random_labels_seed "
            f"is not set in its config): {fix}"
        )
    if run.config.data.get("random_labels_seed") is not None:
        raise UserError(
            f"{run.dir} was itself trained on permuted labels (data.random_labels_seed is set): give the run trained "
            f"on the true labels first, the random-label run after --random-labels-run"
        )
    mine, theirs = load_net(run.config, run.checkpoint.path), load_net(other.config, other.checkpoint.path)
    shapes = [{k: tuple(v.shape) for k, v in net.state_dict().items()} for net in (mine, theirs)]
    if type(mine) is not type(theirs) or shapes[0] != shapes[1]:
        differ = sorted(set(shapes[0].items()) ^ set(shapes[1].items()))
        raise UserError(
            f"--random-labels-run {other.dir} is not the architecture of {run.dir} ({type(theirs).__name__} vs "
            f"{type(mine).__name__}; {len(differ)} parameter names or shapes differ, e.g. "
            f"{', '.join(f'{k} {list(v)}' for k, v in differ[:2]) or 'none'}): the data randomization test compares "
            f"the same net trained on true and on permuted labels; {fix}"
        )
    return other.dir.name, theirs
