"""A VM joins a lab cluster as a worker, under TCG, through the real pipeline.

The cluster (vmcluster.py): one control-plane lab machine cp-1 (nspawn) and one
worker VM vm-1 (libvirt, TCG, from the image built offline), both on the lab bridge
of pv-<cluster>, where a private libvirtd and the artifact mirror run. One VM boot
serves every test, in file order:

* `provision up` (operations.up) runs every stage: machines, os, runtime, etcd, api-lb,
  control-plane, workers, network, with their checks; vm-1 is Ready with kubelet
  v1.37.2 (kubectl through the kubeconfig operations.kubeconfig writes);
* the VM: strict SSH host keys from the first connection, what the inventory says
  (hostname, address, route, CPUs, memory, grown disk), guest agent, same subnet as
  the lab machine;
* a second ensure reuses it, a changed spec is reported as drift, ACPI shutdown;
* `provision destroy` (of a stopped VM and a running lab machine) leaves no domain,
  volume, network, qemu, libvirtd, mirror, lab machine or namespace.

The module fixture always tears everything down (also when a test failed).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcluster import NET, VM_CPUS, VMCluster, mirror_pids, qemu_pids, vm_cluster

pytestmark = pytest.mark.slow

VERSION = "v1.37.2"


@pytest.fixture(scope="module")
def vc(slow_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VMCluster]:
    with vm_cluster(tmp_path_factory.mktemp("vmjoin"), f"pvvm{os.getpid()}") as c:
        try:
            yield c
        finally:
            print("timings:", json.dumps(c.timings))


def test_up_joins_the_vm_as_a_ready_worker(vc: VMCluster) -> None:
    from provision import operations

    summary = operations.up(vc.path)
    report = vc.record_up(summary)
    print("timings:", json.dumps(vc.timings))
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["machines", "os", "runtime", "etcd", "api-lb", "control-plane",
                            "workers", "network"]
    checks = [c for s in report["stages"] for c in s["checks"]]
    assert checks and not [c for c in checks if c["outcome"] == "failed"]
    # the VM's own stages ran their checks on it, and they passed
    for name in ("machines", "os", "runtime", "workers", "network"):
        mine = [c for c in stages[name]["checks"] if c["node"] == "vm-1"]
        assert mine and all(c["outcome"] == "passed" for c in mine), (name, mine)
    for name in ("machines", "os", "runtime", "workers"):  # network: run once, on cp-1
        assert {n["name"]: n["status"] for n in stages[name]["nodes"]}.get("vm-1") \
            == "changed", (name, stages[name]["nodes"])

    written = operations.kubeconfig(vc.path)
    assert written["server"].startswith("https://127.0.0.1:")
    assert vc.ready_nodes() == {"cp-1": VERSION, "vm-1": VERSION}
    node = json.loads(vc.kubectl("get", "node", "vm-1", "-o", "json").stdout)
    assert {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"] \
        == f"{NET}.21"
    assert "node-role.kubernetes.io/control-plane" not in node["metadata"]["labels"]


def test_ssh_is_strict_from_the_first_connection(vc: VMCluster) -> None:
    known = vc.paths.known_hosts.read_text().splitlines()
    mine = [ln for ln in known if ln.split()[0] == f"{NET}.21"]
    assert len(mine) == 1 and mine[0].split()[1] == "ssh-ed25519"
    # the key the VM presents is the one provision wrote before it booted
    assert vc.ssh("vm-1", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2] == \
        mine[0].split()[1:3]
    assert vc.ssh("vm-1", "ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'").stdout.strip() == "1"
    # and an unknown host key is refused, never accepted
    empty = vc.tmp / "empty_known_hosts"
    empty.write_text("")
    proc = vc.ssh("vm-1", "true", check=False, known_hosts=empty)
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_vm_is_what_the_inventory_says(vc: VMCluster) -> None:
    out = vc.ssh(
        "vm-1",
        "hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; "
        "ip route show default | awk '{print $3}'; nproc; "
        "awk '/MemTotal/ {print $2}' /proc/meminfo; df -B1 --output=size / | tail -1; "
        "cloud-init status | awk '{print $2}'; systemd-detect-virt"
    ).stdout.split()
    hostname, addr, gw, cpus, mem_kib, root_size, ci, virt = out
    assert hostname == "vm-1"
    assert addr == f"{NET}.21/24"
    assert gw == f"{NET}.1"
    assert cpus == str(VM_CPUS)
    assert 1.3 * 2**20 < int(mem_kib) <= 1.5 * 2**20  # 1536Mi less the kernel's share
    assert int(root_size) > 4.5 * 2**30  # cloud-init grew the 3 GiB image to the 5 GiB disk
    assert ci == "done"
    assert virt == "qemu"  # TCG (KVM guests say "kvm")


def test_guest_agent_answers(vc: VMCluster) -> None:
    import libvirt
    import libvirt_qemu

    conn = libvirt.open(vc.lab.uri)
    try:
        dom = conn.lookupByName(f"pv-{vc.cluster}-vm-1")
        deadline = time.monotonic() + 120
        while True:
            try:
                reply = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 10, 0)
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)
        assert json.loads(reply) == {"return": {}}
        info = json.loads(libvirt_qemu.qemuAgentCommand(
            dom, '{"execute":"guest-get-host-name"}', 10, 0))
        assert info["return"]["host-name"] == "vm-1"
    finally:
        conn.close()


def test_vm_and_lab_machine_share_the_lab_subnet(vc: VMCluster) -> None:
    for node, peer in (("vm-1", f"{NET}.11"), ("cp-1", f"{NET}.21")):
        vc.ssh(node, f"ping -c 1 -W 5 {peer}", timeout=60)


def test_second_ensure_reuses_the_vm_and_reports_drift(vc: VMCluster) -> None:
    import libvirt

    from provision.inventory import load_inventory
    from provision.providers.libvirt import LibvirtProvider

    inv = vc.inv()
    provider = LibvirtProvider()
    conn = libvirt.open(vc.lab.uri)
    events: list[tuple[str, str]] = []
    try:
        uuid = conn.lookupByName(f"pv-{vc.cluster}-vm-1").UUIDString()
        started = time.monotonic()
        provider.ensure(inv, [inv.node("vm-1")], lambda n, m: events.append((n, m)))
        vc.timings["vm_reuse"] = round(time.monotonic() - started, 1)
        assert ("vm-1", "running, reused") in events
        assert conn.lookupByName(f"pv-{vc.cluster}-vm-1").UUIDString() == uuid
        # a changed spec is reported by drift (for plan), not applied
        bigger = load_inventory(vc.write_inventory(vm_memory="3Gi"))
        assert provider.drift(bigger, [bigger.node("vm-1")]) == {
            "vm-1": ["memory: VM has 1536Mi, inventory says 3072Mi"]}
    finally:
        vc.write_inventory()
        conn.close()
        provider.close()


def test_acpi_stop(vc: VMCluster) -> None:
    """The guest powers off by itself on an ACPI shutdown (not the hard power-off).
    Starting it again is not done here: another TCG boot costs about 3 minutes on the
    shared box, and start() is the same virDomainCreate + SSH wait as a first boot."""
    from provision import operations
    from provision.providers.base import MachineState

    c = operations.Cluster(vc.path)
    provider, node = c.provider("libvirt"), c.inv.node("vm-1")
    try:
        started = time.monotonic()
        provider.stop(c.inv, node)
        vc.timings["vm_acpi_stop"] = round(time.monotonic() - started, 1)
        assert provider.observe(c.inv, [node]) == {"vm-1": MachineState.STOPPED}
        assert vc.timings["vm_acpi_stop"] < provider.stop_timeout  # not the hard power-off
    finally:
        provider.close()


def test_destroy_leaves_nothing(vc: VMCluster) -> None:
    from provision import operations
    from provision.lab import netns
    from provision.lab.cleanup import leftovers

    domain = f"pv-{vc.cluster}-vm-1"
    started = time.monotonic()
    operations.destroy(vc.path)
    vc.timings["destroy"] = round(time.monotonic() - started, 1)
    vc.destroyed = True
    # The VM went first, while libvirtd still ran; then the local provider removed the
    # lab machine and the lab namespace, ending every process in it, libvirtd included.
    # So look at what libvirtd keeps on disk: no domain, no network, no volume but the
    # base image (a cache).
    state = vc.lab.dir / "etc/libvirt/qemu"
    assert not list(state.glob("*.xml"))
    assert not list(state.glob("networks/*.xml"))
    assert sorted(p.name for p in (vc.lab.dir / "pool").iterdir()
                  if not p.name.startswith("pv-base-")) == []
    deadline = time.monotonic() + 30
    while (qemu_pids(domain) or mirror_pids(f"{NET}.1")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert qemu_pids(domain) == []
    assert mirror_pids(f"{NET}.1") == []
    assert vc.lab.proc is not None
    vc.lab.proc.wait(30)  # libvirtd ended with the namespace
    # lab machine, nsproxy, mounts, namespaces, cgroups (of this cluster, not pvvm<pid>N)
    mine = re.compile(rf"pv-{vc.cluster}(?![0-9])|clusters/{vc.cluster}/")
    assert [x for x in leftovers(vc.cluster) if mine.search(x)] == []
    assert [n for n in netns.listing() if n.startswith(f"pv-{vc.cluster}")] == []
    known = vc.paths.known_hosts  # the local provider removes the state directory
    assert not known.exists() or f"{NET}.21" not in known.read_text()
    assert not Path(f"/var/log/libvirt/qemu/{domain}-console.log").exists()
    # and the test's own libvirtd directory goes with the lab
    vc.lab.stop()
    assert not vc.lab.dir.exists()
    assert list(Path("/var/log/libvirt/qemu").glob(f"pv-{vc.cluster}-*")) == []
