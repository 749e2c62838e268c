"""A lab cluster with a virtual machine as its worker, for the slow tier and the bench.

The cheapest cluster that proves a VM can be a Kubernetes node: one control-plane lab
machine ``cp-1`` (systemd-nspawn, local provider) and one worker VM ``vm-1`` (libvirt,
TCG), both on the lab bridge ``br-lab`` of the cluster's lab namespace
``pv-<cluster>``. A private libvirtd (libvirtd_lab.py) runs in that namespace; the
artifact mirror runs there too, on the gateway, and serves both nodes. One
control-plane node is allowed (``provision validate`` warns: no HA), with the same
VIP path as production (keepalived + haproxy on cp-1).

``vm_cluster()`` sets everything up and always tears everything down: `provision
destroy` (the VM first, then the lab machine and the lab namespace, which ends the
libvirtd in it), then the libvirtd's directory and whatever a failed destroy left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libvirtd_lab import LabLibvirtd

NET = "10.254.7"
FORWARD_PORT = 16462
VM_CPUS = 2  # two vCPUs: TCG runs one host thread per vCPU (MTTCG), so it gets both cores
VM_MEMORY = "1536Mi"
VM_DISK = "5Gi"


def cluster_yaml(cluster: str, net: str, forward_port: int, providers: str, nodes: str) -> str:
    """A slow-tier inventory: control-plane lab machine cp-1 at <net>.11, VIP <net>.10,
    then ``nodes`` (YAML list items); ``providers`` adds to the local provider's."""
    return f"""\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: {cluster}
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: {net}.10}}
artifacts: {{source: offline}}
network: {{subnet: {net}.0/24}}
ssh: {{user: root}}
providers:
  local: {{apiForwardPort: {forward_port}}}
{providers}nodes:
  - {{name: cp-1, roles: [control-plane], provider: local, address: {net}.11,
     machine: {{cpus: 1, memory: 2Gi}}}}
{nodes}"""


def libvirt_yaml(cluster: str, lab: LabLibvirtd) -> str:
    return (f'  libvirt: {{uri: "{lab.uri}", pool: {lab.pool_name}, netns: pv-{cluster}, '
            "bridge: br-lab}\n")


def vm_yaml(address: str, vm_memory: str = VM_MEMORY) -> str:
    return (f"  - {{name: vm-1, roles: [worker], provider: libvirt, address: {address},\n"
            f"     machine: {{cpus: {VM_CPUS}, memory: {vm_memory}, disk: {VM_DISK}}}}}\n")


def inventory_text(cluster: str, lab: LabLibvirtd, vm_memory: str = VM_MEMORY,
                   with_vm: bool = True) -> str:
    """``with_vm=False``: vm-1 removed from the inventory (libvirt stays configured)."""
    return cluster_yaml(cluster, NET, FORWARD_PORT, libvirt_yaml(cluster, lab),
                        vm_yaml(f"{NET}.21", vm_memory) if with_vm else "")


