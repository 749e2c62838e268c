"""One run at a time per cluster: the run lock.

Commands that change a cluster (``up``, ``destroy``, ``restore``, ``backup``) hold an
exclusive ``flock`` on ``<state>/clusters/<name>/run.lock`` for as long as they run; a
second one is refused (``ClusterBusy``, exit 2) with the holder named. ``verify`` is
refused while a change runs but holds nothing; ``plan`` and ``status`` never wait.

Why flock: the kernel drops the lock when the last descriptor of its open file goes
away, so a run killed with SIGKILL leaves no lock behind and nothing has to guess from
pids whether a lock is stale. The holder's note (pid, command, command line, start,
host) is written into the same file only once the lock is held, so a refused run can
say who it waited for, and is truncated on a clean release.

The descriptor is close-on-exec and closed in forked children: the services a run
spawns (the artifact mirror, API forwards, dnsmasq, SSH masters) outlive it and must
not keep the cluster locked. The lock is re-entrant in the thread that holds it, so a
command may call another one; another thread of the process is refused like any other
process, since two open files of one process conflict under flock too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from provision.errors import ClusterBusy
from provision.paths import ClusterPaths

LOCK_NAME = "run.lock"
# ``verify`` and ``status`` look at the lock by taking it shared for an instant, so a
# change that finds it busy tries again for this long before refusing; a real holder
# is still there afterwards. It also covers the instant between a holder's flock and
# its note.
WAIT_SECONDS = 1.0
_POLL = 0.02
_SECRET = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)


@dataclass(frozen=True)
class Holder:
    """Who holds a cluster's run lock, as the holder wrote it down."""

    pid: int
    command: str  # the provision command: up, destroy, restore, backup
    argv: tuple[str, ...]  # the process's command line, secrets masked
    started: str  # UTC, ISO 8601
    host: str

    @classmethod
    def me(cls, command: str) -> Holder:
        return cls(pid=os.getpid(), command=command, argv=command_line(sys.argv),
                   started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   host=socket.gethostname())

    def to_json(self) -> dict[str, str | int | list[str]]:
        return {"pid": self.pid, "command": self.command, "argv": list(self.argv),
                "started": self.started, "host": self.host}

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The note in a lock file; None when there is none (yet) or it is garbled."""
        try:
            data = json.loads(text)
            holder = cls(pid=int(data["pid"]), command=str(data["command"]),
                         argv=tuple(str(w) for w in data["argv"]),
                         started=str(data["started"]), host=str(data["host"]))
        except (ValueError, KeyError, TypeError):
            return None
        return holder

    def describe(self) -> str:
        return (f"`provision {self.command}`, pid {self.pid} on {self.host}, started "
                f"{self.started} (command line: {' '.join(self.argv)})")


def command_line(argv: list[str]) -> tuple[str, ...]:
    """The words of a command line fit to be written down: the program's name without
    its path, and the value of any option that looks like a secret masked."""
    if not argv:
        return ()
    program = Path(argv[0])
    # `python -m provision` shows up as .../provision/__main__.py
    words = [program.parent.name if program.name == "__main__.py" else program.name]
    mask_next = False
    for word in argv[1:]:
        if mask_next:
            words.append("***")
            mask_next = False
        elif "=" in word and _SECRET.search(word.split("=", 1)[0]):
            words.append(word.split("=", 1)[0] + "=***")
        else:
            words.append(word)
            mask_next = word.startswith("-") and bool(_SECRET.search(word))
    return tuple(words)


def lock_file(paths: ClusterPaths) -> Path:
    # In the cluster's directory itself, which `destroy` keeps (it removes the keys,
    # PKI and kubeconfig inside it, never the directory), so the lock outlives it.
    return paths.root / LOCK_NAME


@dataclass
class _Held:
    fd: int
    holder: Holder
    thread: int
    depth: int = 1


_held: dict[str, _Held] = {}  # by the lock file's absolute path
_guard = threading.Lock()


def _forget_in_child() -> None:
    """A forked child does not hold its parent's lock: closing its copy of the
    descriptor leaves the parent's lock alone (flock releases only when every copy is
    gone) and keeps the child from holding it after the parent ends."""
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    for held in _held.values():
        with suppress(OSError):
            os.close(held.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@contextmanager
def exclusive(paths: ClusterPaths, cluster: str, command: str) -> Iterator[Holder]:
    """Hold the cluster's run lock for the block, or raise ClusterBusy naming the run
    that holds it. Creates the cluster's state directory when it is missing."""
    path = lock_file(paths)
    key = os.path.abspath(path)
    with _guard:
        mine = _held.get(key)
        if mine is not None and mine.thread == threading.get_ident():
            mine.depth += 1  # a command inside a command: already ours
        elif mine is not None:
            raise _busy(cluster, command, mine.holder, path)
    if mine is not None:
        try:
            yield mine.holder
        finally:
            with _guard:
                mine.depth -= 1
        return
    fd = _acquire(path, cluster, command)
    holder = Holder.me(command)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder.to_json()) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    held = _Held(fd, holder, threading.get_ident())
    with _guard:
        _held[key] = held
    try:
        yield holder
    finally:
        with _guard:
            _held.pop(key, None)
        try:
            os.ftruncate(fd, 0)  # no note of a finished run for anyone to read
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _acquire(path: Path, cluster: str, command: str) -> int:
    # the cluster's directory is private (ClusterPaths.ensure makes it so on a run too)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        # No O_TRUNC: the file holds the current holder's note until we hold the lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = Holder.parse(_read(fd))
                os.close(fd)
                raise _busy(cluster, command, holder, path) from None
            os.close(fd)
            time.sleep(_POLL)
            continue
        except BaseException:
            os.close(fd)
            raise
        # The file locked must still be the one at the path: had someone removed it
        # between our open and flock, a later run would lock a new file beside us.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.fchmod(fd, 0o600)  # an older file may have been made with other modes
            return fd
        os.close(fd)


def changing(paths: ClusterPaths) -> Holder | None:
    """The run changing the cluster now, if another one than the caller's own; takes
    no lock beyond an instant's shared one and creates nothing."""
    path = lock_file(paths)
    with _guard:
        mine = _held.get(os.path.abspath(path))
    if mine is not None:
        return None if mine.thread == threading.get_ident() else mine.holder
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _note_of_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_while_changing(paths: ClusterPaths, cluster: str, command: str) -> None:
    """Raise ClusterBusy when another run is changing the cluster."""
    holder = changing(paths)
    if holder is not None:
        raise _busy(cluster, command, holder, lock_file(paths))


def _note_of_holder(fd: int) -> Holder:
    """The holder's note; a holder that has just taken the lock writes it at once."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (holder := Holder.parse(_read(fd))) is None and time.monotonic() < deadline:
        time.sleep(_POLL)
    return holder or Holder(pid=0, command="?", argv=(), started="?", host="?")


def _read(fd: int) -> str:
    return os.pread(fd, 64 * 1024, 0).decode(errors="replace")


def _busy(cluster: str, command: str, holder: Holder | None, path: Path) -> ClusterBusy:
    who = (holder.describe() if holder is not None and holder.pid
           else f"a process that left no note in {path}")
    return ClusterBusy(
        f"cluster {cluster!r} is being changed by another run: {who}. Nothing was done; "
        f"run `provision {command}` again once it has ended (a killed run leaves no lock "
        f"behind: the kernel releases it with the process).",
        pid=holder.pid if holder is not None and holder.pid else None)


__all__ = ["LOCK_NAME", "WAIT_SECONDS", "Holder", "changing", "command_line", "exclusive",
           "lock_file", "refuse_while_changing"]
