"""Write the report of a finished run, or the comparison of a sweep, from what train.py left in its run dir.

    python analyze.py outputs/2026-11-28/09-52-19           # one run -> <run>/report/report.md
    python analyze.py outputs/multirun/2026-11-28/10-00-00  # a sweep -> a report per job, and
                                                            #   <sweep>/comparison/comparison.md
    python analyze.py RUN_A RUN_B --out outputs/a_vs_b      # unrelated runs -> their comparison in --out
    python analyze.py RUN_A RUN_B --out X --compare-only    # ... from the reports they have, not evaluated again
    python analyze.py RUN --out /elsewhere/run_report       # one run -> its report in --out (a read-only run dir)
    python analyze.py RUN --data-root /path/to/cifar10-jpeg # the data moved, or a relative root elsewhere
    python analyze.py RUN --device cpu --batch-size 500
    python analyze.py RUN --random-labels-run OTHER         # + Adebayo et al.'s data randomization test: OTHER is
                                                            #   RUN's model trained with data.random_labels_seed=0

A run dir holds .hydra/config.yaml; a sweep dir's sub-dirs are run dirs. Each report rebuilds the net from
the saved config, loads the best checkpoint (highest val_acc in its file name), runs the test set and the
interpretability methods, and writes Markdown with PNGs. The paths written are printed on stdout.
On bad input (not a run dir, missing or corrupt checkpoint, one that does not fit the config) the message
names the path and the problem, nothing in the run dir changes, and the exit status is 1; in a sweep, the
good runs are still reported and compared, and the broken ones are listed.

Output folders are replaced as a whole, and only when every file in them is one analyze.py wrote (its manifest
holds their hashes): a place that is not writable is refused before the evaluation, a full disk leaves the old
report as it was, both with a message naming the place and --out. Interrupted (Ctrl-C, SIGTERM), it removes
its half-written folder, says what it left as it was, and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnn_explorer.allocator import keep_freed_memory
from cnn_explorer.errors import UserError
from cnn_explorer.evaluate import EvaluationOptions
from cnn_explorer.interpret.attribution import METHODS
from cnn_explorer.output_dir import check_replaceable
from cnn_explorer.report.comparison import COMPARISON_DIR, write_comparison
from cnn_explorer.report.detection_report import is_detection_run, write_detection_report
from cnn_explorer.report.metrics_json import read_metrics_json
from cnn_explorer.report.run_report import METRICS_FILE, REPORT_DIR, REPORT_FILE, write_run_report
from cnn_explorer.rundir import CHECKPOINT_DIR, is_run_dir

JOB_DIR = re.compile(r"^(\d+)_")  # Hydra's multirun job dirs: "<job number>_<overrides>"
INTERRUPTS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the exit status of each: 128 + the signal number


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException like KeyboardInterrupt, so that no ``except Exception``
    swallows it and every folder being written is cleaned up on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs and/or multirun sweep dirs")
    parser.add_argument(
        "--out",
        type=Path,
        help="where the comparison of several runs goes (default: <sweep>/comparison); for one run, where its "
        "report goes (default: <run>/report), e.g. when the run dir is read-only or its disk is full",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=1000, help="test images per forward pass")
    parser.add_argument("--data-root", help="replaces data.source.root of the runs (e.g. a moved CIFAR-10 copy)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        metavar="METHOD",
        help=f"attribution methods of the report (default: all of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--faithfulness-images",
        type=int,
        default=200,
        help="test images of the deletion/insertion curves, the first N / classes of each class (default: 200)",
    )
    parser.add_argument(
        "--random-labels-run",
        type=Path,
        metavar="OTHER",
        help="a run of the same model trained on permuted labels (train.py ... data.random_labels_seed=0): the "
        "report of the one run given adds the data randomization test of its attribution methods (Adebayo et al. "
        "2018), their maps from both nets on the same test images",
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help=f"compare the runs from the reports they have ({REPORT_DIR}/{METRICS_FILE}, as an earlier analyze.py "
        "wrote them) without evaluating them again: a comparison of runs reported one by one, or with other options",
    )
    return parser.parse_args(argv)


def find_runs(
    paths: list[Path], out: Path | None, reported: bool = False
) -> tuple[list[Path], list[tuple[Path, str]], Path | None]:
    """Expand sweep dirs into their runs; decide where the comparison goes.

    Returns:
        the run dirs in order, the sub-dirs of sweeps that look like jobs but are not runs (with the
        problem), and ``--out`` or the comparison folder (``None`` for a single run without ``--out``).

    Raises:
        UserError: on a path that does not exist or is neither a run nor a sweep dir, or several runs
            from different places without ``--out``.
    """
    runs: list[Path] = []
    broken: list[tuple[Path, str]] = []
    sweeps: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise UserError(
                f"{path} does not exist or is not a dir; give a run dir (outputs/<date>/<time>) or a sweep dir"
            )
        # With --compare-only (``reported``) a dir holding only a run's report is enough: the reports committed in
        # outputs/ come without the run dirs they were written from.
        if is_run_dir(path) or (reported and (path / REPORT_DIR / METRICS_FILE).is_file()):
            runs.append(path)
            continue
        jobs = sorted((p for p in path.iterdir() if p.is_dir()), key=_job_order)
        found = [p for p in jobs if is_run_dir(p)]
        if not found:
            raise UserError(
                f"{path} is not a run dir (it has no .hydra/config.yaml) nor a sweep dir (none of its sub-dirs has "
                f"one). Give the dir train.py printed as 'run dir', or a multirun dir such as "
                f"outputs/multirun/<date>/<time>."
            )
        sweeps.append(path)
        runs += found
        broken += [
            (p, f"{p} is not a run dir: it has no .hydra/config.yaml (did this job fail to start?)")
            for p in jobs
            if p not in found and (JOB_DIR.match(p.name) or (p / CHECKPOINT_DIR).is_dir())
        ]
    if out is None and len(runs) + len(broken) > 1:
        if len(paths) == 1 and sweeps:
            out = sweeps[0] / COMPARISON_DIR
        else:
            raise UserError(f"{len(runs)} runs from {len(paths)} paths: say where their comparison goes with --out DIR")
    if out is not None:
        check_replaceable(out)  # now, not after minutes of evaluation
    return runs, broken, out


def _has_detection_report(run: Path) -> bool:
    """Whether ``run``'s report is a detection report (its test results are COCO mAPs, not an accuracy)."""
    return "coco" in read_metrics_json(run / REPORT_DIR / METRICS_FILE)["test"]


