"""Build this project's objects from a config that came from disk, without running what it names.

A run dir is data someone may have sent you: its ``.hydra/config.yaml`` could name any importable callable
as a ``_target_`` (``torch.load`` with ``weights_only: false`` unpickles and runs a file). analyze.py
therefore never hands a run's config to ``hydra.utils.instantiate``; :func:`build` constructs only the
classes in an allowlist, with plain values as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnn_explorer.errors import UserError


def build(node: DictConfig | Mapping[str, Any], allowed: Mapping[str, type], where: str) -> Any:
    """Construct ``node``'s ``_target_`` from ``allowed``, its arguments built the same way where they are configs.

    Args:
        node: a config with a ``_target_`` and the constructor's keyword arguments (interpolations resolved).
        allowed: ``{"dotted.ClassName": class}``, every target that may be built (nested ones included).
        where: what the node is, for messages (e.g. "model.net in RUN/.hydra/config.yaml").

    Raises:
        UserError: on a target outside ``allowed``, a Hydra directive (``_partial_``, ``_args_``, ...), a
            value that is not plain data, or a constructor that rejects the arguments.
    """
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
    return _build(plain, allowed, where)


def _build(node: Any, allowed: Mapping[str, type], where: str) -> Any:
    if isinstance(node, list):
        return [_build(item, allowed, where) for item in node]
    if not isinstance(node, dict):
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise UserError(f"{where}: {node!r} is not plain data")
    if "_target_" not in node:
        return {key: _build(value, allowed, where) for key, value in node.items()}
    target = node["_target_"]
    if target not in allowed:
        raise UserError(
            f"{where} names _target_ {target!r}, which analyze.py does not build: only this project's own "
            f"classes are built from a run dir ({', '.join(sorted(allowed))}). Was the config edited?"
        )
    directives = [key for key in node if key.startswith("_") and key != "_target_"]
    if directives:
        raise UserError(f"{where}: Hydra directives {directives} are not accepted in a run dir's config")
    kwargs = {key: _build(value, allowed, where) for key, value in node.items() if key != "_target_"}
    try:
        return allowed[target](**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {where} ({target}): {err}") from err
