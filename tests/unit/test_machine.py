"""Machine plumbing the providers share (provision/providers/machine.py): known_hosts
editing and the one SSH wait loop, with the login replaced by a script; ending
processes (provision/lab/procs.py) with real ones."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ProviderError
from provision.inventory import Node
from provision.lab import procs
from provision.providers import machine
from provision.providers.machine import Login, SSHWait, set_known_host


def node(name: str = "m-1", address: str = "10.9.0.5") -> Node:
    return Node(name=name, roles=frozenset({"worker"}), provider="local", address=address)


# --- known_hosts --------------------------------------------------------------------------


def test_known_hosts_lines_are_set_replaced_and_removed(tmp_path: Path) -> None:
    kh = tmp_path / "ssh" / "known_hosts"
    set_known_host(kh, "10.9.0.5", "ssh-ed25519 AAAAone")
    set_known_host(kh, "10.9.0.6", "ssh-ed25519 AAAAother")
    assert kh.read_text() == "10.9.0.5 ssh-ed25519 AAAAone\n10.9.0.6 ssh-ed25519 AAAAother\n"
    set_known_host(kh, "10.9.0.5", "ssh-ed25519 AAAAtwo")  # a re-created machine
    assert kh.read_text().splitlines() == ["10.9.0.6 ssh-ed25519 AAAAother",
                                           "10.9.0.5 ssh-ed25519 AAAAtwo"]
    kh.write_text(kh.read_text() + "[10.9.0.5]:22 ssh-ed25519 AAAAported\n")
    set_known_host(kh, "10.9.0.5", None)  # destroyed: every form of its address goes
    assert kh.read_text() == "10.9.0.6 ssh-ed25519 AAAAother\n"
    set_known_host(kh, "10.9.0.5", None)  # twice is harmless
    assert kh.read_text() == "10.9.0.6 ssh-ed25519 AAAAother\n"


# --- the SSH wait ---------------------------------------------------------------------------


class Script:
    """Stands in for connect + login: fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionRefusedError(f"{host}:{port} refused")
        a, b = socket.socketpair()
        b.close()
        return a


@pytest.fixture
def no_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """The login itself always works once a connection was made."""
    monkeypatch.setattr(machine, "probe", lambda login, address, *, sock=None, port=22,
                        timeout=10: sock.close() if sock else None)


def wait(script: Script, **fields: object) -> SSHWait:
    base: dict[str, object] = dict(
        what="lab machines", login=Login("root", Path("/k"), Path("/kh")),
        connect=script.connect, gone=lambda n: None, look=lambda n: f"; see {n.name}.log",
        timeout=10.0, pause=0.01)
    base.update(fields)
    return SSHWait(**base)  # type: ignore[arg-type]


def test_a_machine_that_answers_after_a_few_tries(no_login: None) -> None:
    said: list[tuple[str, str]] = []
    script = Script(failures=2)
    wait(script).run([node()], lambda n, m: said.append((n, m)))
    assert script.attempts == 3
    assert said == [("m-1", "SSH reachable")]


def test_timed_and_then_say_how_long_it_took(no_login: None) -> None:
    said: list[tuple[str, str]] = []
    seen: list[float] = []

    def then(n: Node, seconds: float) -> str:
        seen.append(seconds)
        return "booted (running)"

    wait(Script(0), timed=True, then=then).run([node()], lambda n, m: said.append((n, m)))
    assert said == [("m-1", "SSH reachable after 0s"), ("m-1", "booted (running) after 0s")]
    assert seen == [30.0]  # the time left of the wait, but never less than 30 s


def test_a_machine_that_died_fails_at_once_with_where_to_look(no_login: None) -> None:
    script = Script(failures=1000)
    with pytest.raises(ProviderError) as err:
        wait(script, gone=lambda n: "the machine exited").run([node()], lambda n, m: None)
    assert str(err.value) == "lab machines not reachable:\n  m-1: the machine exited; see m-1.log"
    assert err.value.nodes == ("m-1",)  # the machines stage names it as the failed node
    assert script.attempts == 0


def test_no_ssh_in_time_names_the_last_error_and_the_hint(no_login: None) -> None:
    with pytest.raises(ProviderError) as err:
        wait(Script(failures=1000), timeout=0.2, hint=" try X.").run(
            [node(), node("m-2", "10.9.0.6")], lambda n, m: None)
    lines = str(err.value).splitlines()
    assert lines[0] == "lab machines not reachable:"
    assert lines[1] == ("  m-1: no SSH on 10.9.0.5 after 0s (10.9.0.5:22 refused) try X."
                        "; see m-1.log")
    assert lines[2].startswith("  m-2: no SSH on 10.9.0.6 after 0s")


def test_no_time_at_all_reports_without_trying(no_login: None) -> None:
    script = Script(failures=0)
    assert wait(script, timeout=0.0).one(node(), lambda n, m: None) == (
        "m-1: no SSH on 10.9.0.5 after 0s (None); see m-1.log")
    assert script.attempts == 0


def test_a_failure_after_ssh_is_reported_with_where_to_look(no_login: None) -> None:
    def then(n: Node, seconds: float) -> str:
        raise ProviderError("waiting for the end of boot failed (boom)")

    assert wait(Script(0), then=then).one(node(), lambda n, m: None) == (
        "m-1: SSH works but waiting for the end of boot failed (boom); see m-1.log")


# --- ending processes -----------------------------------------------------------------------


def test_kill_all_ends_processes_that_ignore_sigterm() -> None:
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    polite = subprocess.Popen(["sleep", "60"])
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        procs.kill_all([stubborn.pid, polite.pid], timeout=0.5)
        assert procs.gone(stubborn.pid) and procs.gone(polite.pid)
    finally:
        for p in (stubborn, polite):
            p.kill()
            p.wait()
