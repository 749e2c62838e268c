"""Provisioner-side services (providers/services.py) with real processes."""

from __future__ import annotations

import sys
import time

from provision.lab import procs
from provision.providers import services

SLEEPER = [sys.executable, "-c", "import sys, time; time.sleep(120)"]


def test_a_service_is_reused_while_its_arguments_stay_and_restarted_when_they_change(tmp_path):
    first = services.spawn(tmp_path, "mirror", [*SLEEPER, "--version", "v1.37.2"])
    try:
        # the interpreter is not part of the identity: the same venv through a symlink
        same = services.spawn(tmp_path, "mirror", ["/other/python", *SLEEPER[1:],
                                                   "--version", "v1.37.2"])
        assert same == first
        changed = services.spawn(tmp_path, "mirror", [*SLEEPER, "--version", "v1.36.3"])
        assert changed != first
        assert procs.pid_in(tmp_path / "service-mirror.pid") == changed
        deadline = time.monotonic() + 5
        while _alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(first), "the service with the old arguments still runs"
    finally:
        services.stop_all(tmp_path)
    assert procs.pid_in(tmp_path / "service-mirror.pid") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["service-mirror.log"]


def test_a_dead_service_is_started_again(tmp_path):
    pid = services.spawn(tmp_path, "mirror", [*SLEEPER, "a"])
    services.stop(tmp_path / "service-mirror.pid")
    assert not _alive(pid)
    again = services.spawn(tmp_path, "mirror", [*SLEEPER, "a"])
    try:
        assert again != pid and _alive(again)
    finally:
        services.stop_all(tmp_path)


def _alive(pid: int) -> bool:
    return not procs.gone(pid)
