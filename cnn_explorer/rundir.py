"""A finished run dir, read back: its saved config, best checkpoint, the net's weights, logged metrics.

A run dir is what train.py leaves behind (Hydra's run or multirun job dir)::

    .hydra/config.yaml, .hydra/hydra.yaml, .hydra/overrides.yaml   the composed config and how it was made
    checkpoints/epochNNN-val_accX.XXXX.ckpt, checkpoints/last.ckpt  best-by-val/acc (top 1) and last
    csv/version_K/metrics.csv                                       per-epoch metrics; a resumed run adds K+1

Everything here reads; nothing writes into the run dir. A run dir is untrusted input: its config is never
instantiated (:mod:`cnn_explorer.safe_config`), its checkpoints are loaded with ``weights_only=True``.
Problems a user can fix raise :class:`~cnn_explorer.errors.UserError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from cnn_explorer.config import SAVED_CONFIG, SAVED_OVERRIDES
from cnn_explorer.errors import UserError
from cnn_explorer.models import ConvNet
from cnn_explorer.safe_config import build

SAVED_HYDRA = Path(".hydra") / "hydra.yaml"
CHECKPOINT_DIR = "checkpoints"
# ModelCheckpoint's filename in conf/callbacks/*.yaml: "epoch{epoch:03d}-val_acc{val/acc:.4f}".
BEST_CHECKPOINT = re.compile(r"^epoch(?P<epoch>\d+)-val_acc(?P<val_acc>\d+(?:\.\d+)?)\.ckpt$")
METRICS_GLOB = "csv/version_*/metrics.csv"
NET_PREFIX = "net."  # Classifier keeps the net as self.net, so its weights are "net.<name>" in the state_dict
NETS = {"cnn_explorer.models.ConvNet": ConvNet}  # the nets a run dir's model.net may describe


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a saved Hydra config, the mark of a run dir."""
    return (path / SAVED_CONFIG).is_file()


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's composed config, with ``run_dir`` set to ``run_dir`` so that every interpolation resolves.

    The saved ``run_dir: ${hydra:runtime.output_dir}`` needs a Hydra app to resolve; outside one, the run dir
    is where the config was found. Other interpolations (``${seed}``, ``${data.num_classes}``) resolve as usual.

    Raises:
        UserError: if there is no ``.hydra/config.yaml``, it is not YAML, or it lacks ``model.net`` or ``data``.
    """
    path = run_dir / SAVED_CONFIG
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a run dir: it has no {SAVED_CONFIG}. Give a dir that train.py wrote, such as "
            f"outputs/<date>/<time>, or a multirun sweep dir whose sub-dirs are such runs."
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml and OmegaConf raise several types for a damaged file
        raise UserError(f"{path} is not a readable config ({type(err).__name__}: {err})") from err
    if not isinstance(cfg, DictConfig) or "data" not in cfg or "net" not in cfg.get("model", {}):
        raise UserError(f"{path} is not a train.py config: it needs 'data' and 'model.net' sections")
    cfg.run_dir = str(run_dir)
    return cfg


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options the run was composed from, e.g. ``{"model": "small", "data": "synthetic"}``.

    Read from ``.hydra/hydra.yaml``; empty when that file is missing or unreadable (it only labels the run).
    """
    try:
        choices = OmegaConf.load(run_dir / SAVED_HYDRA).hydra.runtime.choices
        return {str(k): str(v) for k, v in choices.items() if "/" not in str(k)}  # skip hydra's own groups
    except Exception:  # a label, not data the report depends on
        return {}


