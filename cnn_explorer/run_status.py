"""How a run ended, written into its run dir: the completion marker analyze.py and sweep summaries read.

``<run dir>/run_status.json`` says ``running`` from the moment train.py starts, and is replaced (atomically) by
``completed``, ``failed``, ``diverged`` or ``interrupted`` with the message the user saw. A run dir whose status
still says ``running`` is being trained, or its process was killed (``kill -9``, a crash of the machine).
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

STATUS_FILE = "run_status.json"
ENDED = ("completed", "failed", "diverged", "interrupted")


def write_status(run_dir: Path, status: str, message: str = "", **details: Any) -> None:
    """Record ``status`` (``running`` or one of :data:`ENDED`) with the time, the process and a message."""
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
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(path)  # atomic: a reader sees the old or the new status, never half of one


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, (
            f"recorded as running since {since}, but its process {pid} is no longer running on this machine: "
            f"it ended without recording how (killed, or the machine went down)"
        )
    except PermissionError:
        pass  # the process exists, owned by someone else
    return False, f"still training: process {pid} has been running since {since}"


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's recorded status, or None for a run dir without one (older runs) or an unreadable file."""
    try:
        record = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("status"), str) else None
