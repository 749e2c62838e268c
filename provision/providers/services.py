"""Provisioner-side services a provider runs beside its machines (the artifact mirror):
detached processes, each with a pidfile, a log and the arguments it was started with
in the cluster's machines directory (``service-<name>.pid|.log|.args``).

A service is idempotent by name and arguments: a running one started with the same
arguments is reused; one started with others (another Kubernetes version or artifact
source) is stopped and started again, so nodes never install from a stale set. The
interpreter (``argv[0]``) is not part of the identity: the same venv reached through
a symlink is the same service.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from provision.lab.procs import pid_in


def running(machines_dir: Path, name: str, argv: list[str]) -> int | None:
    """The pid of the service when it runs with these arguments, else None."""
    pid = pid_in(machines_dir / f"service-{name}.pid")
    args_file = machines_dir / f"service-{name}.args"
    if pid is not None and args_file.exists() and args_file.read_text() == json.dumps(argv[1:]):
        return pid
    return None


def spawn(machines_dir: Path, name: str, argv: list[str], prefix: list[str] | None = None
          ) -> int:
    """Start ``prefix + argv`` detached (its own session), unless it already runs with
    the same arguments. Returns its pid."""
    machines_dir.mkdir(parents=True, exist_ok=True)
    pidfile = machines_dir / f"service-{name}.pid"
    args_file = machines_dir / f"service-{name}.args"
    wanted = json.dumps(argv[1:])
    pid = pid_in(pidfile)
    if pid is not None:
        recorded = args_file.read_text() if args_file.exists() else None
        if recorded == wanted:
            return pid
        stop(pidfile)
    with open(machines_dir / f"service-{name}.log", "ab") as log:
        proc = subprocess.Popen([*(prefix or []), *argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(f"{proc.pid}\n")
    args_file.write_text(wanted)
    return proc.pid


def stop(pidfile: Path, timeout: float = 10) -> None:
    """SIGTERM the service's process group, SIGKILL it after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pid = pid_in(pidfile)
        if pid is None:
            break
        with suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_in(pidfile) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    pidfile.with_suffix(".args").unlink(missing_ok=True)


def reload(pid: int) -> None:
    """SIGHUP: a service that re-reads its files on it (dnsmasq: its hosts file)."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)


def stop_all(machines_dir: Path) -> None:
    if machines_dir.is_dir():
        for pidfile in machines_dir.glob("service-*.pid"):
            stop(pidfile)


__all__ = ["reload", "running", "spawn", "stop", "stop_all"]
