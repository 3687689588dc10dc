"""train.py's config, checked before anything is written, and the resolvers that name its run dir.

No Hydra import here: the checks work on a composed ``DictConfig`` and are called from the Hydra callback in
:mod:`cnn_explorer.hydra_callbacks` (before Hydra creates the run dir) and from ``train()`` itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnn_explorer.checkpoints import read_resumable_checkpoint
from cnn_explorer.errors import UserError
from cnn_explorer.run_status import read_status
from cnn_explorer.safe_config import read_yaml

SAVED_CONFIG = Path(".hydra") / "config.yaml"
SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # where a run stopped: written every epoch and on SIGTERM or Ctrl-C

_created_run_dirs: dict[str, str] = {}  # base path -> the dir this process created for it
_created_parents: dict[str, list[Path]] = {}  # that dir -> the folders above it this process created


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """``<run dir>`` when ``ckpt_path`` is ``<run dir>/checkpoints/<file>`` of a run dir train.py wrote, else None.

    A checkpoint anywhere else (``~/Downloads/last.ckpt``) belongs to no run dir: resuming from it starts a
    new one rather than writing into the checkpoint's grandparent folder.
    """
    path = Path(ckpt_path).expanduser().resolve()
    run_dir = path.parent.parent
    if path.parent.name == CHECKPOINT_DIR and (run_dir / SAVED_CONFIG).is_file():
        return run_dir
    return None


def resume_run_dir(ckpt_path: str | Path) -> Path | None:
    """The run dir a run resumed from ``ckpt_path`` continues in: the checkpoint's own run dir when the checkpoint
    is where that run stopped (its ``last.ckpt``) and the run did not complete (it was interrupted, failed,
    diverged or killed, or its run dir predates ``run_status.json``); else None, and the resumed run gets a new
    run dir.

    A completed run is never written into again, and no run dir gets a second history: continuing from a best
    ``epochNNN-...ckpt``, or from a completed run's ``last.ckpt``, would replace the ``last.ckpt`` and best
    checkpoint the run ended with.
    """
    run_dir = run_dir_of_checkpoint(ckpt_path)
    if run_dir is None or Path(ckpt_path).expanduser().resolve().name != LAST_CHECKPOINT:
        return None
    status = read_status(run_dir)
    return None if status is not None and status["status"] == "completed" else run_dir


def slurm_step_task() -> tuple[int, str] | None:
    """``(task rank, step id)`` when SLURM started this script as one of several tasks of one job step
    (``srun -n 2 python train.py trainer=ddp ...``, Lightning's SLURM DDP): every task composes the config, and each
    would make a run dir of its own. None otherwise (one task, Lightning's own launcher, no SLURM)."""
    if int(os.environ.get("SLURM_NTASKS") or 1) < 2 or "SLURM_PROCID" not in os.environ:
        return None
    # SLURM_RESTART_COUNT: a requeued job numbers its steps from 0 again, and must not read the last start's note.
    step = ".".join(os.environ.get(k) or "0" for k in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_STEP_ID"))
    return int(os.environ["SLURM_PROCID"]), step


_JOINED_RUN_DIR_WAIT_S = 120.0  # how long a task waits for rank zero to name the run dir (all tasks start together)


def _run_dir_note(base: str, step: str) -> Path:
    # Beside the run dirs (outputs/<date>/): on the file system every node of the job writes its outputs to.
    return Path(base).parent / f".slurm-step-{step}.run_dir"


def _join_run_dir(base: str, step: str) -> str:
    """The run dir rank zero of this SLURM step made (it names it in a note beside it, see :func:`new_run_dir`)."""
    note, deadline = _run_dir_note(base, step), time.monotonic() + _JOINED_RUN_DIR_WAIT_S
    while not note.is_file():
        if time.monotonic() > deadline:
            raise UserError(
                f"SLURM task {os.environ['SLURM_PROCID']} waited {_JOINED_RUN_DIR_WAIT_S:.0f} s for task 0 to name the "
                f"run dir in {note}: is the output folder on a file system every node sees? Or set hydra.run.dir"
            )
        time.sleep(0.2)
    return note.read_text().strip()


def new_run_dir(base: str) -> str:
    """Create ``base`` (or ``base_2``, ``base_3``, ... if it exists) exclusively and return it.

    ``mkdir`` without ``exist_ok`` is atomic: two runs started in the same second get two dirs, never one
    shared dir. Called once per process and base; later calls return the same dir. The tasks of a SLURM step
    (:func:`slurm_step_task`) are one run: task 0 makes the dir and names it in a note, the others use that dir.
    """
    step = slurm_step_task()
    if step is not None and step[0] > 0:
        return _join_run_dir(base, step[1])
    if base not in _created_run_dirs:
        parents = [p for p in reversed(Path(base).parents) if not p.exists()]
        Path(base).parent.mkdir(parents=True, exist_ok=True)
        candidate, number = base, 1
        while True:
            try:
                os.mkdir(candidate)
                break
            except FileExistsError:
                number += 1
                candidate = f"{base}_{number}"
        _created_run_dirs[base] = candidate
        _created_parents[candidate] = parents
        if step is not None:  # written whole, then renamed: a task never reads half a path
            note = _run_dir_note(base, step[1])
            note.with_suffix(".tmp").write_text(candidate)
            note.with_suffix(".tmp").replace(note)
    return _created_run_dirs[base]


def created_run_dir(path: str | Path) -> bool:
    """Whether this process created the run dir ``path`` (rather than resuming into an existing one)."""
    return Path(path).resolve() in {Path(p).resolve() for p in _created_run_dirs.values()}


def remove_new_run_dir(path: str | Path) -> None:
    """Delete a run dir this process created (see :func:`created_run_dir`) and the folders it created above it,
    when empty: a run refused before it trained leaves nothing behind. A dir it did not create is kept."""
    path = Path(path)
    created = next((d for d in _created_run_dirs.values() if Path(d).resolve() == path.resolve()), None)
    if created is None:
        return
    shutil.rmtree(path, ignore_errors=True)
    for parent in reversed(_created_parents.get(created, [])):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


JOB_LABEL_LENGTH = 60  # characters; a job folder is "<job number>_<label>", far below the 255-byte name limit
_UNLABELLED = ("hydra.", "trainer.enable_", "~", "+callbacks", "callbacks", "logger", "ckpt_path", "optuna_trial")


def job_label(overrides: list[str], sweep_dir: str = "") -> str:
    """A short, readable folder label for a sweep job from its overrides (the full list stays in
    ``.hydra/overrides.yaml``).

    Only the overrides the sweep varies (read from ``<sweep_dir>/multirun.yaml``, which Hydra's sweeper writes
    before the jobs start; all of them when none is known to vary): those every job shares would tell the jobs
    apart in nothing and push the values out of TensorBoard's run table. Settings that only switch output off are
    left out, each key is shortened to its last part (``model.optimizer.lr=0.01`` -> ``lr=0.01``), characters a
    file name cannot hold are replaced, and the label is cut to :data:`JOB_LABEL_LENGTH` characters.
    """
    swept = _swept_keys(Path(sweep_dir) / "multirun.yaml") if sweep_dir else set()
    kept = [str(o) for o in overrides if not str(o).startswith(_UNLABELLED)]
    if any(o.partition("=")[0] in swept for o in kept):
        kept = [o for o in kept if o.partition("=")[0] in swept]
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, _, value in (o.partition("=") for o in kept)]
    label = ",".join(parts) or "defaults"
    label = "".join(c if c.isalnum() or c in "=,.-+" else "_" for c in label)
    return label[:JOB_LABEL_LENGTH]


def _swept_keys(multirun_yaml: Path) -> set[str]:
    """The keys a sweep varies: overrides with a comma list or a sweep function in the sweep's command line."""
    try:
        task = OmegaConf.load(multirun_yaml).hydra.overrides.task
    except Exception:  # no multirun.yaml (another sweeper) or an unreadable one: no order, still a label
        return set()
    sweeps = ("range(", "choice(", "interval(", "glob(")
    return {
        str(o).partition("=")[0]
        for o in task
        if "," in str(o).partition("=")[2] or str(o).partition("=")[2].startswith(sweeps)
    }


def register_resolvers() -> None:
    """Resolvers used by conf/hydra/default.yaml.

    ``${run_dir_for:${ckpt_path},<base>}``: when resuming a run from where it stopped, its run dir
    (:func:`resume_run_dir`); else a new dir made from ``<base>`` by :func:`new_run_dir`.
    ``${unique_dir:<base>}``: a new dir (sweeps).
    ``${config_subdir:${ckpt_path}}``: ``.hydra``, or ``.hydra/resumed-<time>`` when resuming into a run dir,
    so the original config is kept and the resumed run's config saved beside it. ``${job_label:<overrides>}``:
    a sweep job's folder label (:func:`job_label`).
    """

    def run_dir_for(ckpt: str | None, base: str) -> str:
        resumed = resume_run_dir(ckpt) if ckpt else None
        return str(resumed) if resumed is not None else new_run_dir(base)

    def config_subdir(ckpt: str | None) -> str | None:
        step = slurm_step_task()
        if step is not None and step[0] > 0:  # task 0 saves the run's config; null: Hydra writes no .hydra/
            return None
        if ckpt and resume_run_dir(ckpt) is not None:
            return f".hydra/resumed-{datetime.now():%Y-%m-%d_%H-%M-%S}"
        return ".hydra"

    for name, resolver in (("run_dir_for", run_dir_for), ("unique_dir", new_run_dir), ("config_subdir", config_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)  # one value per run
    if not OmegaConf.has_resolver("job_label"):
        OmegaConf.register_new_resolver("job_label", job_label)


# (key, kind): what each value the user is most likely to mistype must be.
_VALUES = (
    ("seed", "int"),
    ("trainer.max_epochs", "positive int"),
    ("model.optimizer.lr", "positive number"),
    ("data.val_size", "positive int"),
    ("data.split_seed", "int"),
    ("data.batch_size", "positive int"),
    ("data.eval_batch_size", "positive int"),
    ("data.image_size", "positive int"),
    ("data.load_size", "positive int"),  # or null: image_size
    ("data.num_classes", "positive int"),
    ("threads", "positive int"),  # or null: every core
)


def validate_train_config(cfg: DictConfig) -> None:
    """Reject settings Lightning or torch would accept silently or fail on with a traceback.

    Reads only the keys it checks (never ``run_dir`` or ``hydra``), so it can run before Hydra creates anything.

    Raises:
        UserError: naming the key, the value and what it must be.
    """
    for key, kind in _VALUES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None and key not in ("seed", "trainer.max_epochs"):
            continue  # an optional key this config does not have
        number = isinstance(value, int | float) and not isinstance(value, bool)
        whole = isinstance(value, int) and not isinstance(value, bool)
        ok = {
            "int": whole,
            "positive int": whole and value > 0,
            "positive number": number and value > 0,
        }[kind]
        if not ok:
            hint = " (or null: every core)" if key == "threads" else ""
            raise UserError(f"{key} must be a {kind.replace('int', 'whole number')}{hint}, got {value!r}")
    cache_dir = OmegaConf.select(cfg, "data.source.cache_dir", default=None)
    if isinstance(cache_dir, str) and Path(cache_dir).expanduser().is_file():
        raise UserError(
            f"data.source.cache_dir={cache_dir} is a file, not a folder; point it at a folder (it is created if "
            f"missing), or set data.source.cache_dir=null to decode every run."
        )
    # DDP converts BatchNorm to SyncBatchNorm, which runs only on GPUs, and fails while wrapping the model.
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if OmegaConf.select(cfg, "trainer.sync_batchnorm", default=False) and (
        accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    ):
        raise UserError(
            "trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm runs only on CUDA), but this run trains on the "
            "CPU: set trainer.sync_batchnorm=false, or train on GPUs."
        )


def check_resume(cfg: DictConfig) -> str:
    """When ``ckpt_path`` is set: the checkpoint is readable, fits the composed net, and continues the same run;
    returns a sentence saying where the run continues (its own run dir, or a new one: :func:`resume_run_dir`).

    Checked before anything is written: the file exists and the safe loader reads it; a checkpoint of a run
    dir is resumed with the model and data config that run had; its net weights fit ``model.net``; its cosine
    schedule was planned for as many epochs as this command plans (resuming with more epochs would not be the
    run one would get by training that long from the start, so it is refused rather than bent).

    Raises:
        UserError: naming the checkpoint and the fix (the original overrides to repeat, where known).
    """
    ckpt = Path(str(cfg.ckpt_path)).expanduser()
    if not ckpt.is_file():
        what = "is a folder" if ckpt.is_dir() else "does not exist"
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} {what}; give a checkpoint file such as <run dir>/checkpoints/last.ckpt"
        )
    run_dir = run_dir_of_checkpoint(ckpt)
    if run_dir is not None:
        saved = read_yaml(run_dir / SAVED_CONFIG)  # the run dir is untrusted: size-capped, no aliases
        for key in ("model", "data"):
            if OmegaConf.to_container(saved[key]) != OmegaConf.to_container(cfg[key], resolve=False):
                raise UserError(
                    f"{ckpt} was trained with a different '{key}' config than this command composes. "
                    f"Resume with the original overrides: {resume_command(cfg.ckpt_path, run_dir)}"
                )
    advice = "Resume from another checkpoint of the run, or start a new run."
    contents = read_resumable_checkpoint(ckpt, cfg.model.net, "model.net", advice)  # fits, bounded, Lightning 2.x
    planned = _planned_epochs(contents)
    configured = OmegaConf.select(cfg, "model.scheduler.T_max", default=None)
    if planned is not None and configured is not None and planned != configured:
        raise UserError(
            f"{ckpt} was trained with a cosine schedule over {planned} epochs; this command plans {configured} "
            f"(trainer.max_epochs={cfg.trainer.max_epochs}), and resuming would continue the old schedule past its "
            f"end (the learning rate falls to 0 and climbs again). Resume with trainer.max_epochs={planned}, or "
            f"start a new run with the number of epochs you want."
        )
    return _where_resumed(ckpt, run_dir)


def _where_resumed(ckpt: Path, run_dir: Path | None) -> str:
    """Where a run from ``ckpt`` continues, in words (see :func:`resume_run_dir`)."""
    if run_dir is None:
        return f"continuing from {ckpt} in a new run dir"
    if resume_run_dir(ckpt) is not None:
        return f"resuming {run_dir} from where it stopped ({ckpt.name})"
    why = "the run completed" if ckpt.resolve().name == LAST_CHECKPOINT else f"it is not the run's {LAST_CHECKPOINT}"
    return (
        f"continuing from {ckpt} in a new run dir: {why}, and a run is resumed in its own dir only from its "
        f"{LAST_CHECKPOINT}, when it did not complete. {run_dir} is left as it is."
    )


def _planned_epochs(contents: dict[str, Any]) -> int | None:
    """``T_max`` of the checkpoint's epoch-wise cosine schedule, if it has one."""
    for scheduler in contents.get("lr_schedulers") or []:
        if isinstance(scheduler, dict) and "T_max" in scheduler:
            return int(scheduler["T_max"])
    return None


def resume_command(ckpt_path: str | Path, run_dir: Path | None = None) -> str:
    """``python train.py <overrides> ckpt_path=<ckpt_path>``, to paste into a shell: the run's original overrides
    (from ``<run_dir>/.hydra/overrides.yaml``; ``<its overrides>`` when ``run_dir`` is None) and the checkpoint.

    Each override is quoted for the shell, and the path for Hydra's override parser too when it holds characters
    the parser reads as syntax (spaces, ``=`` and ``,`` in a sweep job's folder, non-ASCII letters):
    ``'ckpt_path="/a b/0_lr=0.1,x=2/checkpoints/last.ckpt"'``. The overrides file is untrusted, so quoting also
    keeps a crafted entry from being run by the shell.
    """
    overrides = ["<its overrides>"]
    if run_dir is not None:
        path = run_dir / SAVED_OVERRIDES
        saved = read_yaml(path) if path.is_file() else []  # untrusted: size-capped, no aliases
        saved = saved if isinstance(saved, ListConfig | list) else []
        # An Optuna trial's job: its parameters stay; the search and the trial it reported to do not (resuming
        # must not start a new sweep).
        dropped = ("ckpt_path=", "hparams_search=", "optuna_trial=", "+optuna_trial=")
        overrides = [shlex.quote(str(o)) for o in saved if not str(o).startswith(dropped)]
    return " ".join(["python train.py", *overrides, shlex.quote(f"ckpt_path={hydra_value(str(ckpt_path))}")])


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_/.+@%-]+")  # characters Hydra's override parser reads as a plain string


