"""Per-node cgroup sub-groups in every hierarchy of the host (v1, hybrid or v2).

Only our own sub-groups are ever created or removed; the host's hierarchies are never
mounted, moved or changed. nspawn started inside these groups runs the node in a cgroup
namespace rooted there, so the node (and containerd in it) sees only its own tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def hierarchies() -> list[Path]:
    """Mount points of cgroup hierarchies under /sys/fs/cgroup (host namespace)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, mnt = fields[sep + 1], fields[4]
            if fstype in ("cgroup", "cgroup2") and (mnt == str(ROOT) or mnt.startswith(f"{ROOT}/")):
                out.append(Path(mnt))
    return sorted(set(out))


def _is_v2(h: Path) -> bool:
    return (h / "cgroup.controllers").exists()


def group_paths(name: str) -> list[Path]:
    return [h / name for h in hierarchies()]


def exists(name: str) -> bool:
    return any(p.is_dir() for p in group_paths(name))


def create(name: str, cpus: int | None = None, memory: int | None = None) -> list[Path]:
    """Create ``name`` in every hierarchy with the limits; returns the cgroup.procs files."""
    procs = []
    for h in hierarchies():
        g = h / name
        g.mkdir(exist_ok=True)
        if (h / "cpuset.cpus").exists() and not _is_v2(h):
            # v1 cpuset groups start empty and refuse tasks until cpus/mems are set.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (g / knob).read_text().strip():
                    (g / knob).write_text((h / knob).read_text())
        if cpus and (g / "cpu.cfs_quota_us").exists():
            period = int((g / "cpu.cfs_period_us").read_text())
            (g / "cpu.cfs_quota_us").write_text(str(cpus * period))
        if memory and (g / "memory.limit_in_bytes").exists():
            (g / "memory.limit_in_bytes").write_text(str(memory))
        if _is_v2(h):
            if cpus and (g / "cpu.max").exists():
                (g / "cpu.max").write_text(f"{cpus * 100000} 100000")
            if memory and (g / "memory.max").exists():
                (g / "memory.max").write_text(str(memory))
        procs.append(g / "cgroup.procs")
    return procs


def pids(name: str) -> set[int]:
    out: set[int] = set()
    for g in group_paths(name):
        if not g.is_dir():
            continue
        for procs in g.rglob("cgroup.procs"):
            try:
                out.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
    return out


def remove(name: str, timeout: float = 10) -> None:
    """Kill what is left inside, then remove the groups depth first."""
    deadline = time.monotonic() + timeout
    for sig in (signal.SIGKILL,):
        for pid in pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    while True:
        left = []
        for g in group_paths(name):
            if not g.is_dir():
                continue
            for d in sorted((p for p in g.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True) + [g]:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
        if not left:
            return
        if time.monotonic() > deadline:
            raise OSError(f"cgroup sub-groups still busy: {', '.join(map(str, left))}")
        for pid in pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def listing(prefix: str) -> list[Path]:
    return sorted(p for h in hierarchies() if h.is_dir()
                  for p in h.iterdir() if p.is_dir() and p.name.startswith(prefix))
