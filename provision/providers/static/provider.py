"""The static provider: existing hosts, reached over SSH at their address with the
inventory's key (``ssh.privateKey``) or the cluster's own. It creates and powers
nothing (no capabilities); ``ensure`` and ``observe`` log in, strictly: a host key
must already be in the cluster's known_hosts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from provision.executors.ssh import SSHEndpoint
from provision.inventory import Inventory, Node, Problem
from provision.paths import ClusterPaths
from provision.providers.base import MachineState, NodeSay, Provider, problem
from provision.providers.machine import SSH_PORT, HostKeyUnknown, Login, probe, wait_all


def login(inv: Inventory) -> Login:
    """The inventory's user and key (``file:`` reference), else the cluster's key."""
    paths = ClusterPaths.for_cluster(inv.name)
    ref = inv.ssh.private_key
    key = (Path(os.path.expanduser(ref[5:])) if ref and ref.startswith("file:")
           else paths.ssh_private_key)
    return Login(inv.ssh.user, key, paths.known_hosts)


class StaticProvider(Provider):
    name = "static"

    def validate(self, inv: Inventory, nodes: Sequence[Node], *,
                 host: bool = True) -> list[Problem]:
        key = login(inv).key_file
        if host and key != ClusterPaths.for_cluster(inv.name).ssh_private_key \
                and not key.exists():
            return [problem(inv, "ssh.privateKey", f"private key {key} does not exist")]
        return []

    def ensure(self, inv: Inventory, nodes: Sequence[Node], say: NodeSay) -> set[str]:
        """Every host answers SSH with a known host key; nothing is started, so the
        set of nodes that were not running is empty."""
        creds = login(inv)

        def check(node: Node) -> str | None:
            say(node.name, "checking SSH")
            try:
                probe(creds, node.address)
            except HostKeyUnknown as e:
                return (
                    f"{node.name}: {e}.\n    provision never trusts a key on first use. On "
                    f"the host itself (console or an already trusted session) run\n"
                    f"      ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub\n"
                    f"    compare the fingerprint with the one you expect, then append\n"
                    f"      {node.address} <contents of /etc/ssh/ssh_host_ed25519_key.pub>\n"
                    f"    to {creds.known_hosts}"
                )
            except Exception as e:  # noqa: BLE001 - every failure is reported per node
                return f"{node.name}: SSH to {node.address}:{SSH_PORT} failed: {e}"
            return None

        wait_all(nodes, check, "static hosts")
        return set()

    def observe(self, inv: Inventory, names: Sequence[str]) -> dict[str, MachineState]:
        """running when it answers SSH; stopped when it does not (it exists, it just
        cannot be reached); missing for a name the inventory does not hold."""
        creds = login(inv)
        known = {n.name: n for n in inv.nodes}
        out = {}
        for name in names:
            if name not in known:
                out[name] = MachineState.MISSING
                continue
            try:
                probe(creds, known[name].address, timeout=5)
                out[name] = MachineState.RUNNING
            except Exception:  # noqa: BLE001 - any failure: not reachable now
                out[name] = MachineState.STOPPED
        return out

    def destroy(self, inv: Inventory, names: Sequence[str], *, wipe: bool = False) -> None:
        """provision did not create these hosts, so it removes (and wipes) nothing."""

    def ssh_endpoint(self, inv: Inventory, name: str, address: str) -> SSHEndpoint:
        return SSHEndpoint(address=address, port=SSH_PORT, proxy_command=None)


__all__ = ["StaticProvider", "login"]
