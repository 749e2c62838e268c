"""Every tier: under ``CI=true`` a skip is a failure, and nothing a test started may
outlive the session.

A tier skips on a box that cannot run it (no root, no libvirtd): fine on a laptop,
but in CI a skipped tier is a component that did not install, and a green run would
hide it. So when CI is set, the skip's reason becomes the test's failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skip: {reason}"


# --- nothing outlives the session ----------------------------------------------------------
#
# A process left running with the session's stdout or stderr (a daemon a failed test did
# not stop) keeps CI's pipe open: the summary line is printed and the job still waits,
# until its time limit, for an end of output that never comes. A child process still
# running holds the interpreter's exit (multiprocessing joins its children then: a
# forked IPMI emulator that never ended did exactly this to CI), and so does a
# non-daemon thread still waiting on a machine. All are leaks; they are named, ended,
# and fail the run.

GRACE = 5.0  # seconds for processes being torn down to finish going


def _pipe(fd: int) -> str | None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("pipe:") else None


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def stdio_holders() -> dict[int, str]:
    """Processes other than this one and its ancestors that hold its stdout or stderr
    pipe: pid -> command line."""
    pipes = {p for p in (_pipe(1), _pipe(2)) if p}
    if not pipes:
        return {}
    mine = _ancestors()
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            fds = {os.readlink(f"/proc/{entry}/fd/{fd}") for fd in (1, 2)
                   if os.path.exists(f"/proc/{entry}/fd/{fd}")}
            if fds & pipes:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
    return out


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# multiprocessing's own helper (started by its spawn context): it ends by itself when
# this process exits, reading its pipe to the end
HELPERS = ("from multiprocessing.resource_tracker import main",)


def children() -> dict[int, str]:
    """This process's descendants still running, multiprocessing's helper aside:
    pid -> command line."""
    parents = {int(p): _ppid(p) for p in os.listdir("/proc") if p.isdigit()}
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                grew = True
    out: dict[int, str] = {}
    for pid in sorted(mine - {os.getpid()}):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    del out[pid]  # a zombie holds nothing; its parent reaps it
        except OSError:
            out.pop(pid, None)  # gone meanwhile
    return {pid: cmd for pid, cmd in out.items() if not any(h in cmd for h in HELPERS)}


def stray_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + GRACE
    while True:  # processes being torn down get a moment to finish going
        holders, kids = stdio_holders(), children()
        if not (holders or kids) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    threads = stray_threads()
    if not holders and not kids and not threads:
        return
    lines = ["the session leaves behind what a test started and did not stop:"]
    lines += [f"  process {pid} holds the session's output: {cmd}"
              for pid, cmd in sorted(holders.items())]
    lines += [f"  child process {pid} still runs: {cmd}" for pid, cmd in kids.items()
              if pid not in holders]
    frames = sys._current_frames()
    for t in threads:
        stack = "".join(traceback.format_stack(frames[t.ident])) if t.ident in frames else ""
        lines.append(f"  thread {t.name} still runs:\n{stack}")
    sys.stderr.write("\n".join(lines) + "\n")
    for pid in {**holders, **kids}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _stranded.extend(threads)


_stranded: list[threading.Thread] = []


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _stranded:
        # the interpreter would wait for them at exit; the summary and the report are out
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(pytest.ExitCode.TESTS_FAILED))
