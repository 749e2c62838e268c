"""Bare metal, end to end on machines that really network-boot (tests/slow/metallab.py):
TCG virtual machines with empty disks, powered only through BMC emulators (Redfish:
sushy-tools; IPMI: virtualbmc), PXE-booted by provision's dnsmasq and iPXE, installed
by the installer from images/metal, rebooted from their own disk, joined as workers.
One lab serves the module, in file order:

1. `provision up` from nothing: the control plane (a lab machine) and the bare-metal
   workers, every stage's checks passing on them, no BMC password anywhere in the
   state directory or the run record;
2. a network boot after the install boots the disk: nothing is installed again;
3. a wrong BMC password fails before any machine is touched, naming node and BMC;
4. a machine that never network-boots fails at bootTimeout with the last step seen,
   powered off, its install secrets gone; removed from the inventory, it is released;
5. `provision destroy` powers the machines off through their BMCs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from metallab import NET, Machine, MetalLab, metal_lab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ml(slow_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetalLab]:
    with metal_lab(tmp_path_factory.mktemp("metal"), f"pvbm{os.getpid()}",
                   bmcs=("redfish", "ipmi")) as lab:
        try:
            yield lab
        finally:
            print("timings:", json.dumps(lab.timings))


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file()
            and secret.encode() in p.read_bytes()]


def test_up_installs_the_machines_from_nothing_and_they_join(ml: MetalLab) -> None:
    from provision import commands

    started = time.monotonic()
    summary = commands.up(ml.path)
    ml.timings["up"] = round(time.monotonic() - started, 1)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    report = json.loads((Path(summary.record_dir) / "report.json").read_text())
    checks = [c for s in report["stages"] for c in s["checks"]]
    assert not [c for c in checks if c["outcome"] == "failed"]
    for m in ml.machines:
        for stage in ("machines", "os", "runtime", "workers", "network"):
            assert any(c["node"] == m.name and c["outcome"] == "passed"
                       for s in report["stages"] if s["name"] == stage for c in s["checks"]), \
                (m.name, stage)
        assert ml.record(m.name)["phase"] == "installed"
        steps = [line.split()[1] for line in ml.events(m.name)]
        assert steps[:1] == ["power-on"] and "image" in steps and steps[-1] == "done", steps
        times = {line.split()[1]: float(line.split()[0]) for line in ml.events(m.name)}
        ml.timings[f"{m.name}_power_on_to_done"] = round(times["done"] - times["power-on"], 1)
    commands.kubeconfig(ml.path)
    nodes = json.loads(ml.kubectl("get", "nodes", "-o", "json"))["items"]
    ready = {n["metadata"]["name"] for n in nodes if any(
        c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])}
    assert ready == {"cp-1", *(m.name for m in ml.machines)}
    # the BMC password is a reference: it is nowhere provision writes
    state = Path(os.environ["PROVISION_STATE_DIR"])
    assert _files_holding(state, ml.password) == []


def test_a_network_boot_after_the_install_boots_the_disk(ml: MetalLab) -> None:
    from provision.inventory import load_inventory
    from provision.providers.pxe import bmc as bmclib

    m = ml.machines[0]
    before = ml.ssh(m.name, "cat /etc/provision-installed").stdout
    events = len(ml.events(m.name))
    inv = load_inventory(ml.path)
    bmc = bmclib.connect(inv, inv.node(m.name))
    bmc.power_off()
    bmc.wait_power(bmclib.PowerState.OFF)
    bmc.boot_once(bmclib.BootDevice.PXE)
    bmc.power_on()
    ml.wait_ssh(m.name, timeout=900)
    new = [line.split(" ", 2)[1:] for line in ml.events(m.name)[events:]]
    assert ["ipxe-script", "installed"] in new, new  # it did boot from the network
    assert not [step for step, *_ in new if step in ("kernel", "image", "done")], new
    assert ml.ssh(m.name, "cat /etc/provision-installed").stdout == before


def test_a_wrong_bmc_password_fails_before_anything_is_touched(ml: MetalLab) -> None:
    from provision import commands

    events = {m.name: len(ml.events(m.name)) for m in ml.machines}
    os.environ["PV_TEST_BMC_PASSWORD"] = "not-the-bmc-password"
    try:
        summary = commands.up(ml.path)
    finally:
        os.environ["PV_TEST_BMC_PASSWORD"] = ml.password
    assert summary.status == "failed"
    assert "refused the login" in summary.error and " BMC " in summary.error
    assert any(f"of {m.name}" in summary.error for m in ml.machines), summary.error
    assert {m.name: len(ml.events(m.name)) for m in ml.machines} == events
    record = Path(summary.record_dir)
    assert _files_holding(record, "not-the-bmc-password") == []
    assert _files_holding(record, ml.password) == []


def test_a_machine_that_never_network_boots_hits_boot_timeout(ml: MetalLab) -> None:
    from provision import commands

    # its NIC is not the MAC the inventory names: dnsmasq never answers it
    silent = Machine("metal-9", "52:54:00:9b:00:99", f"{NET}.29", "redfish",
                     domain=f"pvbm-{ml.cluster}-metal-9")
    real_mac, silent.mac = silent.mac, "52:54:00:9b:00:98"
    ml.define(silent)
    silent.mac = real_mac
    ml.stop_emulators()
    ml.procs.clear()
    ml.start_redfish([*(m for m in ml.machines if m.bmc == "redfish"), silent])
    ml.start_ipmi([m for m in ml.machines if m.bmc == "ipmi"])
    ml.boot_timeout = 90
    ml.write_inventory(machines=[*ml.machines, silent])
    summary = commands.up(ml.path)
    assert summary.status == "failed"
    assert "metal-9" in summary.error and "bootTimeout (90s)" in summary.error
    assert "the last step seen was 'power-on'" in summary.error, summary.error
    assert ml.domain_state(silent) == "shut off"
    record = ml.record("metal-9")
    assert record["phase"] == "failed" and not record["token"]
    installs = Path(os.environ["PROVISION_STATE_DIR"]).rglob("installs/*")
    assert [p for p in installs if p.is_dir()] == []  # no seed (host key) left behind
    # taken out of the inventory again, its machine is released
    ml.boot_timeout = 1500
    ml.write_inventory()
    summary = commands.up(ml.path)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    assert ml.record("metal-9") == {}


def test_destroy_powers_the_machines_off_through_their_bmcs(ml: MetalLab) -> None:
    from provision import commands
    from provision.inventory import load_inventory
    from provision.lab.cleanup import leftovers
    from provision.providers.registry import load

    # what `destroy` does first, before the lab namespace (and the libvirtd in it) go
    inv = load_inventory(ml.path)
    load("pxe").destroy(inv, [m.name for m in ml.machines])
    assert {m.name: ml.domain_state(m) for m in ml.machines} == {
        m.name: "shut off" for m in ml.machines}
    assert all(ml.record(m.name) == {} for m in ml.machines)
    commands.destroy(ml.path)
    ml.destroyed = True
    assert leftovers(ml.cluster) == []
