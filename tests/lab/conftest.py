"""Lab-tier fixtures: real lab machines (systemd-nspawn in network namespaces).

Every cluster a test makes is named ``pvlm-<pytest pid>-<random>`` and is always torn
down by a finalizer. A crashed earlier run (its pid no longer alive) may have left
machines, mounts, namespaces or cgroups: they are swept before the first lab test.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PREFIX = "pvlm-"  # lab-machines tests; never a prefix of another suite's cluster names


def _owner_alive(name: str) -> bool:
    """Names look like pvlm-<pid>-<rand>[-<node>]: keep those of a live pytest."""
    m = re.match(rf"{PREFIX}(\d+)-", name)
    if not m:
        return False
    try:
        argv = Path(f"/proc/{m.group(1)}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pytest" in argv or b"python" in argv


def lab_requirements() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    for tool in ("systemd-nspawn", "ip", "ssh"):
        if not shutil.which(tool):
            return f"lab tests need {tool}"
    return None


@pytest.fixture(scope="session")
def lab_host() -> Iterator[None]:
    """Skip without root/nspawn; sweep leftovers of crashed earlier runs once."""
    reason = lab_requirements()
    if reason:
        pytest.skip(reason)
    from provision.lab.cleanup import sweep

    sweep(PREFIX, keep=_owner_alive)
    yield


@dataclass
class LabCluster:
    name: str
    inv: Any
    provider: Any
    paths: Any
    inventory_path: Path

    @property
    def ssh_config(self) -> Path:
        return self.paths.ssh_config

    def write_ssh_config(self) -> Path:
        from provision.executors.ssh import write_ssh_config

        endpoints = {n.name: self.provider.ssh_endpoint(self.inv, n.name, n.address)
                     for n in self.inv.nodes}
        return write_ssh_config(self.paths, "root", endpoints)

    def ssh(self, node: str, script: str, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Real OpenSSH through the cluster's ssh config (strict host keys, ProxyCommand).
        ControlMaster is off here so that no master outlives the machines."""
        proc = subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "ControlMaster=no",
             "-o", "ControlPath=none", node, script],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {node} {script!r} -> {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def node(self, name: str) -> Any:
        return self.inv.node(name)


INVENTORY = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: {name}
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: {net}.10}}
network: {{subnet: {net}.0/24}}
ssh: {{user: root}}
providers: {{local: {{image: debian-12}}}}
nodes:
{nodes}
"""


def write_inventory(path: Path, name: str, nodes: int, net: str = "10.251.0") -> Path:
    lines = [
        f"  - {{name: m-{i}, roles: [{'control-plane' if i == 1 else 'worker'}], "
        f"provider: local, address: {net}.{20 + i}, machine: {{cpus: 1, memory: 768Mi}}}}"
        for i in range(1, nodes + 1)
    ]
    path.write_text(INVENTORY.format(name=name, net=net, nodes="\n".join(lines)))
    return path


def make_cluster_name() -> str:
    return f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def lab_cluster(lab_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    """A 3-node lab cluster (not yet created: tests call ensure). Always destroyed."""
    from provision.inventory import load_inventory
    from provision.lab.cleanup import sweep
    from provision.paths import ClusterPaths
    from provision.providers.registry import load

    base = tmp_path_factory.mktemp("labmachines")
    name = make_cluster_name()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(base / "state"))
        inv = load_inventory(write_inventory(base / "inventory.yaml", name, 3))
        provider = load("local")
        cluster = LabCluster(name, inv, provider, ClusterPaths.for_cluster(name),
                             base / "inventory.yaml")
        try:
            yield cluster
        finally:
            try:
                provider.destroy(inv, [n.name for n in inv.nodes])
            finally:
                sweep(name)  # whatever destroy missed (it should be nothing)
