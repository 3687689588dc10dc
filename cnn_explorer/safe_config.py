"""Build this project's objects from a config that came from disk, without running what it names.

A run dir is data someone may have sent you: its ``.hydra/config.yaml`` could name any importable callable
as a ``_target_`` (``torch.load`` with ``weights_only: false`` unpickles and runs a file). analyze.py
therefore never hands a run's config to ``hydra.utils.instantiate``; :func:`build` constructs only the
classes registered with :func:`buildable` (the allowlist :data:`BUILDABLE`, filled by a decorator beside each
class: adding a model or a data source is its class, its config file and that one line), in the role they were
registered for, with plain values as arguments.

Reading such a config costs only what its size allows: :func:`read_yaml` caps the file's size and refuses YAML
anchors and aliases (Hydra never writes them; nested aliases expand a few lines into billions of values), and
:func:`check_interpolations` refuses resolvers (``${oc.env:HOME}``, ``${oc.decode:...}``) outside a short list
of this project's own, and node references that would expand the config many times over.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.grammar_parser import parse

from cnn_explorer.errors import UserError

MAX_YAML_BYTES = 2**20  # per file: Hydra's saved configs are a few KB
# Values and characters node references may add to a config when resolved: Hydra's own add a few hundred.
MAX_EXPANSION = 1_000_000
_PLAIN_KEY = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)*")  # ${seed}, ${data.num_classes}, ${a.list.0}

BUILDABLE: dict[str, dict[str, Callable[..., Any]]] = {}
"""``{role: {"dotted.name": class or builder}}``: everything a run dir's config may name, by what it is built as
(``"net"``: ``model.net``; ``"data"``: ``data`` and its source), see :func:`buildable`."""
_Class = TypeVar("_Class", bound=Callable[..., Any])


def buildable(role: str, *former_names: str) -> Callable[[_Class], _Class]:
    """Decorator of a class or builder function: it may be built from a run dir's config (its ``_target_``) by
    :func:`build`, in the config node of that ``role`` only (a net is never built where data are described, and back).

    Args:
        role: ``"net"`` or ``"data"``.
        former_names: dotted names the class had before a rename, so that older run dirs still analyze.

    Example::

        @buildable("net")
        class ConvNet(nn.Module): ...
    """

    def register(cls: _Class) -> _Class:
        for name in (f"{cls.__module__}.{cls.__qualname__}", *former_names):
            BUILDABLE.setdefault(role, {})[name] = cls
        return cls

    return register


def build(node: DictConfig | Mapping[str, Any], role: str, kind: type, where: str) -> Any:
    """Construct ``node``'s ``_target_`` from the classes registered for ``role`` (:func:`buildable`), its
    arguments built the same way where they are configs, and check that the result is a ``kind``.

    Args:
        node: a config with a ``_target_`` and the constructor's keyword arguments (interpolations resolved).
        role: ``"net"`` or ``"data"``: which registered classes may be named.
        kind: what the node must describe (``nn.Module`` for a net, the DataModule class for data).
        where: what the node is, for messages (e.g. "model.net in RUN/.hydra/config.yaml").

    Raises:
        UserError: on a target not registered for ``role``, a Hydra directive (``_partial_``, ``_args_``, ...),
            a value that is not plain data, a constructor that rejects the arguments, or a result of another kind.
    """
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
    built = _build(plain, BUILDABLE.get(role, {}), where)
    if not isinstance(built, kind):
        raise UserError(f"{where} describes a {type(built).__name__}, not a {kind.__name__}. Was the config edited?")
    return built


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


def read_capped(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it holds more than ``max_bytes``: never more than ``max_bytes + 1`` bytes
    are read, whatever the file (or a device it links to) holds.

    Raises:
        OSError: if the file cannot be opened or read.
    """
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    return data if len(data) <= max_bytes else None


def read_yaml(path: Path, max_bytes: int = MAX_YAML_BYTES) -> DictConfig | ListConfig:
    """A YAML file from an untrusted run dir, read only when it is small and has no anchors or aliases.

    Nothing is expanded or resolved here: interpolations stay as written (see :func:`check_interpolations`).

    Raises:
        UserError: if the file cannot be read, is larger than ``max_bytes``, holds an anchor or alias, or is not
            YAML; the message names the file and the fix.
    """
    try:
        data = read_capped(path, max_bytes)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if data is None:
        raise UserError(
            f"{path} is larger than {max_bytes} bytes, the most read from a run dir's config file (train.py writes "
            f"a few KB): it is not a file train.py wrote. Restore the run dir's .hydra/ from a copy."
        )
    try:
        text = data.decode("utf-8")
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1
                raise UserError(
                    f"{path} line {line} uses a YAML anchor or alias (&name, *name), which train.py never writes and "
                    f"which can expand a few lines into billions of values; it was not loaded. Write the values out "
                    f"in full, or restore the file from a copy."
                )
        return OmegaConf.load(io.StringIO(text))
    except UserError:
        raise
    except Exception as err:  # yaml, OmegaConf and the decoder raise several types for a damaged file
        raise UserError(f"{path} is not a readable config ({type(err).__name__}: {err})") from None


