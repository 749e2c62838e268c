"""A KVM/TCG virtual machine as a Kubernetes worker, driven by `provision up` itself.

The cluster (tests/slow/vmcluster.py): lab machine ``cp-1`` (local provider,
systemd-nspawn, cgroup v1 like this box) as the only control-plane node, and ``vm-1``
(libvirt provider, TCG, cgroup v2) as its worker, both on the lab bridge of the
cluster's namespace ``pv-<cluster>``, where a private libvirtd and the artifact mirror
run. One VM boot serves the whole module, in file order:

1. `provision up` builds the cluster from nothing: the VM is created from the image
   built offline, every stage's checks pass on both nodes, and the VM is a Ready node
   with the pinned kubelet; each kubelet has its own node's settings (the cgroup v2
   VM did not inherit the cgroup v1 lab machine's, issue 7);
2. the VM is what the inventory says, answers SSH with strict host keys from the first
   connection, and its guest agent answers;
3. a second ensure reuses it and a changed spec is reported, not applied; stop/start
   through ACPI;
4. vm-1 removed from the inventory: `up` drains it, resets it and destroys its VM;
5. `provision destroy` leaves no domain, volume, network, process or namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcluster import (
    NET,
    VM_CPUS,
    VM_DISK,
    VM_MEMORY,
    VMCluster,
    inventory_text,
    qemu_pids,
    vm_cluster,
)

pytestmark = pytest.mark.slow

PINNED = "v1.37.2"


@pytest.fixture(scope="module")
def vc(slow_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VMCluster]:
    import os

    with vm_cluster(tmp_path_factory.mktemp("vm"), f"pvvm{os.getpid()}") as cluster:
        try:
            yield cluster
        finally:
            print("timings:", json.dumps(cluster.timings))


def _mib(quantity: str) -> int:
    return int(quantity.removesuffix("Mi")) if quantity.endswith("Mi") \
        else int(quantity.removesuffix("Gi")) * 1024


def test_up_makes_the_vm_a_ready_worker(vc: VMCluster) -> None:
    from provision import commands

    summary = commands.up(vc.path)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    report = vc.record_up(summary)
    print("up:", json.dumps(vc.timings))
    checks = {s["name"]: s["checks"] for s in report["stages"]}
    assert set(checks) >= {"machines", "os", "hosts", "runtime", "workers", "network"}
    failed = [c for cs in checks.values() for c in cs if c["outcome"] == "failed"]
    assert not failed, failed
    for stage in ("os", "hosts", "runtime", "workers", "network"):  # the VM was checked too
        assert any(c["node"] == "vm-1" and c["outcome"] == "passed" for c in checks[stage]), \
            (stage, checks[stage])

    commands.kubeconfig(vc.path)
    assert vc.ready_nodes() == {"cp-1": PINNED, "vm-1": PINNED}

    # each kubelet runs with its own node's settings (kubeadm patch, roles/kubelet)
    def kubelet_config(node: str) -> str:
        return vc.ssh(node, "cat /var/lib/kubelet/config.yaml").stdout

    vm, lab = kubelet_config("vm-1"), kubelet_config("cp-1")
    assert "cgroupDriver: systemd" in vm and "cgroupRoot" not in vm
    assert "failCgroupV1: false" not in vm
    assert "cgroupDriver: cgroupfs" in lab and "cgroupRoot: /kubelet" in lab


def test_vm_is_what_the_inventory_says(vc: VMCluster) -> None:
    out = vc.ssh(
        "vm-1",
        "hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; "
        "ip route show default | awk '{print $3}'; nproc; "
        "awk '/MemTotal/ {print $2}' /proc/meminfo; df -B1 --output=size / | tail -1; "
        "cloud-init status | awk '{print $2}'; test -f /sys/fs/cgroup/cgroup.controllers "
        "&& echo cgroup2"
    ).stdout.split()
    hostname, addr, gw, cpus, mem_kib, root_size, ci, cgroup = out
    assert hostname == "vm-1"
    assert addr == f"{NET}.21/24"
    assert gw == f"{NET}.1"
    assert int(cpus) == VM_CPUS
    assert 0.85 * _mib(VM_MEMORY) * 1024 < int(mem_kib) <= _mib(VM_MEMORY) * 1024
    assert int(root_size) > 0.9 * _mib(VM_DISK) * 2**20  # cloud-init grew the image
    assert ci == "done"
    assert cgroup == "cgroup2"


def test_ssh_is_strict_from_the_first_connection(vc: VMCluster) -> None:
    known = vc.paths.known_hosts.read_text().splitlines()
    mine = [ln for ln in known if ln.split()[0] == f"{NET}.21"]
    assert len(mine) == 1 and mine[0].split()[1] == "ssh-ed25519"
    # the key the VM presents is the one provision wrote into its seed before it booted
    assert vc.ssh("vm-1", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2] == \
        mine[0].split()[1:3]
    # and an unknown host key is refused, never accepted
    empty = vc.tmp / "empty_known_hosts"
    empty.write_text("")
    proc = vc.ssh("vm-1", "true", check=False, known_hosts=empty)
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_guest_agent_answers(vc: VMCluster) -> None:
    import libvirt
    import libvirt_qemu

    conn = libvirt.open(vc.lab.uri)
    try:
        dom = conn.lookupByName(f"pv-{vc.cluster}-vm-1")
        reply = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-get-host-name"}', 30, 0)
        assert json.loads(reply)["return"]["host-name"] == "vm-1"
    finally:
        conn.close()


def test_second_ensure_reuses_the_vm_and_reports_drift(vc: VMCluster) -> None:
    import libvirt

    from provision.providers.libvirt import LibvirtProvider

    provider = LibvirtProvider()
    inv = vc.inv()
    vm = [inv.node("vm-1")]
    conn = libvirt.open(vc.lab.uri)
    try:
        uuid = conn.lookupByName(f"pv-{vc.cluster}-vm-1").UUIDString()
        events: list[tuple[str, str]] = []
        started = provider.ensure(inv, vm, lambda node, message: events.append((node, message)))
        assert started == set()  # it was running
        assert ("vm-1", "running, reused") in events
        assert conn.lookupByName(f"pv-{vc.cluster}-vm-1").UUIDString() == uuid
        # a changed spec is reported (plan shows it), never applied
        bigger = vc.inv_with(vm_memory="2Gi")
        assert provider.drift(bigger, [bigger.node("vm-1")]) == {
            "vm-1": [f"memory: VM has {_mib(VM_MEMORY)}Mi, inventory says 2048Mi"]}
        assert conn.lookupByName(f"pv-{vc.cluster}-vm-1").maxMemory() == \
            _mib(VM_MEMORY) * 1024
    finally:
        conn.close()
        provider.close()


def test_stop_and_start_through_acpi(vc: VMCluster) -> None:
    from provision.providers.base import MachineState
    from provision.providers.libvirt import LibvirtProvider

    provider = LibvirtProvider()
    inv = vc.inv()
    node = inv.node("vm-1")
    try:
        started = time.monotonic()
        provider.stop(inv, node)  # ACPI: the guest powers itself off
        vc.timings["acpi_stop"] = round(time.monotonic() - started, 1)
        assert provider.observe(inv, ["vm-1"]) == {"vm-1": MachineState.STOPPED}
        assert vc.timings["acpi_stop"] < provider.stop_timeout  # not the hard power-off
        started = time.monotonic()
        provider.start(inv, node)
        vc.timings["start_to_ssh"] = round(time.monotonic() - started, 1)
        assert vc.ssh("vm-1", "hostname").stdout.strip() == "vm-1"  # same host key
    finally:
        provider.close()


def test_a_vm_node_removed_from_the_inventory_is_drained_reset_and_released(
        vc: VMCluster) -> None:
    """The libvirt provider lists its machines (Capability.CREATE): a libvirt node
    dropped from the inventory still has a VM to drain, reset and destroy, and only the
    provider knows where it is."""
    import libvirt

    from provision import commands
    from provision.plan import membership as planner

    vc.path.write_text(inventory_text(vc.cluster, vc.lab, with_vm=False))
    plan = commands.plan(vc.path)
    assert plan.membership.kinds() == [(planner.DRAIN_AND_REMOVE_WORKER, "vm-1")]
    # /etc/hosts of cp-1 loses vm-1 (the hosts stage), then the removal's own steps
    assert [(s.step.name, [c.node for c in s.changes]) for s in plan.steps if s.changes] == [
        ("hosts", ["cp-1"]), (planner.DRAIN_AND_REMOVE_WORKER, ["vm-1"] * 5)]
    started = time.monotonic()
    summary = commands.up(vc.path)
    vc.timings["remove_vm_node"] = round(time.monotonic() - started, 1)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    conn = libvirt.open(vc.lab.uri)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(f"pv-{vc.cluster}-vm-1")
        assert not [v for v in conn.storagePoolLookupByName(vc.lab.pool_name).listVolumes()
                    if v.startswith(f"pv-{vc.cluster}-vm-1")]
    finally:
        conn.close()
    assert qemu_pids(f"pv-{vc.cluster}-vm-1") == []
    assert vc.ready_nodes() == {"cp-1": PINNED}
    assert commands.plan(vc.path).membership.kinds() == [(planner.NOTHING, "-")]


def test_destroy_leaves_nothing(vc: VMCluster) -> None:
    from provision import commands
    from provision.lab import netns
    from provision.lab.cleanup import leftovers

    started = time.monotonic()
    commands.destroy(vc.path)
    vc.destroyed = True
    vc.timings["destroy"] = round(time.monotonic() - started, 1)
    # The VM went first; then the local provider removed the lab namespace and every
    # process in it, the private libvirtd included. What libvirtd keeps on disk: no
    # domain definition, no volume but the shared base image.
    assert not list((vc.lab.dir / "etc/libvirt/qemu").glob("*.xml"))
    assert [p.name for p in (vc.lab.dir / "pool").iterdir()
            if not p.name.startswith("pv-base-")] == []
    assert qemu_pids(f"pv-{vc.cluster}-vm-1") == []
    assert not netns.exists(f"pv-{vc.cluster}")
    assert leftovers(vc.cluster) == []
    assert f"{NET}.21" not in (vc.paths.known_hosts.read_text()
                               if vc.paths.known_hosts.exists() else "")
    assert not Path(f"/var/log/libvirt/qemu/pv-{vc.cluster}-vm-1-console.log").exists()