@dataclass
class VMCluster:
    cluster: str
    lab: LabLibvirtd
    tmp: Path
    path: Path
    timings: dict[str, float] = field(default_factory=dict)
    destroyed: bool = False

    def inventory_text(self, **kw: Any) -> str:
        return inventory_text(self.cluster, self.lab, **kw)

    def write_inventory(self, **kw: Any) -> Path:
        self.path.write_text(self.inventory_text(**kw))
        return self.path

    def inv_with(self, **kw: Any) -> Any:
        """The inventory changed as ``inventory_text(**kw)`` says, in a file of its own."""
        from provision.inventory import load_inventory

        changed = self.tmp / "changed-inventory.yaml"
        changed.write_text(self.inventory_text(**kw))
        return load_inventory(changed)

    @property
    def paths(self) -> Any:
        from provision.paths import ClusterPaths

        return ClusterPaths.for_cluster(self.cluster)

    def inv(self) -> Any:
        from provision.inventory import load_inventory

        return load_inventory(self.path)

    def ssh(self, node: str, script: str, timeout: float = 120, check: bool = True,
            known_hosts: Path | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["-o", f"UserKnownHostsFile={known_hosts}"] if known_hosts else []
        proc = subprocess.run(
            ["ssh", "-F", str(self.paths.ssh_config), "-o", "ControlMaster=no",
             "-o", "ControlPath=none", *extra, node, script],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {node} {script!r} -> {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        from provision.artifacts import build

        binary = build(self.inv().kubernetes.version).binaries["kubectl"]
        proc = subprocess.run([str(binary), "--kubeconfig", str(self.paths.kubeconfig),
                               "--request-timeout", "20s", *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
        return proc

    def ready_nodes(self) -> dict[str, str]:
        """Node name -> kubelet version, for the nodes whose Ready condition is True."""
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        return {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"]
                for n in nodes
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n["status"]["conditions"])}

    def record_up(self, summary: Any) -> dict[str, Any]:
        """Timings of one `up` from its run record; returns report.json."""
        report = json.loads((Path(summary.record_dir) / "report.json").read_text())
        self.timings["up_total"] = report["duration"]
        for stage in report["stages"]:
            self.timings[f"stage_{stage['name']}"] = stage["duration"]
        log = (Path(summary.record_dir) / "run.log").read_text(errors="replace")
        for key, pattern in (("vm_create_to_ssh", r"vm-1.*SSH reachable after (\d+)s"),
                             ("vm_create_to_booted", r"vm-1.*booted \(\w+.*?\) after (\d+)s")):
            m = re.search(pattern, log)
            if m:
                self.timings[key] = float(m.group(1))
        # join to Ready: kubeadm join of the VM (workers) through its CNI and Ready
        # condition (network; the kubelet reports NotReady until flannel runs there)
        stages = {s["name"]: s for s in report["stages"]}
        if "workers" in stages and "network" in stages:
            self.timings["vm_join_to_ready"] = round(
                stages["network"]["finished"] - stages["workers"]["started"], 1)
        return report


def qemu_pids(domain: str) -> list[int]:
    """qemu processes of one domain, anywhere on this host."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"qemu-system" in argv and f"guest={domain},".encode() in argv:
                    out.append(int(entry))
    return out


def mirror_pids(gateway: str) -> list[int]:
    """The cluster's artifact mirror (provision.artifacts.serve on its gateway)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"provision.artifacts.serve" in argv and gateway.encode() in argv:
                    out.append(int(entry))
    return out


@contextlib.contextmanager
def vm_cluster(tmp: Path, cluster: str) -> Iterator[VMCluster]:
    """Image built, libvirtd running in pv-<cluster>, inventory written; nothing created
    yet. Everything is removed on the way out, also when the body failed."""
    from provision import commands
    from provision.lab import vmimage
    from provision.lab.cleanup import sweep

    keys = ("PROVISION_STATE_DIR", "PROVISION_LIBVIRT_ACCEL")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["PROVISION_STATE_DIR"] = str(tmp / "state")
    # FINDINGS: /dev/kvm exists on the build box but KVM guests hang; TCG it is.
    os.environ["PROVISION_LIBVIRT_ACCEL"] = "tcg"
    lab = LabLibvirtd(f"pv-{cluster}")  # creates the cluster's lab namespace
    lab.clusters.append(cluster)
    vc = VMCluster(cluster=cluster, lab=lab, tmp=tmp, path=tmp / "inventory.yaml")
    try:
        started = time.monotonic()
        vmimage.ensure_vm_image("debian-12")
        vc.timings["image_ready"] = round(time.monotonic() - started, 1)
        lab.start()
        vc.write_inventory()
        yield vc
    finally:
        if not vc.destroyed and vc.path.exists():
            try:
                commands.destroy(vc.path)
            except Exception as e:  # noqa: BLE001 - the teardown below still runs
                print(f"destroy during teardown failed: {e}")
        lab.stop()
        # lab machine leftovers, if destroy failed (only this cluster's: the prefix
        # pvvm12 must not take pvvm123's)
        sweep(cluster, keep=lambda name: name != cluster and not name.startswith(f"{cluster}-"))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