def hydra_value(text: str) -> str:
    """``text`` as a Hydra override value: as it is when plain, else double-quoted, with ``"`` escaped and the
    backslashes before a quote doubled (Hydra's rule for quoted values)."""
    if _PLAIN_VALUE.fullmatch(text):
        return text
    escaped = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f'"{escaped}"'


def hyperparameters(cfg: DictConfig, choices: dict[str, str], parameters: int) -> dict[str, Any]:
    """The settings that tell the runs of a sweep apart, flat and plain, for TensorBoard's HParams tab.

    The net's settings are read from its config whatever the net: every argument of ``model.net`` that is not
    taken from the data (``${data...}``), lists written as text (``32 M 64 M``).

    Args:
        cfg: the run's composed config.
        choices: the config group options it was composed from (``model``, ``data``, ``trainer``, ...).
        parameters: the net's trainable parameter count.
    """
    net, optimizer = cfg.model.get("net", {}), cfg.model.get("optimizer", {})
    values: dict[str, Any] = {
        "model": choices.get("model"),
        "data": choices.get("data"),
        "trainer": choices.get("trainer"),
        "net": str(net.get("_target_", "")).rsplit(".", 1)[-1],
        **_net_settings(net),
        "parameters": parameters,
        "optimizer": str(optimizer.get("_target_", "")).rsplit(".", 1)[-1],
        "lr": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "batch_size": cfg.data.get("batch_size"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "precision": str(cfg.trainer.get("precision")),
        "seed": cfg.get("seed"),
    }
    return {key: value for key, value in values.items() if value is not None}


def _net_settings(net: DictConfig) -> dict[str, Any]:
    """``model.net``'s own arguments as HParams values: plain values as they are, lists as text; the arguments
    interpolated from ``data`` (classes, channels, size) and nested configs left out."""
    if not isinstance(net, DictConfig):
        return {}
    written, resolved = OmegaConf.to_container(net, resolve=False), OmegaConf.to_container(net, resolve=True)
    settings: dict[str, Any] = {}
    for key, value in resolved.items():
        if key.startswith("_") or str(written[key]).startswith("${data."):
            continue
        if isinstance(value, list):
            settings[key] = " ".join(str(item) for item in value)
        elif isinstance(value, bool | int | float | str):
            settings[key] = value
    return settings
