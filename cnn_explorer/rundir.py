"""A finished run dir, read back: its saved config, best checkpoint, the net's weights, logged metrics.

A run dir is what train.py leaves behind (Hydra's run or multirun job dir)::

    .hydra/config.yaml, .hydra/hydra.yaml, .hydra/overrides.yaml   the composed config and how it was made
    checkpoints/epochNNN-val_accX.XXXX.ckpt, checkpoints/last.ckpt  best-by-val/acc (top 1) and last
    csv/version_K/metrics.csv                                       per-epoch metrics; a resumed run adds K+1

Everything here reads; nothing writes into the run dir. A run dir is untrusted input: its config is never
instantiated and runs no resolver (:mod:`cnn_explorer.safe_config`), its checkpoints are loaded with
``weights_only=True`` once they fit the config's net (:mod:`cnn_explorer.checkpoints`), and every file read
from it has a size bound, so a crafted run dir costs no more time and memory than a real one.
Problems a user can fix raise :class:`~cnn_explorer.errors.UserError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from cnn_explorer.checkpoints import build_net, net_weights, read_checkpoint_for
from cnn_explorer.config import CHECKPOINT_DIR, SAVED_CONFIG, SAVED_OVERRIDES, resume_command
from cnn_explorer.errors import UserError
from cnn_explorer.run_status import read_status
from cnn_explorer.safe_config import check_interpolations, read_capped, read_yaml
from cnn_explorer.standard_nets import without_pretrained_weights

SAVED_HYDRA = Path(".hydra") / "hydra.yaml"
# ModelCheckpoint's filename in conf/callbacks/*.yaml: "epoch{epoch:03d}-val_acc{val/acc:.4f}".
BEST_CHECKPOINT = re.compile(r"^epoch(?P<epoch>\d+)-val_acc(?P<val_acc>\d+(?:\.\d+)?)\.ckpt$")
METRICS_GLOB = "csv/version_*/metrics.csv"
MAX_METRICS_BYTES = 50 * 2**20  # all metrics CSV files together: a 1000-epoch run logs well under 1 MB
MAX_METRICS_ROWS = 100_000  # all files together: two rows per epoch, a test row
# The resolvers this project's own config files write into a run's config (conf/train.yaml, conf/data/source/):
# the only ones resolved from a run dir. run_dir is replaced by load_run_config before anything resolves it.
TRUSTED_RESOLVERS = {
    "run_dir": {"${hydra:runtime.output_dir}"},
    "data.source.root": {
        "${oc.env:CIFAR10_FOLDER,data/cifar10-jpeg}",
        "${oc.env:CIFAR10_ROOT,data/cifar10}",
        "${oc.env:CIFAR10_FOLDER,../shared/data/cifar10-jpeg}",  # the ImageFolder default of runs trained before it
        "${oc.env:IMAGENETTE_FOLDER,data/imagenette-160}",
        "${oc.env:PENNFUDAN_ROOT,data/pennfudan}",
    },
    "data.source.cache_dir": {"${oc.env:CNN_EXPLORER_CACHE,'~/.cache/cnn_explorer'}"},
}


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a saved Hydra config, the mark of a run dir."""
    return (path / SAVED_CONFIG).is_file()


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's composed config, with ``run_dir`` set to ``run_dir`` so that every interpolation resolves.

    The saved ``run_dir: ${hydra:runtime.output_dir}`` needs a Hydra app to resolve; outside one, the run dir
    is where the config was found. References to the config's own keys (``${seed}``, ``${data.num_classes}``)
    resolve as usual; of resolvers, only those in :data:`TRUSTED_RESOLVERS` (this project's own config files').

    Raises:
        UserError: if there is no ``.hydra/config.yaml``, it is too large, not YAML, uses YAML aliases or a
            resolver outside :data:`TRUSTED_RESOLVERS`, or lacks ``model.net`` or ``data``.
    """
    path = run_dir / SAVED_CONFIG
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a run dir: it has no {SAVED_CONFIG}. Give a dir that train.py wrote, such as "
            f"outputs/<date>/<time>, or a multirun sweep dir whose sub-dirs are such runs."
        )
    cfg = read_yaml(path)
    if not isinstance(cfg, DictConfig) or "data" not in cfg or "net" not in cfg.get("model", {}):
        raise UserError(f"{path} is not a train.py config: it needs 'data' and 'model.net' sections")
    check_interpolations(cfg, path, TRUSTED_RESOLVERS)
    cfg.run_dir = str(run_dir)
    return cfg


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options the run was composed from, e.g. ``{"model": "small", "data": "synthetic"}``.

    Read from ``.hydra/hydra.yaml``; empty when that file is missing or unreadable (it only labels the run).
    """
    try:
        choices = _unresolved(read_yaml(run_dir / SAVED_HYDRA))["hydra"]["runtime"]["choices"]
        return {str(k): str(v) for k, v in choices.items() if "/" not in str(k)}  # skip hydra's own groups
    except Exception:  # a label, not data the report depends on
        return {}


