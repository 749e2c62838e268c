"""Is a process still there, and ending processes. The one answer the lab machines,
their forwarders and the provider services (artifact mirror) share: a pid that no
longer exists or is a zombie (exited, not yet reaped by its parent) is gone."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def pid_in(pidfile: Path) -> int | None:
    """The pid written in ``pidfile`` if that process is still there."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if gone(pid) else pid


def kill_all(pids: list[int], timeout: float = 5) -> None:
    """SIGTERM ``pids`` (never this process), then SIGKILL what is still alive after
    ``timeout`` seconds; returns once they are gone or zombies, or the second wait ends."""
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in pids if not gone(p)]
            if not pids:
                return
            time.sleep(0.1)


__all__ = ["gone", "kill_all", "pid_in"]
