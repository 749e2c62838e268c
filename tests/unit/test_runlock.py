"""The run lock (provision/run/lock.py) with real processes and real flock: a second
run is refused naming the first, a killed run leaves no lock, children a run spawns or
forks do not keep it, the same thread may nest it, and readers never block a change."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.errors import EXIT_BAD_INPUT, BadInput, ClusterBusy
from provision.paths import ClusterPaths
from provision.run import lock

ROOT = Path(__file__).resolve().parents[2]

# A process that takes the lock as `provision <command>` would and reports on stdout.
# mode: hold | spawn (starts a long-lived child the way a run starts a service, with
# close_fds=False so only close-on-exec keeps the lock's descriptor from it) |
# spawn-release (the same, then releases the lock and lives on) | fork (a forked child
# that never execs, like a daemonising helper) | probe (calls lock.changing in a loop).
HOLDER = r"""
import os, subprocess, sys, time
from pathlib import Path
from provision.paths import ClusterPaths
from provision.run import lock

root, command, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
paths = ClusterPaths(root)
if mode == "probe":
    print("probing", flush=True)
    while True:
        lock.changing(paths)
with lock.exclusive(paths, "c", command):
    child = 0
    if mode in ("spawn", "spawn-release"):
        child = subprocess.Popen(["sleep", "60"], close_fds=False, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    elif mode == "fork":
        child = os.fork()
        if child == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            time.sleep(60)
            os._exit(0)
    print("locked", child, flush=True)
    if mode != "spawn-release":
        time.sleep(60)
print("released", flush=True)
time.sleep(60)
"""


class Procs:
    """Processes a test started, killed at its end whatever happened."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def holder(self, root: Path, command: str = "up", mode: str = "hold"
               ) -> tuple[subprocess.Popen[str], int]:
        """Start a holder; return it once it holds the lock, and its child's pid."""
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), command, mode],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line and line[0] in ("locked", "probing"), proc.stderr.read() if proc.stderr else ""
        child = int(line[1]) if line[0] == "locked" else 0
        if child:
            self.pids.append(child)
        return proc, child

    def close(self) -> None:
        # the holders' children first: once a holder is gone they are init's, not ours
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            proc.kill()
            proc.communicate()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def paths(tmp_path: Path) -> ClusterPaths:
    return ClusterPaths(tmp_path / "state" / "clusters" / "c")


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_second_run_is_refused_naming_the_first(paths, procs):
    holder, _ = procs.holder(paths.root, "up")
    started = time.monotonic()
    with pytest.raises(ClusterBusy) as refused, lock.exclusive(paths, "c", "destroy"):
        pytest.fail("took a lock another process holds")
    message = str(refused.value)
    assert refused.value.exit_code == EXIT_BAD_INPUT and isinstance(refused.value, BadInput)
    assert refused.value.pid == holder.pid
    assert f"pid {holder.pid} on {socket.gethostname()}" in message
    assert "`provision up`" in message and "`provision destroy` again" in message
    assert re.search(r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", message), message
    assert "cluster 'c' is being changed by another run" in message
    # it tried for a moment (a reader's instant of shared lock is no reason to refuse)
    assert lock.WAIT_SECONDS <= time.monotonic() - started < lock.WAIT_SECONDS + 2
    # the refused run left the holder's note alone: it writes only what it holds
    note = lock.Holder.parse(lock.lock_file(paths).read_text())
    assert note is not None and note.pid == holder.pid and note.command == "up"


def test_a_killed_run_leaves_no_lock(paths, procs):
    holder, _ = procs.holder(paths.root, "restore")
    kill(holder)  # SIGKILL: no finally, no cleanup, the kernel drops the flock
    assert lock.changing(paths) is None
    with lock.exclusive(paths, "c", "up") as me:
        assert me.pid == os.getpid()
        note = lock.Holder.parse(lock.lock_file(paths).read_text())
        assert note == me  # the dead run's note is replaced
    assert lock.lock_file(paths).read_text() == ""  # a clean end leaves no note


def test_the_lock_file_is_0600_and_the_state_directory_is_made(paths):
    assert not paths.root.exists()
    old = os.umask(0)  # whatever the umask, the note is the user's alone
    try:
        with lock.exclusive(paths, "c", "up"):
            mode = stat.S_IMODE(lock.lock_file(paths).stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o600 and paths.root.is_dir()
    lock.lock_file(paths).chmod(0o644)  # a file left with other modes is put right
    with lock.exclusive(paths, "c", "up"):
        assert stat.S_IMODE(lock.lock_file(paths).stat().st_mode) == 0o600


def open_files(pid: int) -> set[str]:
    """What ``pid``'s descriptors point at (one closed while we look is skipped)."""
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


@pytest.mark.parametrize("mode", ["spawn", "spawn-release", "fork"])
def test_children_of_a_run_do_not_keep_the_lock(paths, procs, mode):
    """The mirror, API forwards, dnsmasq and SSH masters a run starts outlive it: a
    child spawned (close-on-exec) or forked (closed at fork) while the lock is held
    must not hold it once its parent released it or died."""
    holder, child = procs.holder(paths.root, "up", mode)
    assert child and alive(child)
    if mode == "spawn":
        # the descriptor did not even reach the child
        target = str(lock.lock_file(paths))
        assert target not in open_files(child)
    if mode == "spawn-release":
        assert holder.stdout is not None and holder.stdout.readline().strip() == "released"
        assert alive(holder.pid)
    else:
        kill(holder)
    assert alive(child)
    assert lock.changing(paths) is None
    with lock.exclusive(paths, "c", "up"):
        pass


def test_an_inheritable_descriptor_would_keep_the_lock(paths, procs):
    """Why the test above matters: the same child given the descriptor keeps the
    cluster locked after the run is gone."""
    script = (
        "import fcntl, os, subprocess, sys, time\n"
        "os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.set_inheritable(fd, True)\n"
        "child = subprocess.Popen(['sleep', '60'], close_fds=False,\n"
        "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('locked', child.pid, flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(lock.lock_file(paths))],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    procs.started.append(proc)
    assert proc.stdout is not None
    child = int(proc.stdout.readline().split()[1])
    procs.pids.append(child)
    kill(proc)
    assert lock.changing(paths) is not None  # the orphaned child holds it
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lock.changing(paths) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.changing(paths) is None


def test_the_holding_thread_may_nest_the_lock_and_others_may_not(paths, procs):
    refusals: list[str] = []

    def other_thread() -> None:
        try:
            with lock.exclusive(paths, "c", "destroy"):
                refusals.append("took it")
        except ClusterBusy as exc:
            refusals.append(str(exc))

    with lock.exclusive(paths, "c", "up") as outer:
        with lock.exclusive(paths, "c", "backup") as inner:
            assert inner == outer  # the outer command stays the named holder
            lock.refuse_while_changing(paths, "c", "verify")  # a change may verify itself
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(refusals) == 1 and f"pid {os.getpid()}" in refusals[0], refusals
        # after the inner block the outer one still holds it, against other processes too
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from provision.paths import ClusterPaths; from provision.run import lock; "
             "h = lock.changing(ClusterPaths(Path(sys.argv[1]))); print(h.pid if h else 0)",
             str(paths.root)], cwd=ROOT, capture_output=True, text=True, check=True)
        assert int(probe.stdout) == os.getpid()
    assert lock.changing(paths) is None
    holder, _ = procs.holder(paths.root)  # and released for everyone after the outer one
    assert lock.changing(paths) == lock.Holder.parse(lock.lock_file(paths).read_text())


def test_readers_see_the_holder_without_blocking_or_creating_anything(paths, procs):
    assert lock.changing(paths) is None
    assert not paths.root.exists()  # looking created nothing
    lock.refuse_while_changing(paths, "c", "verify")
    holder, _ = procs.holder(paths.root, "destroy")
    seen = lock.changing(paths)
    assert seen is not None and seen.pid == holder.pid and seen.command == "destroy"
    with pytest.raises(ClusterBusy, match=rf"pid {holder.pid} .*`provision verify` again"):
        lock.refuse_while_changing(paths, "c", "verify")


def test_a_reader_looking_all_the_time_does_not_make_a_change_fail(paths, procs):
    paths.root.mkdir(parents=True)
    lock.lock_file(paths).touch(mode=0o600)
    procs.holder(paths.root, mode="probe")  # lock.changing in a tight loop
    for _ in range(2000):
        with lock.exclusive(paths, "c", "up"):
            pass


def test_command_lines_are_written_down_without_secrets():
    argv = ["/x/.venv/bin/provision", "up", "-i", "inv.yaml", "--token", "abc",
            "--api-key=def", "PASSWORD=ghi", "--force"]
    assert lock.command_line(argv) == ("provision", "up", "-i", "inv.yaml", "--token", "***",
                                       "--api-key=***", "PASSWORD=***", "--force")
    main = str(ROOT / "provision" / "__main__.py")
    assert lock.command_line([main, "destroy", "--yes"]) == ("provision", "destroy", "--yes")


def test_the_cli_refuses_a_change_and_shows_the_holder_in_status(tmp_path, procs):
    """Through the real entry point, on a never-built lab cluster whose state lives in
    tmp_path: destroy is refused (exit 2, the holder in stderr) before it looks at any
    machine; status is not blocked and names the holder."""
    name = "rl" + uuid.uuid4().hex[:6]
    inventory = tmp_path / "inventory.yaml"
    text = (ROOT / "inventories" / "local.yaml").read_text()
    inventory.write_text(re.sub(r"(?m)^name: local$", f"name: {name}", text))
    env = {**os.environ, "PROVISION_STATE_DIR": str(tmp_path / "state")}
    paths = ClusterPaths(tmp_path / "state" / "clusters" / name)
    holder, _ = procs.holder(paths.root, "up")
    # Interlock: destroy must not go on to tear down lab pieces if the lock failed.
    seen = lock.changing(paths)
    assert seen is not None and seen.pid == holder.pid
    cli = [sys.executable, "-m", "provision"]
    destroy = subprocess.run([*cli, "destroy", "-i", str(inventory), "--yes"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert destroy.returncode == 2, destroy.stdout + destroy.stderr
    assert f"pid {holder.pid}" in destroy.stderr and "`provision up`" in destroy.stderr
    status = subprocess.run([*cli, "status", "-i", str(inventory), "-o", "json"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    running = json.loads(status.stdout)["running"]
    assert running["pid"] == holder.pid and running["command"] == "up"
    text = subprocess.run([*cli, "status", "-i", str(inventory)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert f"being changed now: provision up, pid {holder.pid}" in text.stdout
    assert sorted(p.name for p in paths.root.iterdir()) == [lock.LOCK_NAME]
