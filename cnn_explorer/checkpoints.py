"""Reading train.py's checkpoints safely: the file, the net's weights in it, and whether they fit a net.

A checkpoint is untrusted input (it may come from a download or a colleague): it is read with
``torch.load(weights_only=True)``, which refuses pickled objects that could run code, and the refusal is
reported as such, never with advice to switch the check off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cnn_explorer.errors import UserError
from cnn_explorer.models import ConvNet
from cnn_explorer.safe_config import build

NET_PREFIX = "net."  # Classifier keeps the net as self.net, so its weights are "net.<name>" in the state_dict
NETS = {"cnn_explorer.models.ConvNet": ConvNet}  # the nets a config's model.net may describe


def read_checkpoint(path: Path, advice: str) -> dict[str, Any]:
    """The checkpoint's contents, read with the safe loader onto the CPU.

    Args:
        path: the checkpoint file.
        advice: what the user can do if it cannot be read (appended to the message).

    Raises:
        UserError: if the file is truncated or corrupt, holds objects the safe loader refuses, or is not a
            Lightning checkpoint.
    """
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        text = str(err)
        if "unsupported global" in text.lower():  # the safe loader met a reference to code: crafted or foreign
            raise UserError(
                f"{path} holds Python objects other than tensors and plain data, which could run code when loaded; "
                f"it was not loaded. Use only checkpoints train.py wrote."
            ) from None
        # torch's own text around an unpickling error suggests switching the safe loader off: never pass that on.
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        if "weights only load failed" in text.lower():
            reason = found[1].strip() if found else "not a torch checkpoint"
        else:
            reason = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise UserError(
            f"cannot read checkpoint {path}: it is truncated or corrupt ({type(err).__name__}: {reason}). {advice}"
        ) from None
    if not isinstance(contents, dict) or not isinstance(contents.get("state_dict"), dict):
        raise UserError(f"{path} is not a Lightning checkpoint: it has no 'state_dict'")
    return contents


def net_weights(contents: dict[str, Any], path: Path) -> dict[str, Tensor]:
    """The ``state_dict`` entries under ``net.``, prefix removed (other module state such as
    ``val_acc_best.*`` is dropped).

    Raises:
        UserError: if there are none.
    """
    state = contents["state_dict"]
    weights = {key.removeprefix(NET_PREFIX): value for key, value in state.items() if key.startswith(NET_PREFIX)}
    if not weights:
        raise UserError(f"{path} has no '{NET_PREFIX}*' weights: it was not written by train.py's Classifier")
    return weights


def build_net(node: DictConfig, where: str) -> nn.Module:
    """The net a ``model.net`` config describes, built through the allowlist :data:`NETS`."""
    return build(node, NETS, where)


def check_weights_fit(net: nn.Module, weights: dict[str, Tensor], path: Path, described_by: str) -> None:
    """Check that ``weights`` load into ``net``: same names, same shapes.

    Raises:
        UserError: listing missing and unexpected names and different shapes (three of each at most).
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    resized = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape (ckpt vs config)", resized))
        if names
    ]
    if problems:
        raise UserError(
            f"{path} does not fit the net described by {described_by}: {'; '.join(problems)}. "
            f"Was the config edited, or the checkpoint copied from another run or model?"
        )


INITIAL_WEIGHTS = "initial_weights.pt"  # in the run dir: the net's weights before the first step


def save_initial_weights(net: nn.Module, run_dir: Path) -> None:
    """Keep the net's weights as training starts, so every run can answer "what did training change?"."""
    path = Path(run_dir) / INITIAL_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)  # Hydra makes it; an in-process train(cfg) may not have
    partial = path.with_suffix(".tmp")
    torch.save({key: value.detach().cpu() for key, value in net.state_dict().items()}, partial)
    partial.replace(path)


def read_initial_weights(run_dir: Path) -> dict[str, Tensor] | None:
    """The weights saved by :func:`save_initial_weights`, or None for a run that has none (trained before they
    were saved) or an unreadable file."""
    try:
        weights = torch.load(Path(run_dir) / INITIAL_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: the report then says there is no baseline
        return None
    return weights if isinstance(weights, dict) else None
