"""Hosts that already exist: nothing to create, only to check they answer SSH."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provision.errors import ProviderError
from provision.executors.ssh import SSHEndpoint
from provision.paths import ClusterPaths
from provision.providers.base import MachineState, Problem, Progress, problem
from provision.providers.sshprobe import HostKeyUnknown, probe


def _user(inv: Any) -> str:
    ssh = getattr(inv, "ssh", None)
    return getattr(ssh, "user", None) or "root"


def _key(inv: Any) -> Path:
    ref = getattr(getattr(inv, "ssh", None), "private_key", None)
    if ref and str(ref).startswith("file:"):
        return Path(os.path.expanduser(str(ref)[5:]))
    return ClusterPaths.for_cluster(inv.name).ssh_private_key


class StaticProvider:
    name = "static"

    def check(self, inv: Any, nodes: Sequence[Any]) -> list[Problem]:
        key = _key(inv)
        if key != ClusterPaths.for_cluster(inv.name).ssh_private_key and not key.exists():
            return [problem(inv, "ssh.privateKey", f"private key {key} does not exist")]
        return []

    def ensure(self, inv: Any, nodes: Sequence[Any], progress: Progress | None = None) -> None:
        paths = ClusterPaths.for_cluster(inv.name)
        failed = []
        for node in nodes:
            if progress:
                progress(node.name, "checking SSH")
            try:
                probe(node.address, 22, _user(inv), _key(inv), paths.known_hosts)
            except HostKeyUnknown as e:
                failed.append(
                    f"{node.name}: {e}.\n    provision never trusts a key on first use. On "
                    f"the host itself (console or an already trusted session) run\n"
                    f"      ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub\n"
                    f"    compare the fingerprint with the one you expect, then append\n"
                    f"      {node.address} <contents of /etc/ssh/ssh_host_ed25519_key.pub>\n"
                    f"    to {paths.known_hosts}"
                )
            except Exception as e:  # noqa: BLE001 - every failure is reported per node
                failed.append(f"{node.name}: SSH to {node.address}:22 failed: {e}")
        if failed:
            raise ProviderError("static hosts not reachable:\n  " + "\n  ".join(failed))

    def observe(self, inv: Any, nodes: Sequence[Any]) -> dict[str, MachineState]:
        paths = ClusterPaths.for_cluster(inv.name)
        out = {}
        for node in nodes:
            try:
                probe(node.address, 22, _user(inv), _key(inv), paths.known_hosts, timeout=5)
                out[node.name] = MachineState.RUNNING
            except Exception:  # noqa: BLE001
                out[node.name] = MachineState.STOPPED  # it exists; we just cannot reach it
        return out

    def start(self, inv: Any, node: Any) -> None:
        raise ProviderError(f"{node.name} is a static host: power it on yourself")

    def stop(self, inv: Any, node: Any) -> None:
        raise ProviderError(f"{node.name} is a static host: provision does not power it off")

    def destroy(self, inv: Any, nodes: Sequence[Any]) -> None:
        return None  # provision did not create these hosts, so it removes nothing

    def ssh_endpoint(self, inv: Any, node: Any) -> SSHEndpoint:
        return SSHEndpoint(address=node.address, port=22, proxy_command=None)
