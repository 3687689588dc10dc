"""How a run ended, written into its run dir: the completion marker analyze.py and sweep summaries read.

``<run dir>/run_status.json`` says ``running`` from the moment train.py starts, and is replaced (atomically) by
``completed``, ``failed``, ``diverged`` or ``interrupted`` with the message the user saw. A run dir whose status
still says ``running`` is being trained, or its process was killed (``kill -9``, a crash of the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from cnn_explorer.safe_config import read_capped

STATUS_FILE = "run_status.json"
ENDED = ("completed", "failed", "diverged", "interrupted")


def write_status(run_dir: Path, status: str, message: str = "", **details: Any) -> None:
    """Record ``status`` (``running`` or one of :data:`ENDED`) with the time, the process and a message.

    Raises:
        OSError: if the file cannot be written (a full disk, a read-only run dir); the previous status is then
            left as it was, and no partial file beside it.
    """
    if status != "running" and status not in ENDED:
        raise ValueError(f"status must be 'running' or one of {ENDED}, got {status!r}")
    record = {
        "status": status,
        "time": datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    record |= {"message": message} if message else {}
    record |= details
    path = Path(run_dir) / STATUS_FILE
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(record, indent=1) + "\n")
        partial.replace(path)  # atomic: a reader sees the old or the new status, never half of one
    except OSError:
        with contextlib.suppress(OSError):  # cleaning up: the error that matters is the one re-raised
            partial.unlink()
        raise


def describe(status: dict[str, Any] | None, run_dir: Path) -> tuple[bool, str]:
    """Whether the run ended normally, and a sentence saying what is known of how it ended (and nothing more:
    a cause is named only if it was recorded or checked here)."""
    if status is None:
        checkpoints = [p.stat().st_mtime for p in Path(run_dir).glob("checkpoints/*.ckpt")]
        logs = [p.stat().st_mtime for p in Path(run_dir).glob("csv/version_*/metrics.csv")]
        if checkpoints and logs and max(checkpoints) > max(logs) + 1:
            return False, (
                "the run dir has no run_status.json and its newest checkpoint is newer than its metrics log: "
                "it may still be training, or it was stopped"
            )
        return True, "the run dir has no run_status.json (how it ended was not recorded)"
    kind, message, since = status["status"], status.get("message", ""), status.get("time", "?")
    if kind == "completed":
        return True, f"completed ({since})"
    if kind != "running":
        return False, f"{kind} ({since}): {message}" if message else f"{kind} ({since})"
    pid, host = status.get("pid"), status.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        return False, f"recorded as running on {host} since {since}; whether it still runs cannot be checked here"
    if not process_exists(pid):
        return False, (
            f"recorded as running since {since}, but its process {pid} is no longer running on this machine: "
            f"it ended without recording how (killed, or the machine went down)"
        )
    return False, f"still training: process {pid} has been running since {since}"


def process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this machine (anyone's: signal 0 checks without sending)."""
    if pid <= 0:
        return False  # 0 and negative ids name process groups, not a process
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process can have such an id
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


MAX_STATUS_BYTES = 2**20  # write_status writes ~200 bytes; a run dir is untrusted, so reading one is capped


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's recorded status, or None for a run dir without one (older runs), an unreadable file or one larger
    than :data:`MAX_STATUS_BYTES` (not one write_status wrote)."""
    try:
        data = read_capped(Path(run_dir) / STATUS_FILE, MAX_STATUS_BYTES)
        if data is None:
            return None
        record = json.loads(data)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("status"), str) else None
