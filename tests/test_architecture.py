"""The rooms of the house and which way imports go between them, read from the source (no code is run).

interpret/   pure torch methods: no drawing, no Lightning, no TensorBoard, no Hydra
render/      grids and figures: no Lightning, no TensorBoard, no Hydra, not the report
callbacks/   glue: never the report or analysis modules
nothing      imports train.py or analyze.py; nothing in cnn_explorer imports callbacks; nobody uses pyplot
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [*ROOT.glob("cnn_explorer/**/*.py"), *ROOT.glob("callbacks/**/*.py"), ROOT / "train.py", ROOT / "analyze.py"]
)

# (folder or file, forbidden import prefixes, why)
RULES = [
    (
        "cnn_explorer/interpret",
        ("lightning", "tensorboard", "matplotlib", "hydra", "omegaconf", "cnn_explorer.render", "cnn_explorer.report"),
        "interpretability methods are pure torch: tensors in, tensors out",
    ),
    (
        "cnn_explorer/render",
        ("lightning", "tensorboard", "torch.utils.tensorboard", "hydra", "omegaconf", "cnn_explorer.report"),
        "rendering draws what it is given; it does not train, log or report",
    ),
    (
        "callbacks",
        ("cnn_explorer.report", "cnn_explorer.evaluate", "cnn_explorer.rundir", "cnn_explorer.output_dir"),
        "callbacks are glue between training and the views, not the analysis half",
    ),
    (
        "cnn_explorer",
        ("callbacks", "train", "analyze"),
        "the package is imported by the entry points, never the reverse",
    ),
    ("callbacks", ("train", "analyze"), "nothing imports the entry points"),
    ("", ("matplotlib.pyplot",), "figures are Figure objects on their own canvas, never pyplot's global state"),
]


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports, absolute (``from . import x`` resolved), as ``a.b`` and ``a.b.name``."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def violations(folder: str, forbidden: tuple[str, ...], sources: list[Path] = SOURCES, root: Path = ROOT) -> list[str]:
    found = []
    for path in sources:
        relative = path.relative_to(root).as_posix()
        if folder and not (relative == folder or relative.startswith(folder + "/")):
            continue
        for name in imported_modules(path, root):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                found.append(f"{relative} imports {name}")
    return sorted(found)


@pytest.mark.parametrize(("folder", "forbidden", "why"), RULES, ids=[f"{r[0] or 'all'}-{r[1][0]}" for r in RULES])
def test_imports_go_the_right_way(folder: str, forbidden: tuple[str, ...], why: str) -> None:
    assert violations(folder, forbidden) == [], why


def test_the_rules_would_catch_a_violation(tmp_path: Path) -> None:
    # A rule that can never fail is no rule: the checker must see a forbidden import, also a relative one.
    path = tmp_path / "cnn_explorer" / "interpret" / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text("from ..render.grids import filter_grid\nimport lightning\n")
    assert violations("cnn_explorer/interpret", RULES[0][1], [path], tmp_path) == [
        "cnn_explorer/interpret/probe.py imports cnn_explorer.render.grids",
        "cnn_explorer/interpret/probe.py imports cnn_explorer.render.grids.filter_grid",
        "cnn_explorer/interpret/probe.py imports lightning",
    ]
