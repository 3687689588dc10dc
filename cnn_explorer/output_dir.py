"""Write a folder of outputs (a report, a comparison) atomically, and never delete a file we did not write.

:func:`replacing_dir` builds the new contents in a hidden temporary sibling and swaps it in only when they
are complete, so a crash, an interrupt or a bad input never leaves half a report. Every folder it writes holds
a manifest (:data:`MANIFEST`) with the name, size and SHA-256 of each of its files. A folder is replaced only
when every file in it is listed there with that content, so a file a user added or edited (notes beside a
report), a folder analyze.py never wrote (``--out`` pointed at a thesis) or a link is refused with a message
instead of deleted. A manifest comes from disk, like the rest of a run dir, and may have been crafted: one that
names a path outside its folder (absolute, ``..``) is refused, links are never followed, and a file is deleted
only when its bytes still hash to what the manifest says.

Leftovers of a process that was killed (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>`` beside the folder) are
removed by the next :func:`replacing_dir` of the same folder once that process is gone, and only as far as they
provably hold our files: a temporary folder carries a marker file naming it ours, an old one its manifest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from cnn_explorer.errors import UserError
from cnn_explorer.run_status import process_exists

log = logging.getLogger(__name__)

MANIFEST = ".cnn-explorer-manifest.json"
IN_PROGRESS = ".cnn-explorer-in-progress"  # the marker of a temporary folder, removed before it is swapped in
WRITTEN_BY = "cnn-explorer analyze.py"
MANIFEST_MAX_BYTES = 16 * 2**20  # ours lists a few hundred files; a bigger one is not ours, and not read
FileRecord = tuple[int, str]  # (size in bytes, SHA-256 hex digest)


def check_replaceable(target: Path) -> None:
    """Refuse a ``target`` that :func:`replacing_dir` must not or cannot replace: a file or a link; a non-empty
    folder holding anything its manifest does not list with that content (or no manifest of ours at all); a
    place that is not writable (a read-only run dir). Called before the long work, and again before the swap.

    Raises:
        UserError: naming the folder, the files that are not ours or what is not writable, and what to do.
    """
    if target.is_symlink():
        raise UserError(
            f"{target} is a symbolic link (to {os.readlink(target)}); analyze.py replaces its output folder as a "
            f"whole and follows no links out of it. Remove the link, or write there with --out {target.resolve()}"
        )
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a folder; analyze.py writes a folder there. Move the file away.")
    _check_writable(target)
    if not target.exists():
        return
    files = {name: kind for name, kind in _walk(target) if kind != "dir" and name != MANIFEST}
    if not files:
        return
    written = _read_manifest(target)
    foreign = [text for name, kind in sorted(files.items()) if (text := _describe(name, kind, written, target))]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserError(
            f"{target} holds {len(foreign)} file(s) analyze.py did not write ({shown}); it replaces this folder as "
            f"a whole and never deletes what it did not write. Move those files out of {target}, then run again."
        )


@contextmanager
def replacing_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder to write into; on success, it replaces ``target`` in one rename.

    On exit without error, a manifest of the written files (names, sizes, hashes) is added, the old ``target``
    (if any) is renamed away, the new one renamed in, and the old one's files that still match its manifest
    deleted. Renames within one folder are atomic, and SIGINT/SIGTERM are held back during the swap (then
    delivered), so ``target`` is never half-written. If the body raises (an interrupt included), the temporary
    folder is removed and ``target`` is untouched.

    Raises:
        UserError: if ``target`` may not be replaced (see :func:`check_replaceable`), before anything is written;
            or if writing fails (disk full, a read-only place), naming the folder and what to do.
    """
    check_replaceable(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_leftovers(target)
    except OSError as err:
        raise _write_error(target, err) from err
    created = False
    try:
        # The folder and its marker together, and an interrupt delivered only once both exist, inside this try: one
        # landing between them left an unmarked folder that nothing removes (seen under load).
        with _signals_held():
            try:
                tmp.mkdir()
            except FileExistsError:
                raise UserError(
                    f"{tmp} is in the way of writing {target} and is not a leftover of ours; move it away."
                ) from None
            created = True
            (tmp / IN_PROGRESS).write_text(_marker())
        yield tmp
        (tmp / IN_PROGRESS).unlink()
        records = {name: _record(tmp / name) for name in _files(tmp)}
        files = {name: {"size": size, "sha256": digest} for name, (size, digest) in records.items()}
        (tmp / MANIFEST).write_text(json.dumps({"written_by": WRITTEN_BY, "files": files}, indent=1))
        check_replaceable(target)  # again: a file may have been added while the body ran
    except BaseException as err:
        if created:  # a folder in the way is not ours to remove
            with _signals_held():
                shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _write_error(target, err) from err
        raise
    with _signals_held():
        _swap(tmp, target, old)


def remove_stale_leftovers(target: Path) -> None:
    """Remove the temporary and old folders that a killed process left beside ``target``: siblings named
    ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` whose process is gone, and only what in them is provably
    ours (a temporary folder with our marker; the files of an old folder that match its manifest)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    try:
        siblings = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in siblings:
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False) or _process_may_run(int(match[2])):
            continue
        folder = Path(entry.path)
        try:
            if match[1] == "tmp" and _is_our_marker(folder / IN_PROGRESS):
                shutil.rmtree(folder)
            elif (folder / MANIFEST).is_file():
                _remove_written(folder)  # an old folder, or a temporary one caught after its manifest was written
        except (OSError, UserError) as err:
            log.warning("left %s in place: %s", folder, err)


def _swap(tmp: Path, target: Path, old: Path) -> None:
    """Put ``tmp`` in ``target``'s place, then delete what is ours in the old ``target``; on a failed rename,
    put everything back as it was."""
    try:
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except OSError as err:
        if old.exists() and not target.exists():
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(target, err) from err
    if old.exists():
        try:
            _remove_written(old)
        except OSError as err:  # the new contents are in place; the next run tries again
            log.warning("could not remove all of %s: %s", old, err)


def _check_writable(target: Path) -> None:
    """Refuse now, before minutes of evaluation, a ``target`` that cannot be written or replaced: its nearest
    existing parent must take a new folder, and an existing ``target``'s folders must let us delete our files."""
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    places = [parent]
    if target.exists():
        places += [target, *(target / name for name, kind in _walk(target) if kind == "dir")]
    for place in places:
        if not os.access(place, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write {target}: {place} is {_why_not_writable(place)}. Nothing was changed; write it "
                f"elsewhere with analyze.py --out DIR (or make {place} writable)."
            )


def _why_not_writable(place: Path) -> str:
    try:
        read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "on a read-only file system" if read_only else "not writable (no permission)"


def _write_error(target: Path, err: OSError) -> UserError:
    """A failed write of ``target``'s new contents as a message: the place, the reason, the fix."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    fix = "free some space there, or write" if full else "write"
    return UserError(
        f"cannot write {target}: {err.strerror or err} ({err.filename or target.parent}). Nothing was changed "
        f"there (the previous contents, if any, are as they were); {fix} it elsewhere with analyze.py --out DIR."
    )


def _walk(folder: Path, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(relative name, kind)`` of everything under ``folder``, kind ``file`` (a regular file), ``dir``, or
    ``other`` (a link, a socket...); links are listed, never followed."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = f"{prefix}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            yield name, "dir"
            yield from _walk(Path(entry.path), f"{name}/")
        else:
            yield name, "file" if entry.is_file(follow_symlinks=False) else "other"


def _files(folder: Path) -> list[str]:
    return [name for name, kind in _walk(folder) if kind == "file"]


def _record(path: Path) -> FileRecord:
    """Size and SHA-256 of a regular file, read without following a link (``path`` may have been swapped)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        digest = hashlib.sha256()
        size = 0
        while chunk := file.read(2**20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _is_ours(path: Path, record: FileRecord) -> bool:
    """Whether the regular file at ``path`` (a link is never ours) holds the bytes the manifest recorded."""
    try:
        if os.lstat(path).st_size != record[0]:
            return False
        return _record(path) == record
    except OSError:
        return False


def _describe(name: str, kind: str, written: dict[str, FileRecord], folder: Path) -> str:
    """How the entry ``name`` is not ours ("" if it is), for the refusal's list."""
    if kind != "file":
        return f"{name} (a link or special file)"
    if name not in written:
        return name
    return "" if _is_ours(folder / name, written[name]) else f"{name} (changed since analyze.py wrote it)"


def _read_manifest(folder: Path) -> dict[str, FileRecord]:
    """``folder``'s manifest: ``{relative name: (size, sha256)}``.

    Raises:
        UserError: if there is none, it is not one we write (an older one without hashes included), or it names
            a path outside ``folder``.
    """
    path = folder / MANIFEST
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MANIFEST_MAX_BYTES:
            raise ValueError("not a small regular file")
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise UserError(
            f"{folder} exists and was not written by analyze.py (it has no readable {MANIFEST}); analyze.py "
            f"replaces its output folder as a whole. Move it away, or choose another folder."
        ) from None
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list):
        raise UserError(
            f"{folder} was written by an earlier analyze.py, whose {MANIFEST} has no content hashes, so it cannot "
            f"show which files there are its own and deletes none. Move {folder} away (or delete it yourself), "
            f"then run again."
        )
    if not isinstance(files, dict):
        raise UserError(f"{path} is not a manifest analyze.py writes; move {folder} away, then run again.")
    for name in files:
        if not _is_plain_name(name):
            raise UserError(
                f"{path} lists {name!r}, a path outside {folder}; analyze.py never deletes files outside the "
                f"folder it replaces, and refuses a manifest that names any (was this run dir crafted?). "
                f"Check {folder}, move it away, then run again."
            )
    records = {name: _parse_record(record) for name, record in files.items()}
    return {name: record for name, record in records.items() if record is not None}


def _is_plain_name(name: str) -> bool:
    """A relative name inside the folder: no absolute path, no ``..``, no ``.``, no empty or doubled parts."""
    if not name or "\0" in name or "\\" in name or PurePosixPath(name).is_absolute():
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _parse_record(record: object) -> FileRecord | None:
    """``(size, sha256)`` from a manifest entry, None if malformed (then the file is simply not ours)."""
    if not isinstance(record, dict):
        return None
    size, digest = record.get("size"), record.get("sha256")
    if isinstance(size, int) and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        return size, digest
    return None


def _remove_written(folder: Path) -> None:
    """Delete the files of ``folder`` that match its manifest, then the folders left empty; keep anything else
    (all of it if the manifest names a path outside ``folder``), and say so."""
    try:
        written = _read_manifest(folder)
    except UserError as err:
        log.warning("kept %s: %s", folder, err)
        return
    root = folder.resolve()
    entries = list(_walk(folder))
    for name, kind in entries:
        path = folder / name
        # A folder inside may have been swapped for a link since the walk: check where the path leads.
        if kind == "file" and name in written and path.resolve().is_relative_to(root) and _is_ours(path, written[name]):
            path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
    for name in sorted((n for n, kind in entries if kind == "dir"), key=lambda n: -n.count("/")):
        if not any((folder / name).iterdir()):
            (folder / name).rmdir()
    if any(folder.iterdir()):
        log.warning("kept %s: it holds files that were not written by analyze.py", folder)
    else:
        folder.rmdir()


def _marker() -> str:
    return json.dumps({"written_by": WRITTEN_BY, "host": socket.gethostname(), "pid": os.getpid()})


def _is_our_marker(path: Path) -> bool:
    """Whether ``path`` is the marker :func:`replacing_dir` puts in its temporary folder, from this machine."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == WRITTEN_BY and data.get("host") == socket.gethostname()


def _process_may_run(pid: int) -> bool:
    """Whether process ``pid`` may still be writing its folders (this process is not: it has not begun)."""
    return pid != os.getpid() and process_exists(pid)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM while the block runs (the swap: two renames and a cleanup), then deliver
    them to the handlers that were in place, so an interrupt lands before or after the swap, never inside."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread; a worker thread's caller handles interrupts
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)


_HELD = (signal.SIGINT, signal.SIGTERM)