def run_launch_dir(run_dir: Path) -> Path | None:
    """The dir train.py was started from (``hydra.runtime.cwd``), against which its relative paths resolved."""
    try:
        return Path(OmegaConf.load(run_dir / SAVED_HYDRA).hydra.runtime.cwd)
    except Exception:  # older or hand-made run dirs: the caller falls back to the current dir
        return None


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of the run (``.hydra/overrides.yaml``), e.g. ``["model=deep", "seed=1"]``."""
    try:
        overrides = OmegaConf.load(run_dir / SAVED_OVERRIDES)
    except Exception:  # missing or damaged: the run just shows no overrides
        return []
    return [str(o) for o in overrides] if isinstance(overrides, ListConfig) else []


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
        has_last = (folder / "last.ckpt").is_file()
        what = "only last.ckpt, which is not the best" if has_last else "no checkpoint at all"
        raise UserError(
            f"{run_dir} has no best checkpoint: {folder} holds {what}. analyze.py needs the "
            f"epochNNN-val_accX.XXXX.ckpt file that ModelCheckpoint writes after each improving validation; "
            f"was the run stopped before its first epoch ended? Resume it: "
            f"python train.py <its overrides> ckpt_path={folder / 'last.ckpt'}"
        )
    return max(found, key=lambda c: (c.val_acc, -c.epoch))


def read_net_weights(checkpoint: Path) -> dict[str, Tensor]:
    """The net's weights from a Lightning checkpoint, loaded with ``weights_only=True`` onto the CPU.

    Returns:
        the ``state_dict`` entries under ``net.``, with the prefix removed (other module state such as
        ``val_acc_best.*`` is dropped).

    Raises:
        UserError: if the file cannot be read (truncated, corrupt, not a torch file) or holds no net weights.
    """
    try:
        contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot read checkpoint {checkpoint}: it is truncated or corrupt ({type(err).__name__}: {reason}). "
            f"Re-run training to write it again, or restore the file from a copy."
        ) from err
    state = contents.get("state_dict") if isinstance(contents, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{checkpoint} is not a Lightning checkpoint: it has no 'state_dict'")
    weights = {key.removeprefix(NET_PREFIX): value for key, value in state.items() if key.startswith(NET_PREFIX)}
    if not weights:
        raise UserError(f"{checkpoint} has no '{NET_PREFIX}*' weights: it was not written by train.py's Classifier")
    return weights


def load_net(cfg: DictConfig, checkpoint: Path) -> nn.Module:
    """Build ``cfg.model.net`` and load the checkpoint's net weights into it; the net is left in eval mode.

    Raises:
        UserError: if the net cannot be built from the config, or the weights do not fit it (missing or
            unexpected names, different shapes); the message names the checkpoint and the config.
    """
    config_path = Path(cfg.run_dir) / SAVED_CONFIG
    net = build(cfg.model.net, NETS, f"model.net in {config_path}")
    weights = read_net_weights(checkpoint)
    expected = net.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    resized = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or resized:
        problems = [
            f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape (ckpt vs config)", resized))
            if names
        ]
        raise UserError(
            f"{checkpoint} does not fit the net described by {config_path} "
            f"({cfg.model.net.get('_target_')}, architecture {list(cfg.model.net.get('architecture', []))}): "
            f"{'; '.join(problems)}. Was the config edited, or the checkpoint copied from another run?"
        )
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
    """

    epochs: list[int]
    columns: dict[str, list[float]]
    test: dict[str, float]
    files: list[Path]

    def get(self, column: str) -> list[float]:
        """The column's per-epoch values, all NaN when it was never logged."""
        return self.columns.get(column, [math.nan] * len(self.epochs))


def read_metrics(run_dir: Path) -> MetricsLog:
    """Merge ``csv/version_*/metrics.csv``: later versions (a resumed run) win for the same epoch.

    Each epoch has a row with train/* (and time/epoch_s) and a row with val/* filled; the two are merged.
    Test rows (test/* filled, epoch = the epoch count) are kept apart so they do not make a fake epoch.

    Raises:
        UserError: if there is no metrics file, or one holds a value that is not a number.
    """
    files = sorted(run_dir.glob(METRICS_GLOB), key=lambda p: _version_number(p.parent.name))
    if not files:
        raise UserError(
            f"{run_dir} has no per-epoch metrics: no {METRICS_GLOB}. The CSV logger (logger=default) writes them; "
            f"a run trained with logger=none has nothing to draw learning curves from."
        )
    epochs: dict[int, dict[str, float]] = {}
    test: dict[str, float] = {}
    for path in files:
        version_epochs: dict[int, dict[str, float]] = {}
        with path.open(newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
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
    return MetricsLog(order, columns, test, files)


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
    """

    dir: Path
    config: DictConfig
    checkpoint: Checkpoint
    metrics: MetricsLog
    choices: dict[str, str]
    overrides: list[str]


def read_run(run_dir: Path) -> Run:
    """Read a run dir (nothing is written).

    Raises:
        UserError: if it is not a run dir, or its config, best checkpoint or metrics are missing or unreadable.
    """
    run_dir = run_dir.resolve()
    config = load_run_config(run_dir)
    return Run(
        run_dir, config, best_checkpoint(run_dir), read_metrics(run_dir), run_choices(run_dir), run_overrides(run_dir)
    )
