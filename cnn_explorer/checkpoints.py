"""Reading train.py's checkpoints safely: the file, the net's weights in it, and whether they fit a net.

A checkpoint is untrusted input (it may come from a download or a colleague): it is read with
``torch.load(weights_only=True)``, which refuses pickled objects that could run code, and the refusal is
reported as such, never with advice to switch the check off.

What reading one may cost is bounded before anything is allocated (:func:`read_checkpoint_for`): the net the
config describes is built on the meta device (no memory) and must be of a sane size, the file's pickled part is
capped, its tensors are memory-mapped rather than read, and the whole must be no larger than that net's weights
and optimizer state can be.
"""

from __future__ import annotations

import re
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

import cnn_explorer.airbench  # noqa: F401  (registers AirbenchNet)
import cnn_explorer.detection  # noqa: F401  (registers the detection sources, DataModule and detector)
import cnn_explorer.models  # noqa: F401  (registers the nets a run dir may name)
import cnn_explorer.standard_nets  # noqa: F401  (registers torchvision_net, resnet18_cifar, efficientnet_lite0)
from cnn_explorer.errors import UserError
from cnn_explorer.models import weight_mismatches
from cnn_explorer.safe_config import build

NET_PREFIX = "net."  # Classifier keeps the net as self.net, so its weights are "net.<name>" in the state_dict
MAX_NET_VALUES = 1000  # values in a model.net config: this project's nets have a few dozen
MAX_NET_ELEMENTS = 10**9  # weights and buffers: 4 GB as float32, far above any net this project trains
# Per weight, a checkpoint holds the weight and at most three optimizer values (Adam with amsgrad keeps
# exp_avg, exp_avg_sq and max_exp_avg_sq), each as wide as the weight.
STATE_PER_WEIGHT = 4
LIGHTNING_STATE_BYTES = 4 * 2**20  # beside them: loops, callbacks, metrics, RNG states (a few KB in practice)
MAX_PICKLE_BYTES = 2**20  # the checkpoint's pickled part (data.pkl): its keys and plain values, ~8 KB in practice


def read_checkpoint(path: Path, advice: str) -> dict[str, Any]:
    """The checkpoint's contents, read with the safe loader onto the CPU.

    Args:
        path: the checkpoint file.
        advice: what the user can do if it cannot be read (appended to the message).

    Raises:
        UserError: if the file is truncated or corrupt, not the zip archive torch.save writes, has a pickled part
            larger than :data:`MAX_PICKLE_BYTES`, holds objects the safe loader refuses, or is not a Lightning
            checkpoint.
    """
    try:
        _check_archive(path)
        # mmap: tensors stay on disk until used, so a checkpoint costs memory only for what is read from it.
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UserError:
        raise
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


def _check_archive(path: Path) -> None:
    """A checkpoint is a zip archive of stored (uncompressed) entries: its pickled part is read into memory, so
    it must be small, and a compressed entry could unpack to any size."""
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            if entry.compress_type != zipfile.ZIP_STORED:
                raise UserError(
                    f"{path} holds a compressed entry ({entry.filename}), which torch.save never writes; it was not "
                    f"loaded. Use only checkpoints train.py wrote."
                )
            if entry.filename.endswith("data.pkl") and entry.file_size > MAX_PICKLE_BYTES:
                raise UserError(
                    f"{path}: its pickled part ({entry.filename}) is {entry.file_size} bytes, more than the "
                    f"{MAX_PICKLE_BYTES} read from a checkpoint (train.py's are ~8 KB); it was not loaded. Use only "
                    f"checkpoints train.py wrote."
                )


def build_net(node: DictConfig, where: str) -> nn.Module:
    """The net a ``model.net`` config describes, built from the registered classes
    (:func:`~cnn_explorer.safe_config.buildable`: :mod:`cnn_explorer.models` registers its nets)."""
    return build(node, "net", nn.Module, where)


