"""The rooms of the house and which way imports go between them, read from the source (no code is run).

interpret/   pure torch methods: no drawing, no Lightning, no TensorBoard, no Hydra
render/      grids and figures: no Lightning, no TensorBoard, no Hydra, not the report
callbacks/   glue: never the report or analysis modules
tools/       developer tools (screenshots): may import the package; the package and callbacks never import them
nothing      imports train.py or analyze.py; nothing in cnn_explorer imports callbacks; nobody uses pyplot

Also what leaves the house: pip installs the package without tools/, and no config default points outside it.
"""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [
        *ROOT.glob("cnn_explorer/**/*.py"),
        *ROOT.glob("callbacks/**/*.py"),
        *ROOT.glob("tools/**/*.py"),
        ROOT / "train.py",
        ROOT / "analyze.py",
    ]
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
        ("callbacks", "train", "analyze", "tools"),
        "the package is imported by the entry points and tools, never the reverse",
    ),
    ("callbacks", ("train", "analyze", "tools"), "nothing imports the entry points; tools are not installed"),
    ("tools", ("train", "analyze", "callbacks"), "a tool uses the package, not the entry points or training glue"),
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


def test_the_rules_catch_the_package_importing_a_tool(tmp_path: Path) -> None:
    path = tmp_path / "cnn_explorer" / "report" / "figures.py"
    path.parent.mkdir(parents=True)
    path.write_text("from tools.tensorboard_view import capture_pages\n")
    rule = next(r for r in RULES if r[0] == "cnn_explorer")
    assert violations("cnn_explorer", rule[1], [path], tmp_path) == [
        "cnn_explorer/report/figures.py imports tools.tensorboard_view",
        "cnn_explorer/report/figures.py imports tools.tensorboard_view.capture_pages",
    ]


def test_pip_installs_the_package_without_the_tools() -> None:
    # pyproject's packages.find as setuptools applies it (namespaces on by default): every folder of .py files,
    # as a dotted name, kept when it matches an include pattern (fnmatch). This is what `pip install .` ships.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = [top for top in ROOT.iterdir() if top.is_dir() and not top.name.startswith(".")]  # not .venv
    folders = {path.parent.relative_to(ROOT) for top in tops for path in top.glob("**/*.py")}
    shipped = {folder for folder in folders if any(fnmatchcase(".".join(folder.parts), p) for p in include)}
    assert {"cnn_explorer", "callbacks"} <= {folder.parts[0] for folder in shipped}
    assert not {"tools", "tests"} & {folder.parts[0] for folder in shipped}
    assert not [folder for folder in shipped if (ROOT / folder / "tensorboard_view.py").exists()]
    assert (ROOT / "tools" / "tensorboard_view.py").is_file()  # the screenshot tool, run from a checkout


def _outside(default: str) -> bool:
    """Whether a config default names a path outside the launch dir and the user's home: absolute, or with ``..``."""
    path = default.strip("'\"")
    return path.startswith("/") or ".." in Path(path).parts


def test_no_config_default_points_outside_the_checkout() -> None:
    # ${oc.env:NAME,DEFAULT}: a default may name a folder under the launch dir (data/...) or the user's cache (~),
    # never a neighbour of the checkout (../shared/...) or an absolute path of one machine.
    defaults = {
        (path.relative_to(ROOT).as_posix(), default)
        for path in ROOT.glob("conf/**/*.yaml")
        for default in re.findall(r"\$\{oc\.env:\w+,([^}]*)\}", path.read_text())
    }
    assert ("conf/data/source/image_folder.yaml", "data/cifar10-jpeg") in defaults  # the check sees the defaults
    assert [entry for entry in defaults if _outside(entry[1])] == []
