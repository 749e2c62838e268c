"""Mount helpers: overlay mounts for nodes, and removing trees that may hold mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    base = os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)
    found = [m for m in mount_points() if m == base or m.startswith(base.rstrip("/") + "/")]
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def is_mounted(path: Path) -> bool:
    return os.path.abspath(path) in mount_points()


def umount(path: str | Path) -> None:
    """Unmount, lazily when busy; a path that is not mounted is fine."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def umount_all_under(path: Path) -> None:
    for _ in range(3):  # stacked mounts on one point need one umount each
        points = mounts_under(path)
        if not points:
            return
        for m in points:
            umount(m)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever is mounted below, and never crosses a mount."""
    if not os.path.lexists(path):
        return
    umount_all_under(path)
    left = mounts_under(path)
    if left:
        raise OSError(f"refusing to remove {path}: still mounted: {', '.join(left)}")
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    shutil.rmtree(path)


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    if is_mounted(target):
        return
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(target)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise OSError(f"overlay mount on {target} failed: {proc.stderr.strip()}")