def check_interpolations(cfg: DictConfig, path: Path, trusted: Mapping[str, Collection[str]]) -> None:
    """Refuse interpolations an untrusted config could misuse, before anything resolves them.

    Allowed: plain references to the config's own keys (``${seed}``, ``${data.num_classes}``, also inside text
    such as ``${run_dir}/checkpoints``) as long as resolving them adds at most :data:`MAX_EXPANSION` values and
    characters, and the exact values in ``trusted`` (``{"dotted.key": {"${oc.env:...}"}}``), the resolvers
    this project's own config files write. Any other resolver (``${oc.env:HOME}``, ``${oc.decode:...}``) would
    read the environment or build values the config's author chose, so it is refused.

    Raises:
        UserError: naming the key, the interpolation and the fix.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    references: dict[str, list[str]] = {}
    for key, value in _strings(raw, ""):
        if "${" not in value or value in trusted.get(key, ()):
            continue
        try:
            tree = parse(value)
        except GrammarParseError as err:
            raise UserError(f"{path}: {key}: {value!r} is not a valid interpolation ({err})") from None
        resolvers = _resolver_names(tree)
        if resolvers:
            raise UserError(
                f"{path}: {key} calls the resolver {resolvers[0]!r} ({value!r}). A run dir's config may refer to its "
                f"own keys (like ${{seed}}) but run no resolver: it could read your environment or build values "
                f"its author chose. Replace the value with the plain value it stands for."
            )
        references[key] = _referenced_keys(tree, key, value, path)
    added = _expansion(raw, references, path)
    if added > MAX_EXPANSION:
        raise UserError(
            f"{path}: its references (${{key}}) would add {added} values and characters when resolved, more than "
            f"the {MAX_EXPANSION} allowed (Hydra's own configs add a few hundred); it was not resolved. Restore the "
            f"file from a copy."
        )


def _strings(node: Any, prefix: str) -> list[tuple[str, str]]:
    """``(dotted key, value)`` of every string in a plain config, list items keyed by index."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = []
    for name, value in items:
        key = f"{prefix}.{name}" if prefix else str(name)
        found += [(key, value)] if isinstance(value, str) else _strings(value, key)
    return found


def _resolver_names(tree: Any) -> list[str]:
    if isinstance(tree, OmegaConfGrammarParser.InterpolationResolverContext):
        return [tree.resolverName().getText()]
    return [name for child in getattr(tree, "children", None) or [] for name in _resolver_names(child)]


def _referenced_keys(tree: Any, key: str, value: str, path: Path) -> list[str]:
    if isinstance(tree, OmegaConfGrammarParser.InterpolationNodeContext):
        target = tree.getText()[2:-1]
        if not _PLAIN_KEY.fullmatch(target):
            raise UserError(
                f"{path}: {key} holds {value!r}; a run dir's config may refer only to absolute keys such as "
                f"${{data.num_classes}} (no relative, indexed or nested references). Write the value out."
            )
        return [target]
    return [
        name for child in getattr(tree, "children", None) or [] for name in _referenced_keys(child, key, value, path)
    ]


def _expansion(raw: Any, references: Mapping[str, list[str]], path: Path) -> int:
    """How many values and characters resolving ``references`` would add to ``raw``: each reference adds the
    size of what it names, references in it included. A missing key or a loop is refused."""
    sizes: dict[str, int] = {}
    visiting: set[str] = set()

    def size(key: str, node: Any) -> int:
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise UserError(f"{path}: {key} refers to itself through its references; write its value out")
        visiting.add(key)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        total = 1 + (len(node) if isinstance(node, str) else 0)
        total += sum(size(f"{key}.{name}" if key else str(name), value) for name, value in items)
        total += sum(size(target, _select(raw, target, key, path)) for target in references.get(key, []))
        visiting.discard(key)
        sizes[key] = total
        return total

    try:
        return size("", raw) - _plain_size(raw)
    except RecursionError:
        raise UserError(f"{path}: its references chain too deep to resolve; write the values out") from None


def _plain_size(node: Any) -> int:
    items = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return 1 + (len(node) if isinstance(node, str) else 0) + sum(_plain_size(value) for value in items)


def _select(raw: Any, target: str, key: str, path: Path) -> Any:
    node = raw
    for name in target.split("."):
        if isinstance(node, dict) and name in node:
            node = node[name]
        elif isinstance(node, list) and name.isdigit() and int(name) < len(node):
            node = node[int(name)]
        else:
            raise UserError(f"{path}: {key} refers to ${{{target}}}, which the config does not have")
    return node
