"""The report of one finished run: read the run -> evaluate -> each section -> write atomically.

Writes ``<run dir>/report/``: ``report.md`` (the sections' Markdown), ``metrics.json`` (every number the text
states; the comparison of a sweep reads it) and the sections' PNG figures. The run dir is read-only input:
everything that can fail on a bad input is read before anything is written, and the report folder is built
beside ``report/`` and swapped in complete (:mod:`cnn_explorer.output_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnn_explorer.evaluate import EvaluationOptions, evaluate_run
from cnn_explorer.output_dir import check_replaceable, replacing_dir
from cnn_explorer.render.figures import save_png
from cnn_explorer.report.metrics_json import nan_to_none, write_metrics
from cnn_explorer.report.sections import SECTIONS
from cnn_explorer.rundir import read_run

REPORT_DIR = "report"
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"


def write_run_report(run_dir: Path, options: EvaluationOptions | None = None, out: Path | None = None) -> Path:
    """Evaluate the run's best checkpoint and write ``<run_dir>/report/`` (or ``out``); returns that folder.

    Raises:
        UserError: naming the path and the problem (not a run dir, no or unreadable checkpoint, one that does
            not fit the config, missing metrics or data, a report folder holding files analyze.py did not
            write); the run dir is then as it was.
    """
    run = read_run(run_dir)
    target = out if out is not None else run.dir / REPORT_DIR
    check_replaceable(target)  # now, not after minutes of evaluation
    ev = evaluate_run(run, options or EvaluationOptions())

    summary: dict[str, Any] = {}
    figures, writers = {}, []
    for section in SECTIONS:
        result = section.compute(ev)
        summary[section.KEY] = result.numbers
        figures.update(result.figures)
        writers += [result.write] if result.write else []
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