def read_checkpoint_for(path: Path, node: DictConfig, where: str, advice: str) -> dict[str, Any]:
    """The checkpoint's contents, read only once its net weights are known to fit the net ``node`` describes and
    the file holds no more than that net's training state can: nothing the config or the checkpoint asks for is
    allocated before both are checked. analyze.py and train.py's resume check both read checkpoints this way.

    1. The net is built on the meta device (shapes, no memory); a config of more than :data:`MAX_NET_VALUES`
       values or a net of more than :data:`MAX_NET_ELEMENTS` weights is refused.
    2. The checkpoint is read with :func:`read_checkpoint` (its tensors memory-mapped, not read).
    3. Its ``net.*`` weights must have the net's names and shapes (:func:`check_weights_fit`).
    4. Its size must be at most :data:`STATE_PER_WEIGHT` values per weight, as wide as its weights, plus
       :data:`LIGHTNING_STATE_BYTES`: anything beyond belongs to nothing the net or its training has.

    Args:
        path: the checkpoint file.
        node: the ``model.net`` config (through the allowlist, as :func:`build_net`).
        where: what the config is, for messages (e.g. "model.net in RUN/.hydra/config.yaml").
        advice: what the user can do if the file cannot be read.

    Raises:
        UserError: naming the checkpoint, the config and the bound or mismatch.
    """
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise UserError(f"{where} is not a net config: it needs a _target_ naming the net and its arguments")
    if _count_values(plain) > MAX_NET_VALUES:
        raise UserError(
            f"{where} has more than {MAX_NET_VALUES} values (this project's nets have a few dozen): not a net "
            f"train.py trained. Was the config edited?"
        )
    with torch.device("meta"):  # parameters get shapes but no storage
        shapes = build_net(node, where)
    elements = sum(tensor.numel() for tensor in shapes.state_dict().values())
    if elements > MAX_NET_ELEMENTS:
        raise UserError(
            f"{where} describes a net of {elements:,} weights, more than the {MAX_NET_ELEMENTS:,} this project "
            f"builds (4 GB as float32); it was not built. Was the config edited (e.g. model.net.hidden)?"
        )
    contents = read_checkpoint(path, advice)
    weights = net_weights(contents, path)
    architecture = plain.get("architecture") or plain.get("name")
    described = f"{where} ({plain.get('_target_')}{', ' + str(architecture) if architecture else ''})"
    check_weights_fit(shapes, weights, path, described)
    width = max(tensor.element_size() for tensor in weights.values())
    bound = STATE_PER_WEIGHT * elements * width + LIGHTNING_STATE_BYTES
    size = path.stat().st_size
    if size > bound:
        raise UserError(
            f"{path} is {size:,} bytes, more than a checkpoint of the net described by {where} can need: "
            f"{bound:,} bytes ({STATE_PER_WEIGHT} values per weight of its {elements:,} weights, {width} bytes each: "
            f"the weight and the optimizer's state, plus {LIGHTNING_STATE_BYTES:,} for Lightning's own state). It "
            f"carries data that belongs to nothing the net or its training has; it was not used. Use the "
            f"checkpoint train.py wrote."
        )
    return contents


def read_resumable_checkpoint(path: Path, node: DictConfig, where: str, advice: str) -> dict[str, Any]:
    """:func:`read_checkpoint_for`, and the checkpoint's Lightning version is one the installed Lightning resumes.

    Lightning upgrades older checkpoints as it loads them, but its migrations of 1.x training-loop state fail on
    checkpoints that lack keys they expect (``KeyError: 'epoch_loop.batch_loop...'``): resuming needs a
    checkpoint of the installed major version (this project's are all 2.x).

    Raises:
        UserError: as :func:`read_checkpoint_for`, or when the version is missing or of an older major version.
    """
    contents = read_checkpoint_for(path, node, where, advice)
    written_by, installed = contents.get("pytorch-lightning_version"), version("lightning")
    major = re.match(r"(\d+)\.", str(written_by))
    if major is None or int(major[1]) < int(installed.split(".")[0]):
        what = f"written by Lightning {written_by}" if written_by is not None else "not marked with a Lightning version"
        raise UserError(
            f"{path} was {what}; the installed Lightning {installed} resumes only checkpoints of Lightning "
            f"{installed.split('.')[0]}.x, as older ones keep the training loop's state in another layout. "
            f"Start a new run instead."
        )
    return contents


def _count_values(node: Any) -> int:
    if isinstance(node, dict):
        return sum(1 + _count_values(value) for value in node.values())
    if isinstance(node, list):
        return sum(1 + _count_values(value) for value in node)
    return 0


def check_weights_fit(net: nn.Module, weights: dict[str, Tensor], path: Path, described_by: str) -> None:
    """Check that ``weights`` load into ``net``: same names, same shapes.

    Raises:
        UserError: listing missing and unexpected names and different shapes (three of each at most).
    """
    problems = weight_mismatches(net.state_dict(), weights, "ckpt vs config")
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
    try:
        torch.save({key: value.detach().cpu() for key, value in net.state_dict().items()}, partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk or an interrupt: no half-written file left in the run dir
        raise


def read_initial_weights(run_dir: Path) -> dict[str, Tensor] | None:
    """The weights saved by :func:`save_initial_weights`, or None for a run that has none (trained before they
    were saved) or an unreadable file."""
    try:
        # mmap: a run dir's file costs memory only for the weights read from it, whatever its size
        weights = torch.load(Path(run_dir) / INITIAL_WEIGHTS, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, truncated or foreign: the report then says there is no baseline
        return None
    return weights if isinstance(weights, dict) else None