def run_launch_dir(run_dir: Path) -> Path | None:
    """The dir train.py was started from (``hydra.runtime.cwd``), against which its relative paths resolved."""
    try:
        return Path(_unresolved(read_yaml(run_dir / SAVED_HYDRA))["hydra"]["runtime"]["cwd"])
    except Exception:  # older or hand-made run dirs: the caller falls back to the current dir
        return None


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of the run (``.hydra/overrides.yaml``), e.g. ``["model=deep", "seed=1"]``."""
    try:
        overrides = _unresolved(read_yaml(run_dir / SAVED_OVERRIDES))
    except Exception:  # missing or damaged: the run just shows no overrides
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def _unresolved(cfg: DictConfig | ListConfig) -> Any:
    """Plain values as written: hydra.yaml holds resolvers (``${now:...}``) that a run dir must not run."""
    return OmegaConf.to_container(cfg, resolve=False)


@dataclass(frozen=True)
class Checkpoint:
    """A best-by-val/acc checkpoint file and the epoch and val/acc written into its name."""

    path: Path
    epoch: int
    val_acc: float


def best_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint with the highest val/acc in its file name (``epochNNN-val_accX.XXXX.ckpt``).

    The file name, not ModelCheckpoint's saved ``best_model_path``: that path is absolute and goes stale
    when a run dir is moved or copied, and reading it would mean loading a second checkpoint. With
    ``save_top_k: 1`` there is one such file; with more, ties go to the earlier epoch, as ModelCheckpoint
    replaces its best only on a strict improvement.

    Raises:
        UserError: if ``checkpoints/`` holds no such file.
    """
    folder = run_dir / CHECKPOINT_DIR
    found = []
    for path in sorted(folder.glob("epoch*.ckpt")):
        match = BEST_CHECKPOINT.match(path.name)
        if match:
            found.append(Checkpoint(path, int(match["epoch"]), float(match["val_acc"])))
    if not found:
        last = folder / "last.ckpt"
        if last.is_file():  # advice is given only when it can be followed
            what, fix = (
                "only last.ckpt, which is not the best",
                f"resume it: {resume_command(last)}",
            )
        else:
            what, fix = (
                "no checkpoint at all",
                "it stopped before its first epoch ended, so there is nothing to resume: train it again",
            )
        raise UserError(
            f"{run_dir} has no best checkpoint: {folder} holds {what}. analyze.py needs the "
            f"epochNNN-val_accX.XXXX.ckpt file that ModelCheckpoint writes after each improving validation; {fix}."
        )
    return max(found, key=lambda c: (c.val_acc, -c.epoch))


def load_net(cfg: DictConfig, checkpoint: Path) -> nn.Module:
    """Build ``cfg.model.net`` (through the allowlist) and load the checkpoint's net weights into it; the net is
    left in eval mode on the CPU. The net is allocated only once the checkpoint is known to fit it
    (:func:`~cnn_explorer.checkpoints.read_checkpoint_for`).

    Raises:
        UserError: if the net cannot be built from the config or is of no sane size, the checkpoint cannot be
            read safely, is larger than the net's training state can be, or its weights do not fit the net; the
            message names the checkpoint and the config.
    """
    where = f"{Path(cfg.run_dir) / SAVED_CONFIG}"
    advice = "Re-run training to write it again, or restore the file from a copy."
    weights = net_weights(read_checkpoint_for(checkpoint, cfg.model.net, where, advice), checkpoint)
    # The checkpoint holds every weight: pretrained ones the config names (model.net.weights) are neither
    # downloaded nor read, which also keeps a run dir's config from reading a file of its choosing.
    with without_pretrained_weights():
        net = build_net(cfg.model.net, f"model.net in {where}")
    net.load_state_dict(weights)
    return net.eval()


@dataclass(frozen=True)
class MetricsLog:
    """Per-epoch metrics as logged by the CSV logger, resumed versions merged.

    Attributes:
        epochs: sorted epoch numbers that have train or val values.
        columns: ``{"train/acc": [value per epoch, NaN where not logged], ...}`` for every train/, val/ and
            time/ column.
        test: ``{"test/acc": ..., "test/loss": ...}`` from the last test row of the latest version; empty if
            the run was not tested.
        files: the CSV files read, oldest version first.
        cut_lines: the files whose last line was cut off mid-line (a process killed while writing it); that
            line was left out.
    """

    epochs: list[int]
    columns: dict[str, list[float]]
    test: dict[str, float]
    files: list[Path]
    cut_lines: list[Path]

    def get(self, column: str) -> list[float]:
        """The column's per-epoch values, all NaN when it was never logged."""
        return self.columns.get(column, [math.nan] * len(self.epochs))


