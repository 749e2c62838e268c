"""Find and remove what lab machines leave on the box, by cluster-name prefix.

Used after a crash (the state directory may be gone, so everything is found from the
system itself: processes, mounts, namespaces, cgroups) and by the leak check of the
lab tests. Only names provision makes are considered: ``pv-<cluster>...``
(provision/names.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from provision import names
from provision.lab import cgroups, mounts, netns, nspawn
from provision.paths import RUN_ROOT


def _nsproxy_pids(prefix: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"provision.lab.nsproxy" in argv and any(
            a.decode(errors="replace").startswith(names.PREFIX + prefix) for a in argv
        ):
            out.append(int(entry))
    return out


def _overlay_mounts(prefix: str) -> list[str]:
    pattern = re.compile(rf"/clusters/{re.escape(prefix)}[^/]*/machines/")
    return [m for m in mounts.mount_points() if pattern.search(m)]


def leftovers(prefix: str) -> list[str]:
    """Everything still on the box for clusters whose name starts with ``prefix``."""
    ours = names.PREFIX + prefix
    found = []
    found += [f"process: nspawn machine {n} (pid {p})"
              for n, p in nspawn.find_machines(ours).items()]
    found += [f"process: nsproxy pid {p}" for p in _nsproxy_pids(prefix)]
    found += [f"mount: {m}" for m in _overlay_mounts(prefix)]
    found += [f"netns: {n}" for n in netns.listing() if n.startswith(ours)]
    found += [f"cgroup: {g}" for g in cgroups.listing(ours)]
    for d in _runtime_dirs():
        found += [f"runtime dir: {x}" for x in d.iterdir() if x.name.startswith(ours)]
    return found


def _runtime_dirs() -> list[Path]:
    """Where provision keeps per-cluster runtime files: nspawn's, the boot servers'."""
    return [d for d in (nspawn.PROPAGATE_DIR, RUN_ROOT / "pxe") if d.is_dir()]


def sweep(prefix: str, keep: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Remove leftovers of clusters named ``prefix*``. ``keep`` is given a name without its
    ``pv-`` (``<cluster>`` or ``<cluster>-<node>``) and spares it when it returns True
    (clusters of a test run that is still alive). Returns what it removed."""
    ours = names.PREFIX + prefix
    removed = []

    def spared(name: str) -> bool:
        # name is pv-<cluster> or pv-<cluster>-<node>: keep() sees everything after pv-
        # and decides (a test run embeds its pid in its cluster names, for example).
        return keep(name[len(names.PREFIX):])

    for name, pid in nspawn.find_machines(ours).items():
        if not spared(name):
            nspawn.terminate(pid, name, timeout=10)
            removed.append(f"machine {name}")
    for pid in _nsproxy_pids(prefix):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ns = next(a.decode() for a in argv
                      if a.decode(errors="replace").startswith(names.PREFIX))
            if not spared(ns):
                os.kill(pid, signal.SIGKILL)
                removed.append(f"nsproxy {pid}")
        except (OSError, StopIteration):
            pass
    for m in _overlay_mounts(prefix):
        cluster = re.search(r"/clusters/([^/]+)/machines/", m)
        if cluster and keep(cluster.group(1)):
            continue
        mounts.umount(m)
        removed.append(f"mount {m}")
    time.sleep(0.1)
    for g in {p.name for p in cgroups.listing(ours)}:
        if not spared(g):
            cgroups.remove(g)
            removed.append(f"cgroup {g}")
    for n in netns.listing():
        if n.startswith(ours) and not spared(n):
            for pid in netns.pids_in(n):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            netns.delete(n)
            removed.append(f"netns {n}")
    for runtime in _runtime_dirs():
        for d in runtime.iterdir():
            if d.name.startswith(ours) and not spared(d.name):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"runtime dir {d}")
    return removed
