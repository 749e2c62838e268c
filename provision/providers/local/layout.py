"""Every name and path one lab machine uses, derived from the cluster and node names
alone (so a removed node's machine is still found), and the record of what was
created (``node.json``)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from provision import names
from provision.lab import netns, nspawn
from provision.paths import ClusterPaths

# What node.json holds: names, address, image: strings only.
Record = dict[str, str]


@dataclass(frozen=True)
class NodeLayout:
    """Every name and path one lab node uses."""

    cluster: str
    node: str
    dir: Path

    @classmethod
    def of(cls, cluster: str, node: str) -> NodeLayout:
        return cls(cluster, node, ClusterPaths.for_cluster(cluster).machines_dir / node)

    @property
    def machine(self) -> str:  # nspawn machine name, cgroup name and netns name
        return names.node_object(self.cluster, self.node)

    @property
    def netns(self) -> str:
        return self.machine

    @property
    def cgroup(self) -> str:
        return self.machine

    @property
    def lab(self) -> str:
        return names.lab_netns(self.cluster)

    @property
    def veth(self) -> str:
        return netns.veth_name(self.cluster, self.node)

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def containerd(self) -> Path:
        return self.dir / "containerd"

    @property
    def kubelet(self) -> Path:
        return self.dir / "kubelet"

    @property
    def pidfile(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def meta(self) -> Path:
        return self.dir / "node.json"

    @property
    def host_key_pub(self) -> Path:
        return self.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub"

    def pid(self) -> int | None:
        return nspawn.read_pid(self.pidfile, self.machine)

    def record(self) -> Record:
        """What node.json says ({} when there is none or it cannot be read)."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.meta.read_text())
            if isinstance(data, dict):
                return {str(k): str(v) for k, v in data.items()}
        return {}

    def write_record(self, record: Record) -> None:
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.meta)


def recorded_machines(cluster: str) -> dict[str, str]:
    """Every lab machine the cluster has on disk (node name -> the address it was
    created with), in the inventory or not any more."""
    machines = ClusterPaths.for_cluster(cluster).machines_dir
    if not machines.is_dir():
        return {}
    out = {}
    for meta in sorted(machines.glob("*/node.json")):
        address = NodeLayout.of(cluster, meta.parent.name).record().get("address")
        if address:
            out[meta.parent.name] = address
    return out


__all__ = ["NodeLayout", "Record", "recorded_machines"]
