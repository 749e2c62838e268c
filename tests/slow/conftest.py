"""Slow-tier fixtures: TCG virtual machines through a private libvirtd.

Everything a slow test makes is named after the pytest process (cluster
``pvbm<pid>`` of test_vm_and_metal.py, ``pvvm<pid>`` of bench/vm.py, whose lab namespace
``pv-<cluster>`` holds the private libvirtd; ``pvlv<pid>`` for the bench's bare
libvirtd) and torn down by a finalizer. Leftovers of a crashed earlier run (its pid
gone) are swept first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest

LIBVIRTD_PREFIX = "pvlv"


def slow_requirements() -> str | None:
    if os.geteuid() != 0:
        return "slow VM tests need root"
    for tool in ("libvirtd", "qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4",
                 "ip", "unshare", "ssh"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            return f"slow VM tests need {tool}"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "slow VM tests need libvirt-python (pip install 'provision[libvirt]')"
    return None


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def sweep() -> None:
    """Remove private libvirtds (namespace, processes, directory) of dead pytest runs."""
    from libvirtd_lab import LabLibvirtd

    names = set()
    if Path("/run/netns").is_dir():
        names |= {p.name for p in Path("/run/netns").iterdir()}
    names |= {p.name for p in Path("/tmp").glob(f"{LIBVIRTD_PREFIX}*")}
    names |= {p.name for p in Path("/tmp").glob("pv-pvvm*")}
    names |= {p.name for p in Path("/tmp").glob("pv-pvbm*")}
    for name in sorted(names):
        m = re.fullmatch(rf"(?:{LIBVIRTD_PREFIX}|pv-pvvm|pv-pvbm)(\d+)", name)
        if m and not _alive(int(m.group(1))):
            lab = LabLibvirtd(name)
            with contextlib.suppress(Exception):
                lab.stop()
    _end_orphaned_bmc_emulators()


def _end_orphaned_bmc_emulators() -> None:
    """BMC emulators (tests/slow/metallab.py) of a run that died: their own session,
    re-parented to init, configured from a pytest temporary directory."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            argv = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes()
            ours = b"/pytest-of-" in argv + env
            if ppid == 1 and ours and (b"sushy-emulator" in argv or b"vbmcd" in argv):
                os.kill(int(entry.name), 9)


@pytest.fixture(scope="session")
def slow_host() -> None:
    reason = slow_requirements()
    if reason:
        pytest.skip(reason)
    sweep()
