"""Evaluate a run that was read from disk: its net on a device, its data, test-set predictions, the probe set.

:func:`evaluate_run` is the second step of a report (read the run -> evaluate -> sections -> write): everything
the report's sections compute from is here, computed once. The data are built from the run's config through
the allowlist of :mod:`cnn_explorer.safe_config`, with downloads off: analysis reads the data the run trained
on, it does not fetch new data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from cnn_explorer.augment import TTA_MODES, tta_logits
from cnn_explorer.config import SAVED_CONFIG
from cnn_explorer.data import ImageClassificationDataModule, ProbeSet
from cnn_explorer.errors import UserError
from cnn_explorer.interpret import confusion_matrix
from cnn_explorer.rundir import Run, load_net, run_launch_dir
from cnn_explorer.safe_config import build


@dataclass(frozen=True)
class EvaluationOptions:
    """How to evaluate: ``device`` ("auto", "cpu", "cuda", ...), test ``batch_size``, a ``data_root`` that
    replaces the run's ``data.source.root`` (``None``: the run's), and per-section settings (``methods``: the
    attribution methods to run, ``None`` for every registered one; ``faithfulness_images``: test images of the
    deletion/insertion curves, the first of each class)."""

    device: str = "auto"
    batch_size: int = 1000
    data_root: str | None = None
    methods: list[str] | None = None
    faithfulness_images: int = 200


@dataclass(frozen=True)
class Predictions:
    """The net's outputs on a labelled image set.

    Attributes:
        logits: float32 ``[N, C]`` on the CPU.
        labels: int64 ``[N]``.
        images: uint8 ``[N, C_in, H, W]``, as stored (not normalized), for showing mistakes.
        confusion: int64 ``[C, C]`` counts, rows = true class.
    """

    logits: Tensor
    labels: Tensor
    images: Tensor
    confusion: Tensor = field(repr=False)

    @property
    def predicted(self) -> Tensor:
        """int64 ``[N]``: argmax of the logits."""
        return self.logits.argmax(dim=1)


@dataclass(frozen=True)
class Evaluation:
    """Everything a report section computes from.

    Attributes:
        run: what was read from the run dir.
        net: the best checkpoint's net, in eval mode, on ``device``.
        datamodule: the run's data, set up (validation and test images in memory).
        device: where the net runs.
        test: the net's predictions on the whole test set.
        probe: the probe set (one validation image per class), and ``probe_predicted`` its predicted classes.
        options: the evaluation options.
    """

    run: Run
    net: nn.Module
    datamodule: ImageClassificationDataModule
    device: torch.device
    test: Predictions
    probe: ProbeSet
    probe_predicted: Tensor
    options: EvaluationOptions

    @property
    def classes(self) -> list[str]:
        return list(self.datamodule.classes)

    def view_settings(self, callback: str) -> dict[str, Any]:
        """The run's settings of the view callback ``callback`` (``callbacks.<callback>`` in its config, without
        ``_target_`` and the cadence), so the report draws each view as the run's TensorBoard did; ``{}`` if absent.
        """
        node = self.run.config.get("callbacks", {}).get(callback)
        if not isinstance(node, DictConfig):
            return {}
        settings = OmegaConf.to_container(node, resolve=True)
        return {k: v for k, v in settings.items() if not k.startswith("_") and k != "every_n_epochs"}


def evaluate_run(run: Run, options: EvaluationOptions) -> Evaluation:
    """Load the best checkpoint's net and the run's data, and run the test set and the probe set through the net.

    Raises:
        UserError: on a device this machine lacks, a checkpoint that does not fit the config, or data that
            cannot be found or loaded.
    """
    device = pick_device(options.device)
    net = load_net(run.config, run.checkpoint.path).to(device)
    datamodule = load_datamodule(run.config, options.data_root)
    test = predict(
        net, datamodule, datamodule.test_images, datamodule.test_labels, options.batch_size, test_time_views(run.config)
    )
    probe = datamodule.probe_set(per_class=1)
    with torch.inference_mode():
        probe_predicted = net(probe.inputs.to(device)).argmax(dim=1).cpu()
    return Evaluation(run, net, datamodule, device, test, probe, probe_predicted, options)


def test_time_views(config: DictConfig) -> str:
    """The run's ``model.tta`` (test-time augmentation of its test step), checked: a run dir's config is untrusted.

    Raises:
        UserError: if it names no mode of :data:`.augment.TTA_MODES`.
    """
    model = config.get("model")
    tta = model.get("tta", "none") if isinstance(model, DictConfig) else "none"
    if tta not in TTA_MODES:
        raise UserError(f"model.tta in the run's config must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


def pick_device(name: str) -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; anything else as torch spells it.

    Raises:
        UserError: on a name torch does not know, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    return device


def load_datamodule(cfg: DictConfig, data_root: str | None = None, kind: type = ImageClassificationDataModule) -> Any:
    """The run's DataModule from ``cfg.data``, built through the allowlist as a ``kind`` (the classification
    DataModule by default; the detection task's for a detection run), set up, with the test images in memory.

    A relative ``data.source.root`` is resolved against the dir train.py was launched from (Hydra does not
    chdir); it is tried there, then against the current dir. ``data_root`` replaces it. Downloads are
    switched off.

    Raises:
        UserError: if the data root does not exist (the message says how to point to it), or the source
            cannot load its images.
    """
    data_cfg = cfg.data.copy()
    source = data_cfg.get("source")
    config_path = Path(cfg.run_dir) / SAVED_CONFIG
    if isinstance(source, DictConfig) and "root" in source:
        given = data_root if data_root is not None else str(source.root)
        root = _resolve_root(given, None if data_root is not None else run_launch_dir(Path(cfg.run_dir)))
        if root is None:
            raise UserError(
                f"the data of {cfg.run_dir} are not at {given} (data.source.root in {config_path}, tried against "
                f"the dir the run was launched from and the current dir {Path.cwd()}). Point to them with "
                f"python analyze.py {cfg.run_dir} --data-root /path/to/the/data"
            )
        source.root = str(root)
        if "download" in source:
            source.download = False
    datamodule = build(data_cfg, "data", kind, f"data in {config_path}")
    try:
        datamodule.setup("test")
    except UserError:
        raise
    except OSError as err:  # sources raise OSError on unreadable files
        raise UserError(f"cannot load the data described by 'data' in {config_path}: {err}") from err
    return datamodule


def _resolve_root(root: str, launch_dir: Path | None) -> Path | None:
    path = Path(os.path.expanduser(root))
    if path.is_absolute():
        return path if path.exists() else None
    for base in (launch_dir, Path.cwd()):
        if base is not None and (base / path).exists():
            return (base / path).resolve()
    return None


def predict(
    net: nn.Module,
    datamodule: ImageClassificationDataModule,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    tta: str = "none",
) -> Predictions:
    """Run ``images`` (uint8, as stored) through ``net`` in eval mode, in batches, without gradients.

    Batches are normalized by the DataModule's own ``prepare_batch(..., train=False)``, the transform the
    test loop used in training, and averaged over the run's test-time views (``tta``, :func:`.augment.tta_logits`)
    as its test step did, so the accuracy matches the logged ``test/acc``.
    """
    device = next(net.parameters()).device
    net.eval()
    images, labels = images.cpu(), labels.cpu()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            batch = (images[start : start + batch_size].to(device), labels[start : start + batch_size].to(device))
            inputs, _ = datamodule.prepare_batch(batch, train=False)
            outputs.append(tta_logits(net, inputs, tta).float().cpu())
    logits = torch.cat(outputs)
    return Predictions(logits, labels, images, confusion_matrix(logits.argmax(1), labels, logits.shape[1]))
