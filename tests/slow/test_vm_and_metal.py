"""Machines provision makes, driven by `provision up` itself: a bare-metal machine that
really network-boots (pxe provider) as a Kubernetes worker, and a KVM/TCG virtual
machine (libvirt provider), in one lab, so the slow tier pays for its TCG guests once.

The lab (tests/slow/metallab.py, on tests/slow/vmcluster.py): lab machine ``cp-1``
(local provider, systemd-nspawn, cgroup v1 like this box) as the only control-plane
node; ``metal-1`` as the worker, a TCG domain with an empty disk that boots from the
network first, powered only through BMC emulators: Redfish (sushy-tools, the BMC the
inventory names) and IPMI (virtualbmc, on the same machine); provision's dnsmasq and
iPXE boot it and its installer writes the image from images/metal. ``vm-1`` (libvirt,
cgroup v2) joins the inventory after the cluster is up. Everything lives in the
cluster's lab namespace ``pv-<cluster>``, with a private libvirtd and the artifact
mirror. In file order:

1. `provision up` from nothing: metal-1 installed over the network and rebooted from
   its disk; every stage's checks pass on every node, metal-1 is a Ready worker with
   the pinned kubelet and its own kubelet settings; no BMC password anywhere provision
   writes;
2. vm-1 added: `up --until os --nodes vm-1` creates the VM from its image and converges
   the OS baseline on it (kernel modules, sysctls, time: what Kubernetes needs of the
   VM image), its checks passing;
3. vm-1 is what the inventory says, SSH is strict from the first connection, its
   guest agent answers, a second ensure reuses it and reports drift, ACPI stop/start;
4. metal-1 through IPMI: observed running, powered off, observed stopped; network-booted
   again (through Redfish), it boots its disk, nothing installed again;
5. a wrong BMC password fails before any machine is touched, naming node and BMC;
6. a machine that never network-boots (behind IPMI) fails at bootTimeout with the
   last step seen, powered off, its install secrets gone;
7. vm-1 and that machine taken out of the inventory: the VM destroyed with its volumes,
   the machine released, the cluster untouched;
8. `provision destroy --wipe` erases metal-1's disk, powers it off through its BMC,
   and leaves nothing.

Why vm-1 is not a Kubernetes node here: each Ansible task costs seconds in a TCG guest,
and two guests converging at once share this box's two cores, so a second worker
under TCG doubled the tier's time (21 minutes for `up` alone). What a node does in
the stages after ``os`` is the same roles on any machine, proven on metal-1 (a TCG
guest with cgroup v2 like vm-1) and on the lab machines; what is the libvirt
provider's own (the VM, its image and kernel, cloud-init, SSH, ACPI, removal) is
proven on vm-1.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from metallab import NET, VM_ADDRESS, Machine, MetalLab, metal_lab
from vmcluster import VM_CPUS, VM_DISK, VM_MEMORY, qemu_pids

pytestmark = pytest.mark.slow

PINNED = "v1.37.2"
BOOT_TIMEOUT = 60  # for the machine that never network-boots


@pytest.fixture(scope="module")
def ml(slow_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetalLab]:
    with metal_lab(tmp_path_factory.mktemp("machines"), f"pvbm{os.getpid()}",
                   bmcs=("redfish",), with_vm=True, ipmi_too=True, silent=True) as lab:
        try:
            yield lab
        finally:
            print("timings:", json.dumps(lab.timings))


def _mib(quantity: str) -> int:
    return int(quantity.removesuffix("Mi")) if quantity.endswith("Mi") \
        else int(quantity.removesuffix("Gi")) * 1024


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file()
            and secret.encode() in p.read_bytes()]


# --- 1. up ----------------------------------------------------------------------------------

def test_up_makes_the_bare_metal_machine_a_ready_worker(ml: MetalLab) -> None:
    from provision import commands

    ml.write_inventory(with_vm=False)
    summary = commands.up(ml.path)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    report = ml.record_up(summary)
    print("up:", json.dumps(ml.timings))
    checks = {s["name"]: s["checks"] for s in report["stages"]}
    assert set(checks) >= {"machines", "os", "hosts", "runtime", "workers", "network"}
    failed = [c for cs in checks.values() for c in cs if c["outcome"] == "failed"]
    assert not failed, failed
    for stage in ("machines", "os", "hosts", "runtime", "workers", "network"):
        assert any(c["node"] == "metal-1" and c["outcome"] == "passed"
                   for c in checks[stage]), (stage, checks[stage])

    # metal-1 went through the whole install, from power-on to the installer's "done"
    assert ml.record("metal-1")["phase"] == "installed"
    events = ml.events("metal-1")
    steps = [line.split()[1] for line in events]
    assert steps[:1] == ["power-on"] and "image" in steps and steps[-1] == "done", steps
    times = {line.split()[1]: float(line.split()[0]) for line in events}
    ml.timings["metal_power_on_to_done"] = round(times["done"] - times["power-on"], 1)

    commands.kubeconfig(ml.path)
    assert ml.ready_nodes() == {"cp-1": PINNED, "metal-1": PINNED}

    # each kubelet runs with its own node's settings (kubeadm patch, roles/kubelet)
    def kubelet_config(node: str) -> str:
        return ml.ssh(node, "cat /var/lib/kubelet/config.yaml").stdout

    config = kubelet_config("metal-1")  # a cgroup v2 machine
    assert "cgroupDriver: systemd" in config and "cgroupRoot" not in config
    assert "failCgroupV1: false" not in config
    lab = kubelet_config("cp-1")
    assert "cgroupDriver: cgroupfs" in lab and "cgroupRoot: /kubelet" in lab

    # the BMC password is a reference (env:): it is nowhere provision writes
    assert _files_holding(Path(os.environ["PROVISION_STATE_DIR"]), ml.password) == []


# --- 2-3. the VM ------------------------------------------------------------------------------

def test_the_libvirt_provider_makes_vm_1_and_the_os_stage_converges_it(ml: MetalLab) -> None:
    from provision import commands

    ml.write_inventory(with_vm=True)
    started = time.monotonic()
    summary = commands.up(ml.path, until="os", nodes=["vm-1"])
    ml.timings["vm_create_and_os"] = round(time.monotonic() - started, 1)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    report = json.loads((Path(summary.record_dir) / "report.json").read_text())
    checks = {s["name"]: s["checks"] for s in report["stages"]}
    assert set(checks) == {"machines", "os"}, set(checks)
    for stage, cs in checks.items():
        assert {c["node"] for c in cs} == {"vm-1"}, (stage, cs)
        # passed, or skipped as not for this kind of machine (a lab machine's check)
        assert any(c["outcome"] == "passed" for c in cs), (stage, cs)
        assert not [c for c in cs if c["outcome"] == "failed"], (stage, cs)

def test_vm_is_what_the_inventory_says(ml: MetalLab) -> None:
    out = ml.ssh(
        "vm-1",
        "hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; "
        "ip route show default | awk '{print $3}'; nproc; "
        "awk '/MemTotal/ {print $2}' /proc/meminfo; df -B1 --output=size / | tail -1; "
        "cloud-init status | awk '{print $2}'; test -f /sys/fs/cgroup/cgroup.controllers "
        "&& echo cgroup2"
    ).stdout.split()
    hostname, addr, gw, cpus, mem_kib, root_size, ci, cgroup = out
    assert hostname == "vm-1"
    assert addr == f"{VM_ADDRESS}/24"
    assert gw == f"{NET}.1"
    assert int(cpus) == VM_CPUS
    assert 0.85 * _mib(VM_MEMORY) * 1024 < int(mem_kib) <= _mib(VM_MEMORY) * 1024
    assert int(root_size) > 0.9 * _mib(VM_DISK) * 2**20  # cloud-init grew the image
    assert ci == "done"
    assert cgroup == "cgroup2"


def test_ssh_is_strict_from_the_first_connection(ml: MetalLab) -> None:
    known = ml.paths.known_hosts.read_text().splitlines()
    empty = ml.tmp / "empty_known_hosts"
    empty.write_text("")
    for node, address in (("vm-1", VM_ADDRESS), ("metal-1", ml.machines[0].address)):
        mine = [ln for ln in known if ln.split()[0] == address]
        assert len(mine) == 1 and mine[0].split()[1] == "ssh-ed25519", node
        # the key the machine presents is the one provision wrote into its seed before
        # it first booted
        assert ml.ssh(node, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2] \
            == mine[0].split()[1:3], node
        # and an unknown host key is refused, never accepted
        proc = ml.ssh(node, "true", check=False, known_hosts=empty)
        assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_guest_agent_answers(ml: MetalLab) -> None:
    import libvirt
    import libvirt_qemu

    conn = libvirt.open(ml.lab.uri)
    try:
        dom = conn.lookupByName(f"pv-{ml.cluster}-vm-1")
        reply = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-get-host-name"}', 30, 0)
        assert json.loads(reply)["return"]["host-name"] == "vm-1"
    finally:
        conn.close()


def test_second_ensure_reuses_the_vm_and_reports_drift(ml: MetalLab) -> None:
    import libvirt

    from provision.providers.libvirt import LibvirtProvider

    provider = LibvirtProvider()
    inv = ml.inv()
    vm = [inv.node("vm-1")]
    conn = libvirt.open(ml.lab.uri)
    try:
        uuid = conn.lookupByName(f"pv-{ml.cluster}-vm-1").UUIDString()
        events: list[tuple[str, str]] = []
        started = provider.ensure(inv, vm, lambda node, message: events.append((node, message)))
        assert started == set()  # it was running
        assert ("vm-1", "running, reused") in events
        assert conn.lookupByName(f"pv-{ml.cluster}-vm-1").UUIDString() == uuid
        # a changed spec is reported (plan shows it), never applied
        bigger = ml.inv_with(vm_memory="2Gi")
        assert provider.drift(bigger, [bigger.node("vm-1")]) == {
            "vm-1": [f"memory: VM has {_mib(VM_MEMORY)}Mi, inventory says 2048Mi"]}
        assert conn.lookupByName(f"pv-{ml.cluster}-vm-1").maxMemory() == \
            _mib(VM_MEMORY) * 1024
    finally:
        conn.close()
        provider.close()


def test_stop_and_start_through_acpi(ml: MetalLab) -> None:
    from provision.providers.base import MachineState
    from provision.providers.libvirt import LibvirtProvider

    provider = LibvirtProvider()
    inv = ml.inv()
    node = inv.node("vm-1")
    try:
        started = time.monotonic()
        provider.stop(inv, node)  # ACPI: the guest powers itself off
        ml.timings["acpi_stop"] = round(time.monotonic() - started, 1)
        assert provider.observe(inv, ["vm-1"]) == {"vm-1": MachineState.STOPPED}
        assert ml.timings["acpi_stop"] < provider.stop_timeout  # not the hard power-off
        started = time.monotonic()
        provider.start(inv, node)
        ml.timings["start_to_ssh"] = round(time.monotonic() - started, 1)
        assert ml.ssh("vm-1", "hostname").stdout.strip() == "vm-1"  # same host key
    finally:
        provider.close()


# --- 4-6. bare metal ---------------------------------------------------------------------

def test_ipmi_sees_and_powers_off_the_machine_and_a_network_boot_boots_its_disk(
        ml: MetalLab) -> None:
    """The same machine behind virtualbmc (IPMI) beside sushy-tools (Redfish): through
    IPMI the provider observes it running and powers it off; then, network-booted
    again (Redfish boot override), iPXE finds it installed and it boots its disk.

    The network boot goes through Redfish because virtualbmc keeps an IPMI boot device
    as the domain's only one, for good: the firmware then has no disk to fall back to
    after iPXE's "installed" script, which a real BMC's one-time override leaves."""
    from provision.providers.base import MachineState
    from provision.providers.pxe import bmc as bmclib
    from provision.providers.registry import load

    m = ml.machines[0]
    ipmi_inv = ml.inv_with(bmc={m.name: "ipmi"})
    assert ipmi_inv.node(m.name).bmc.type == "ipmi"
    assert load("pxe").observe(ipmi_inv, [m.name]) == {m.name: MachineState.RUNNING}
    before = ml.ssh(m.name, "cat /etc/provision-installed").stdout
    events = len(ml.events(m.name))
    ipmi = bmclib.connect(ipmi_inv, ipmi_inv.node(m.name))
    ipmi.power_off()
    ipmi.wait_power(bmclib.PowerState.OFF)
    assert ml.domain_state(m) == "shut off"
    assert load("pxe").observe(ipmi_inv, [m.name]) == {m.name: MachineState.STOPPED}

    inv = ml.inv()
    redfish = bmclib.connect(inv, inv.node(m.name))
    started = time.monotonic()
    redfish.boot_once(bmclib.BootDevice.PXE)
    redfish.power_on()
    ml.wait_ssh(m.name, timeout=900)
    ml.timings["metal_network_boot_to_ssh"] = round(time.monotonic() - started, 1)
    new = [line.split(" ", 2)[1:] for line in ml.events(m.name)[events:]]
    assert ["ipxe-script", "installed"] in new, new  # it did boot from the network
    assert not [step for step, *_ in new if step in ("kernel", "image", "done")], new
    assert ml.ssh(m.name, "cat /etc/provision-installed").stdout == before


def test_a_wrong_bmc_password_fails_before_anything_is_touched(ml: MetalLab) -> None:
    from provision import commands

    events = len(ml.events("metal-1"))
    os.environ["PV_TEST_BMC_PASSWORD"] = "not-the-bmc-password"
    try:
        summary = commands.up(ml.path)
    finally:
        os.environ["PV_TEST_BMC_PASSWORD"] = ml.password
    assert summary.status == "failed"
    assert "refused the login" in summary.error and " BMC " in summary.error
    assert "of metal-1" in summary.error, summary.error
    assert len(ml.events("metal-1")) == events
    record = Path(summary.record_dir)
    assert _files_holding(record, "not-the-bmc-password") == []
    assert _files_holding(record, ml.password) == []


def test_a_machine_that_never_network_boots_hits_boot_timeout(ml: MetalLab) -> None:
    from provision import commands

    silent = ml.silent
    assert silent is not None
    ml.boot_timeout = BOOT_TIMEOUT
    ml.write_inventory(machines=[*ml.machines, silent])
    summary = commands.up(ml.path)
    assert summary.status == "failed"
    # the failure names the machine that failed, not the first of its provider's group
    assert "stage 'machines' failed on node 'metal-9'" in summary.error, summary.error
    assert f"bootTimeout ({BOOT_TIMEOUT}s)" in summary.error
    assert "the last step seen was 'power-on'" in summary.error, summary.error
    assert ml.domain_state(silent) == "shut off"  # powered off again, through IPMI
    record = ml.record("metal-9")
    assert record["phase"] == "failed" and not record["token"]
    installs = Path(os.environ["PROVISION_STATE_DIR"]).rglob("installs/*")
    assert [p for p in installs if p.is_dir()] == []  # no seed (host key) left behind


# --- 7. removal --------------------------------------------------------------------------

def test_machines_taken_out_of_the_inventory_are_released(ml: MetalLab) -> None:
    """The libvirt provider lists its machines (Capability.CREATE): a libvirt node
    dropped from the inventory still has a VM to destroy, and only the provider knows
    where it is. The pxe machine that never installed is forgotten. Neither ever
    joined, so the cluster is not touched."""
    import libvirt

    from provision import commands
    from provision.plan import membership as planner

    ml.boot_timeout = 1500
    ml.write_inventory(with_vm=False)
    plan = commands.plan(ml.path)
    assert sorted(plan.membership.kinds()) == [(planner.RELEASE_MACHINE, "metal-9"),
                                               (planner.RELEASE_MACHINE, "vm-1")]
    changes: dict[str, list[str]] = {}  # step name -> nodes, over every step of that name
    for step in plan.steps:
        changes.setdefault(step.step.name, []).extend(c.node for c in step.changes)
    assert {k: sorted(v) for k, v in changes.items() if v} == {
        planner.RELEASE_MACHINE: ["metal-9", "vm-1"]}, changes
    started = time.monotonic()
    summary = commands.up(ml.path)
    ml.timings["release_vm"] = round(time.monotonic() - started, 1)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    conn = libvirt.open(ml.lab.uri)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(f"pv-{ml.cluster}-vm-1")
        assert not [v for v in conn.storagePoolLookupByName(ml.lab.pool_name).listVolumes()
                    if v.startswith(f"pv-{ml.cluster}-vm-1")]
    finally:
        conn.close()
    assert qemu_pids(f"pv-{ml.cluster}-vm-1") == []
    assert ml.record("metal-9") == {}
    assert ml.ready_nodes() == {"cp-1": PINNED, "metal-1": PINNED}
    assert commands.plan(ml.path).membership.kinds() == [(planner.NOTHING, "-")]


# --- 8. destroy --------------------------------------------------------------------------

def test_destroy_wipes_the_disk_powers_the_machine_off_and_leaves_nothing(ml: MetalLab) -> None:
    from provision import commands
    from provision.lab import netns
    from provision.lab.cleanup import leftovers
    from provision.providers.registry import load

    def boot_record(m: Machine) -> bytes:
        """The first sector of the machine's disk, read beside its running qemu."""
        out = ml.tmp / f"{m.name}-sector0"
        subprocess.run(["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", "bs=512",
                        "count=1", f"if={ml.lab.dir / 'pool' / (m.domain + '.qcow2')}",
                        f"of={out}"], check=True, capture_output=True)
        return out.read_bytes()

    # what `destroy --wipe` does first, before the lab namespace (and the libvirtd in it)
    # go: seen here because the namespace's libvirtd is gone afterwards
    assert all(boot_record(m)[510:512] == b"\x55\xaa" for m in ml.machines)  # installed
    inv = ml.inv()
    load("pxe").destroy(inv, [m.name for m in ml.machines], wipe=True)
    assert {m.name: ml.domain_state(m) for m in ml.machines} == {
        m.name: "shut off" for m in ml.machines}
    assert all(ml.record(m.name) == {} for m in ml.machines)
    # wiped: no partition table (and so nothing the firmware could boot) is left
    assert [boot_record(m)[510:512] for m in ml.machines] == [b"\0\0"] * len(ml.machines)

    started = time.monotonic()
    commands.destroy(ml.path)
    ml.destroyed = True
    ml.timings["destroy"] = round(time.monotonic() - started, 1)
    # the local provider removed the lab namespace and every process in it, the
    # private libvirtd included. What libvirtd keeps on disk: no domain definition of
    # provision's, no volume of this cluster's but the shared base image.
    assert not list((ml.lab.dir / "etc/libvirt/qemu").glob(f"pv-{ml.cluster}-*.xml"))
    assert [p.name for p in (ml.lab.dir / "pool").iterdir()
            if p.name.startswith(f"pv-{ml.cluster}-")] == []
    assert qemu_pids(f"pv-{ml.cluster}-vm-1") == []
    assert not netns.exists(f"pv-{ml.cluster}")
    assert leftovers(ml.cluster) == []
    known = ml.paths.known_hosts.read_text() if ml.paths.known_hosts.exists() else ""
    assert VM_ADDRESS not in known and ml.machines[0].address not in known
    assert not Path(f"/var/log/libvirt/qemu/pv-{ml.cluster}-vm-1-console.log").exists()