def read_metrics(run_dir: Path) -> MetricsLog:
    """Merge ``csv/version_*/metrics.csv``: later versions (a resumed run) win for the same epoch.

    Each epoch has a row with train/* (and time/epoch_s) and a row with val/* filled; the two are merged.
    Test rows (test/* filled, epoch = the epoch count) are kept apart so they do not make a fake epoch.

    Raises:
        UserError: if there is no metrics file, one holds a value that is not a number, or together they are
            larger than :data:`MAX_METRICS_BYTES` or have more than :data:`MAX_METRICS_ROWS` rows.
    """
    files = sorted(run_dir.glob(METRICS_GLOB), key=lambda p: _version_number(p.parent.name))
    if not files:
        raise UserError(
            f"{run_dir} has no per-epoch metrics: no {METRICS_GLOB}. The CSV logger (logger=default) writes them; "
            f"a run trained with logger=none has nothing to draw learning curves from."
        )
    epochs: dict[int, dict[str, float]] = {}
    test: dict[str, float] = {}
    cut: list[Path] = []
    budget, rows = MAX_METRICS_BYTES, 0
    for path in files:
        version_epochs: dict[int, dict[str, float]] = {}
        data = _read_bounded(path, budget)
        budget -= len(data)
        text = data.decode("utf-8", errors="replace")  # a damaged byte then shows as a cell that is no number
        if text and not text.endswith("\n"):  # every row the logger finished ends with a newline
            text = text[: text.rfind("\n") + 1]
            cut.append(path)
        for line, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
            rows += 1
            if rows > MAX_METRICS_ROWS:
                raise UserError(
                    f"{path} line {line}: the run's metrics files have more than {MAX_METRICS_ROWS} rows, the most "
                    f"analyze.py reads (train.py logs about two per epoch); they are not the files train.py wrote. "
                    f"Restore {METRICS_GLOB} from a copy, or remove the extra rows."
                )
            values = _numbers(row, path, line)
            tested = {k: v for k, v in values.items() if k.startswith("test/")}
            if tested:
                test = tested
            per_epoch = {k: v for k, v in values.items() if k.split("/")[0] in ("train", "val", "time")}
            if per_epoch and "epoch" in values:
                version_epochs.setdefault(int(values["epoch"]), {}).update(per_epoch)
        epochs.update(version_epochs)  # whole epochs replaced: a resumed run re-logs an epoch in full
    order = sorted(epochs)
    names = sorted({name for row in epochs.values() for name in row})
    columns = {name: [epochs[e].get(name, math.nan) for e in order] for name in names}
    return MetricsLog(order, columns, test, files, cut)


def _read_bounded(path: Path, budget: int) -> bytes:
    """The file's bytes, refused when it holds more than ``budget``, what remains of :data:`MAX_METRICS_BYTES`."""
    data = read_capped(path, budget)
    if data is None:
        raise UserError(
            f"{path}: the run's metrics files are larger than {MAX_METRICS_BYTES} bytes together, the most "
            f"analyze.py reads (train.py logs well under 1 MB for a 1000-epoch run); they are not the files "
            f"train.py wrote. Restore {METRICS_GLOB} from a copy, or remove the extra rows."
        )
    return data


def _version_number(name: str) -> int:
    suffix = name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def _numbers(row: dict[str, Any], path: Path, line: int) -> dict[str, float]:
    values = {}
    for key, text in row.items():
        if key is None or text in (None, ""):
            continue
        try:
            values[key] = float(text)
        except (TypeError, ValueError) as err:
            raise UserError(f"{path} line {line}: column {key!r} holds {text!r}, not a number") from err
    return values


@dataclass(frozen=True)
class Run:
    """What a run dir holds, read once: where it is, its config, its best checkpoint and its logged metrics.

    Attributes:
        dir: the run dir, absolute.
        config: ``.hydra/config.yaml`` with ``run_dir`` set (see :func:`load_run_config`).
        checkpoint: the best-by-val/acc checkpoint (see :func:`best_checkpoint`).
        metrics: the per-epoch metrics (see :func:`read_metrics`).
        choices: the config group options it was composed from (see :func:`run_choices`).
        overrides: its command-line overrides (see :func:`run_overrides`).
        status: how it ended (``run_status.json``, see :mod:`cnn_explorer.run_status`), None if not recorded.
    """

    dir: Path
    config: DictConfig
    checkpoint: Checkpoint
    metrics: MetricsLog
    choices: dict[str, str]
    overrides: list[str]
    status: dict[str, Any] | None


def read_run(run_dir: Path) -> Run:
    """Read a run dir (nothing is written).

    Raises:
        UserError: if it is not a run dir, or its config, best checkpoint or metrics are missing or unreadable.
    """
    run_dir = run_dir.resolve()
    config = load_run_config(run_dir)
    checkpoint, metrics = best_checkpoint(run_dir), read_metrics(run_dir)
    return Run(run_dir, config, checkpoint, metrics, run_choices(run_dir), run_overrides(run_dir), read_status(run_dir))
