"""Write a folder of outputs (a report, a comparison) atomically, and never delete a file we did not write.

:func:`replacing_dir` builds the new contents in a hidden temporary sibling and swaps it in only when they
are complete, so a crash or a bad input never leaves half a report. Every folder it writes holds a manifest
(:data:`MANIFEST`) listing its files; a folder is replaced only when every file in it is listed there, so
a file a user added (notes beside a report) or a folder analyze.py never wrote (``--out`` pointed at a
thesis) is refused with a message instead of deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnn_explorer.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = ".cnn-explorer-manifest.json"


def check_replaceable(target: Path) -> None:
    """Refuse a ``target`` that :func:`replacing_dir` must not replace: a file, or a non-empty folder with
    anything not listed in its manifest (or no manifest at all).

    Raises:
        UserError: naming the folder and the files that are not ours, and what to do.
    """
    if not target.exists():
        return
    if not target.is_dir():
        raise UserError(f"{target} is a file, not a folder; analyze.py writes a folder there. Move the file away.")
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    if not files:
        return
    written = _read_manifest(target)
    if written is None:
        raise UserError(
            f"{target} exists and was not written by analyze.py (it has no {MANIFEST}); analyze.py replaces its "
            f"output folder as a whole. Move it away, or choose another folder."
        )
    foreign = [name for name in files if name not in written and name != MANIFEST]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserError(
            f"{target} holds {len(foreign)} file(s) analyze.py did not write ({shown}); it replaces this folder as "
            f"a whole and never deletes what it did not write. Move those files out of {target}, then run again."
        )


@contextmanager
def replacing_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder to write into; on success, it replaces ``target`` in one rename.

    On exit without error, a manifest of the written files is added, the old ``target`` (if any) is renamed
    away, the new one renamed in, and the old one's listed files deleted. Renames within one folder are atomic,
    so ``target`` is never half-written. If the body raises, the temporary folder is removed and ``target`` is
    untouched.

    Raises:
        UserError: if ``target`` may not be replaced (see :func:`check_replaceable`), before anything is written.
    """
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a killed process with the same pid
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({"written_by": "cnn-explorer analyze.py", "files": files}, indent=1))
        check_replaceable(target)  # again: a file may have been added while the body ran
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        _remove_written(old)


def _read_manifest(folder: Path) -> set[str] | None:
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(name) for name in files} if isinstance(files, list) else None


def _remove_written(folder: Path) -> None:
    """Delete the files ``folder``'s manifest lists, then the folders left empty; keep anything else, and say so."""
    for name in _read_manifest(folder) or set():
        (folder / name).unlink(missing_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(path.iterdir()):
            path.rmdir()
    if any(folder.iterdir()):
        log.warning("kept %s: it holds files that were not written by analyze.py", folder)
    else:
        folder.rmdir()
