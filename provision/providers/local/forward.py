"""The API virtual IP, reached from this host: a forwarder (provision.lab.nsproxy
``forward``, daemonised) listening on 127.0.0.1:<port> in the host's namespace and
connecting to VIP:port inside the lab namespace. Its pidfile is
``<machines>/forward-<port>.pid``; it is stopped with the lab namespace."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from provision.errors import ProviderError
from provision.lab import procs


def forward(lab: str, port: int, host: str, target_port: int, machines_dir: Path) -> int:
    """127.0.0.1:``port`` -> ``host``:``target_port`` in ``lab``. Idempotent; returns
    the loopback port."""
    pidfile = machines_dir / f"forward-{port}.pid"
    if alive(pidfile):
        return port
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "provision.lab.nsproxy", "forward", lab, str(port), host,
         str(target_port), "--daemon", "--pidfile", str(pidfile)],
        capture_output=True, text=True, timeout=15,
    )
    if proc.returncode != 0:
        raise ProviderError(f"API forward on 127.0.0.1:{port} failed: {proc.stderr.strip()}")
    deadline = time.monotonic() + 5
    while not alive(pidfile) and time.monotonic() < deadline:
        time.sleep(0.05)
    return port


def alive(pidfile: Path) -> bool:
    """Does ``pidfile`` name a running forwarder?"""
    try:
        pid = int(pidfile.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"provision.lab.nsproxy" in argv and b"forward" in argv


def stop_all(machines_dir: Path) -> None:
    """Every forwarder of the cluster."""
    for pidfile in machines_dir.glob("forward-*.pid"):
        if alive(pidfile):
            procs.kill_all([int(pidfile.read_text())])
        pidfile.unlink(missing_ok=True)


__all__ = ["alive", "forward", "stop_all"]
