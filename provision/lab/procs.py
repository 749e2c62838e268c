"""Is a process still there? The one answer the lab machines, their forwarders and
the provider services (artifact mirror) share: a pid that no longer exists or is a
zombie (exited, not yet reaped by its parent) is gone."""

from __future__ import annotations

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


__all__ = ["gone", "pid_in"]