def _job_order(path: Path) -> tuple[int, str]:
    match = JOB_DIR.match(path.name)
    return (int(match[1]) if match else sys.maxsize, path.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = _Progress()
    try:
        with _interrupts_raised() as received:
            status = _analyze(args, progress)
            if received:  # raised where Python swallows exceptions (a finalizer, a callback): still an interrupt
                raise Interrupted(received[0])
            return status
    except Interrupted as interrupt:
        print(f"analyze.py: interrupted ({signal.Signals(interrupt.signum).name}); {progress}", file=sys.stderr)
        return INTERRUPTS[interrupt.signum]


def _analyze(args: argparse.Namespace, progress: _Progress) -> int:
    """Report each run and compare them: what :func:`main` does, until an interrupt."""
    try:
        for flag, value in (("--batch-size", args.batch_size), ("--faithfulness-images", args.faithfulness_images)):
            if value < 1:
                raise UserError(f"{flag} must be a positive number of images, got {value}")
        runs, broken, out = find_runs(args.paths, args.out, reported=args.compare_only)
        if args.random_labels_run is not None and len(runs) + len(broken) != 1:
            raise UserError(
                f"--random-labels-run goes with one run (the one trained on the true labels), got {len(runs)} runs: "
                f"analyze them one at a time"
            )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    keep_freed_memory()  # the 10k test images and the attribution checks page-fault like training does
    options = EvaluationOptions(
        device=args.device,
        batch_size=args.batch_size,
        data_root=args.data_root,
        methods=args.methods,
        faithfulness_images=args.faithfulness_images,
    )
    single = len(runs) + len(broken) == 1  # then --out is the report's folder, and there is nothing to compare

    if args.compare_only and single:
        print("error: --compare-only needs several runs to compare", file=sys.stderr)
        return 1
    reported: list[Path] = []
    for run in runs:
        if args.compare_only:
            if (run / REPORT_DIR / METRICS_FILE).is_file():
                reported.append(run)
            else:
                broken.append(
                    (run, f"{run} has no report to compare ({REPORT_DIR}/{METRICS_FILE}): run analyze.py {run} first")
                )
            continue
        target = out if single and out is not None else run / REPORT_DIR
        progress.start(target)
        try:
            if is_detection_run(run):
                report = write_detection_report(run, target, options)
            else:
                report = write_run_report(run, options, target, args.random_labels_run)
        except UserError as err:
            broken.append((run, str(err)))
            continue
        reported.append(run)
        print(f"report: {report / REPORT_FILE}")
        summary = read_metrics_json(report / METRICS_FILE)["run"]
        for warning in summary["warnings"]:
            print(f"warning: {run}: {warning}", file=sys.stderr)
        if not summary["ended"]:
            print(f"warning: {run}: how it ended: {summary['how_it_ended']}", file=sys.stderr)
    is_detection = _has_detection_report if args.compare_only else is_detection_run
    detection = [run for run in reported if is_detection(run)]
    if detection and not single:  # the comparison reads classification reports
        print(f"note: {len(detection)} detection run(s) reported but not compared", file=sys.stderr)
    compared = [run for run in reported if run not in detection]
    if out is not None and compared and not single:
        progress.start(out)
        try:
            print(f"comparison: {write_comparison(out, compared, broken, options)}")
        except UserError as err:
            broken.append((out, str(err)))

    for _, problem in broken:
        print(f"error: {problem}", file=sys.stderr)
    if broken and len(runs) > 1:
        names = ", ".join(str(path) for path, _ in broken)
        print(f"error: {len(broken)} run(s) could not be reported: {names}", file=sys.stderr)
    return 1 if broken else 0


class _Progress:
    """Which folder analyze.py is writing, and whether it was replaced yet: what an interrupt left as it was."""

    def __init__(self) -> None:
        self.target: Path | None = None
        self.before: tuple[int, int] | None = None

    def start(self, target: Path) -> None:
        self.target, self.before = target, _identity(target)

    def __str__(self) -> str:
        if self.target is None:
            return "nothing was written"
        if _identity(self.target) == self.before:  # a replaced folder is a new one (renamed in): a new inode
            return f"nothing was changed in {self.target}"
        return f"{self.target} was written just before"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


@contextmanager
def _interrupts_raised() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (the folder being written is then
    removed on the way out), and are recorded in the list yielded; the handlers before are restored after it
    (main() may run inside a test)."""
    received: list[int] = []

    def interrupt(signum: int, _frame: object) -> None:
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in INTERRUPTS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


if __name__ == "__main__":
    sys.exit(main())
