"""nspawn.launch: the pid it returns is the machine's, even when the wrapper's child
has not exec'd systemd-nspawn yet (a real process stands in for the machine)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from provision.lab import nspawn


def spec(tmp_path):
    return nspawn.LaunchSpec(name="pv-t-cp-1", root=tmp_path, netns="none",
                              hostname="cp-1", pidfile=tmp_path / "pid",
                              console_log=tmp_path / "console.log")


def test_launch_waits_for_the_child_to_become_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(nspawn, "command", lambda s: ["sleep", "30"])
    calls = {"n": 0}

    def read_pid(pidfile, name):  # not systemd-nspawn yet for the first looks
        calls["n"] += 1
        return int(pidfile.read_text()) if calls["n"] > 3 else None

    monkeypatch.setattr(nspawn, "read_pid", read_pid)
    pid = nspawn.launch(spec(tmp_path))
    try:
        assert calls["n"] == 4 and pid == int((tmp_path / "pid").read_text())
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_machine_that_exits_at_once_is_reported_without_waiting_long(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(nspawn, "command", lambda s: ["true"])
    monkeypatch.setattr(nspawn, "EXEC_WAIT_SECONDS", 60)
    started = time.monotonic()
    with pytest.raises(OSError, match="exited at once"):
        nspawn.launch(spec(tmp_path))
    # it saw the child gone; it did not wait for the deadline
    assert time.monotonic() - started < 60
