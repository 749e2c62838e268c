"""Running one lab machine: systemd-nspawn booting a directory, detached from us.

The host's PID 1 is not systemd, so there is no machined and no scope unit: nspawn runs
with --register=no --keep-unit in cgroup sub-groups we created, as a detached process
whose pid we keep in a pidfile. See docs/lab-machines.md for why each flag is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from provision.lab import procs

PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")

# The wrapper joins the cgroups first (its children inherit them), then starts nspawn in
# the background and records its pid, so nspawn is never our child (no zombie to reap)
# and keeps running after provision exits.
_WRAPPER = r"""
while [ "$1" != -- ]; do echo $$ > "$1" || exit 97; shift; done; shift
pidfile=$1; log=$2; shift 2
"$@" </dev/null >>"$log" 2>&1 &
echo $! > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
"""


@dataclass
class LaunchSpec:
    name: str  # machine name (-M): the node's namespace name, unique on the box
    root: Path  # the booted directory (the node's overlay mount)
    netns: str
    hostname: str
    pidfile: Path
    console_log: Path
    cgroup_procs: list[Path] = field(default_factory=list)
    binds: list[tuple[Path, str]] = field(default_factory=list)  # (host dir, node path)


def command(spec: LaunchSpec) -> list[str]:
    cmd = [
        shutil.which("systemd-nspawn") or "systemd-nspawn",
        "--quiet",
        f"--directory={spec.root}",
        f"--machine={spec.name}",
        f"--hostname={spec.hostname}",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{spec.netns}",
        "--capability=all",
        "--system-call-filter=keyctl add_key request_key",
        "--bind=/dev/kmsg",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    cmd += [f"--bind={host}:{inside}" for host, inside in spec.binds]
    return cmd


def launch(spec: LaunchSpec, timeout: float = 10) -> int:
    """Start the machine detached; returns nspawn's pid."""
    spec.pidfile.unlink(missing_ok=True)
    spec.console_log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="1", SYSTEMD_COLORS="0",
               TERM="dumb")  # plain console.log
    argv = ["sh", "-c", _WRAPPER, "sh", *map(str, spec.cgroup_procs), "--",
            str(spec.pidfile), str(spec.console_log), *command(spec)]
    proc = subprocess.run(argv, env=env, start_new_session=True, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if proc.returncode != 0:
        raise OSError(f"could not start machine {spec.name} (exit {proc.returncode}): "
                      f"{proc.stderr.strip()}")
    # The wrapper writes its child's pid right after the fork; that child may not have
    # exec'd systemd-nspawn yet (a loaded box), so wait while it is still alive.
    deadline = time.monotonic() + EXEC_WAIT_SECONDS
    while (pid := read_pid(spec.pidfile, spec.name)) is None:
        if procs.pid_in(spec.pidfile) is None:
            raise OSError(f"machine {spec.name} exited at once; see {spec.console_log}")
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError, ValueError):  # never leave it behind
                os.kill(int(spec.pidfile.read_text()), signal.SIGKILL)
            raise OSError(f"machine {spec.name}: systemd-nspawn did not start within "
                          f"{EXEC_WAIT_SECONDS} s; see {spec.console_log}")
        time.sleep(0.02)
    return pid


EXEC_WAIT_SECONDS = 5


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_machine(pid: int, name: str) -> bool:
    """Is ``pid`` a live systemd-nspawn running machine ``name``?"""
    argv = _cmdline(pid)
    return (bool(argv) and os.path.basename(argv[0]) == "systemd-nspawn"
            and f"--machine={name}" in argv and not procs.gone(pid))


def read_pid(pidfile: Path, name: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_machine(pid, name) else None


def find_machines(prefix: str = "") -> dict[str, int]:
    """Every running nspawn machine on the box whose name starts with ``prefix``."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if not argv or os.path.basename(argv[0]) != "systemd-nspawn" or procs.gone(int(entry)):
            continue
        for a in argv:
            for opt in ("--machine=", "-M"):
                if a.startswith(opt) and a[len(opt):].startswith(prefix) and a[len(opt):]:
                    out[a[len(opt):]] = int(entry)
        for i, a in enumerate(argv[:-1]):
            if a in ("-M", "--machine") and argv[i + 1].startswith(prefix):
                out[argv[i + 1]] = int(entry)
    return out


def leader(pid: int) -> int | None:
    """The machine's PID 1 (nspawn's child), for nsenter."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def terminate(pid: int, name: str, timeout: float = 30) -> bool:
    """SIGTERM (nspawn asks the node's systemd to power off), then SIGKILL.
    Returns True when the node shut down cleanly within ``timeout``."""
    if not is_machine(pid, name):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if _wait_gone(pid, name, timeout):
        return True
    # A pod process without a SIGTERM handler can hold systemd-shutdown for 90 s.
    # Killing the node's PID 1 ends its whole PID namespace; then nspawn itself.
    for target in (leader(pid), pid):
        if target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
    _wait_gone(pid, name, 10)
    return False


def _wait_gone(pid: int, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_machine(pid, name):
            return True
        time.sleep(0.1)
    return not is_machine(pid, name)


def remove_propagate_dir(name: str) -> None:
    # nspawn leaves it when /run is not a tmpfs (as on this box); it may hold mounts.
    from provision.lab.mounts import remove_tree

    remove_tree(PROPAGATE_DIR / name)
