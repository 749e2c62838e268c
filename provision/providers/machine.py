"""Machine plumbing the providers share, one home each:

* ``set_known_host``: the cluster's ``known_hosts``, edited under a lock. A provider
  writes a machine's host key when it creates it (the key it generated, never one
  seen on the network) and removes it when it destroys the machine.
* ``Login``, ``session`` and ``probe``: a strict paramiko login (``RejectPolicy``: a
  host key missing from ``known_hosts`` or different is refused, never learnt).
* ``connector``: how a TCP connection to a machine is opened: inside a network
  namespace of this host (lab machines, VMs on a lab bridge) or from its own.
* ``SSHWait``: the one loop that waits, bounded, until machines accept the login.
  What differs between providers is a field: how the machine is reached, how to tell
  it died, the timeouts, and more waiting once SSH answers (a VM's end of boot).
* ``wait_all``: one wait per machine at once; every failure reported together.
* ``ensure_lab_bridge``: the cluster's lab namespace and its bridge, which lab
  machines and VMs on the lab bridge share.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from provision import names
from provision.errors import ProviderError
from provision.inventory import Inventory, Node
from provision.lab import netns, nsproxy
from provision.paths import ClusterPaths
from provision.providers.base import NodeSay

SSH_PORT = 22

# --- known_hosts -------------------------------------------------------------------------


def set_known_host(known_hosts: Path, address: str, key: str | None) -> None:
    """Replace the lines for ``address`` with ``key`` (None: just remove them)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    lock_path = known_hosts.with_name(known_hosts.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
        kept = [ln for ln in lines if ln.split(" ", 1)[0].split(",")[0] not in
                (address, f"[{address}]:{SSH_PORT}")]
        if key:
            kept.append(f"{address} {key}")
        if kept != lines:
            tmp = known_hosts.with_name(known_hosts.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, known_hosts)


# --- a strict login ------------------------------------------------------------------------


class HostKeyUnknown(Exception):
    """The host's key is not in known_hosts, or another key is recorded for it."""


@dataclass(frozen=True)
class Login:
    """Who logs in, with which key, trusting which host keys."""

    user: str
    key_file: Path
    known_hosts: Path

    @classmethod
    def cluster(cls, inv: Inventory) -> Login:
        """The cluster's own key pair: the machines provision creates."""
        paths = ClusterPaths.for_cluster(inv.name)
        return cls(inv.ssh.user, paths.ssh_private_key, paths.known_hosts)


@contextmanager
def session(login: Login, address: str, *, sock: socket.socket | None = None,
            port: int = SSH_PORT, timeout: float = 10) -> Iterator[paramiko.SSHClient]:
    """A logged-in paramiko client (closed on the way out, with ``sock``). Raises on any
    failure; HostKeyUnknown for a missing or different host key."""
    client = paramiko.SSHClient()
    try:
        if login.known_hosts.exists():
            client.load_host_keys(str(login.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                address, port=port, username=login.user, key_filename=str(login.key_file),
                look_for_keys=False, allow_agent=False, timeout=timeout,
                banner_timeout=timeout, auth_timeout=timeout, sock=sock,
            )
        except paramiko.BadHostKeyException as e:
            raise HostKeyUnknown(
                f"host key of {address} differs from {login.known_hosts}: {e}") from e
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise HostKeyUnknown(f"no host key for {address} in {login.known_hosts}") from e
            raise
        yield client
    finally:
        client.close()
        if sock is not None:
            sock.close()


def probe(login: Login, address: str, *, sock: socket.socket | None = None,
          port: int = SSH_PORT, timeout: float = 10) -> None:
    """Log in and run ``true``; raises as ``session`` does, or when ``true`` fails."""
    with session(login, address, sock=sock, port=port, timeout=timeout) as client:
        _, stdout, _ = client.exec_command("true", timeout=timeout)
        if stdout.channel.recv_exit_status() != 0:
            raise OSError(f"`true` failed on {address}")


# how to open a TCP connection to (host, port) within a timeout
Connect = Callable[[str, int, float], socket.socket]


def connector(namespace: str | None) -> Connect:
    """Connections made inside the network namespace ``namespace`` of this host, or
    from this host's own namespace when it is None."""
    def connect(host: str, port: int, timeout: float) -> socket.socket:
        if namespace:
            return nsproxy.connect_in(namespace, host, port, timeout=timeout)
        return socket.create_connection((host, port), timeout=timeout)
    return connect


# --- waiting for machines -------------------------------------------------------------------


class Interrupted(ProviderError):
    """The command was interrupted while machines were being waited for."""


_STOP = threading.Event()


def stopping() -> bool:
    """True once the command was interrupted: every wait loop ends at its next turn."""
    return _STOP.is_set()


def pause(seconds: float) -> None:
    """``time.sleep`` that ends early, with Interrupted, when the command is stopping."""
    if _STOP.wait(seconds):
        raise Interrupted("interrupted")


def wait_all(nodes: Sequence[Node], wait: Callable[[Node], str | None], what: str) -> None:
    """Run ``wait`` for every node at once; the errors it returns (one line a node) raise
    ProviderError ``<what> not reachable``. Ctrl-C (or SIGTERM turned into
    KeyboardInterrupt) ends every wait at its next turn instead of its timeout."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(nodes)))
    try:
        errors = {n.name: e for n, e in zip(nodes, pool.map(wait, nodes), strict=True) if e}
    except BaseException:
        _STOP.set()
        pool.shutdown(wait=True, cancel_futures=True)
        _STOP.clear()
        raise
    pool.shutdown(wait=True)
    if errors:
        raise ProviderError(f"{what} not reachable:\n  " + "\n  ".join(errors.values()),
                            nodes=tuple(errors))


@dataclass(frozen=True)
class SSHWait:
    """How to wait until one provider's machines accept the login, bounded."""

    what: str  # the machines, in the error: "lab machines", "VMs"
    login: Login
    connect: Connect
    gone: Callable[[Node], str | None]  # why the machine will never answer, or None
    look: Callable[[Node], str]  # appended to a failure: where to look (console log)
    timeout: float  # seconds for the whole wait of one machine
    connect_timeout: float = 3
    login_timeout: float = 10
    pause: float = 0.3  # between two attempts
    hint: str = ""  # appended to a timeout: what to try
    timed: bool = False  # say how long it took (VMs take minutes)
    # once SSH answers: more waiting (a VM's end of boot), given the seconds left;
    # returns what to say when done, raises when it failed
    then: Callable[[Node, float], str] | None = None

    def run(self, nodes: Sequence[Node], say: NodeSay) -> None:
        wait_all(nodes, lambda node: self.one(node, say), self.what)

    def one(self, node: Node, say: NodeSay) -> str | None:
        """None once ``node`` answered (and ``then`` passed), else why not (one line)."""
        started = time.monotonic()
        deadline = started + self.timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if stopping():
                return f"{node.name}: interrupted"
            why = self.gone(node)
            if why is not None:
                return f"{node.name}: {why}{self.look(node)}"
            try:
                sock = self.connect(node.address, SSH_PORT, self.connect_timeout)
                probe(self.login, node.address, sock=sock, timeout=self.login_timeout)
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last = e
                if _STOP.wait(self.pause):
                    return f"{node.name}: interrupted"
                continue
            after = f" after {time.monotonic() - started:.0f}s" if self.timed else ""
            say(node.name, f"SSH reachable{after}")
            if self.then is None:
                return None
            try:
                done = self.then(node, max(30.0, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - reported with where to look
                return f"{node.name}: SSH works but {e}{self.look(node)}"
            say(node.name, f"{done} after {time.monotonic() - started:.0f}s")
            return None
        return (f"{node.name}: no SSH on {node.address} after {self.timeout:.0f}s ({last})"
                f"{self.hint}{self.look(node)}")


# --- the lab bridge --------------------------------------------------------------------------


def ensure_lab_bridge(inv: Inventory) -> str:
    """The cluster's lab namespace with br-lab holding the gateway (idempotent).
    Lab machines and VMs on the lab bridge share it: whichever provider runs first
    makes it. Returns the namespace's name."""
    lab = names.lab_netns(inv.name)
    netns.ensure_bridge(lab, f"{inv.network.gateway}/{inv.network.ip_network.prefixlen}")
    return lab


__all__ = [
    "SSH_PORT", "Connect", "HostKeyUnknown", "Interrupted", "Login", "SSHWait", "connector",
    "ensure_lab_bridge", "pause", "probe", "session", "set_known_host", "stopping", "wait_all",
]
