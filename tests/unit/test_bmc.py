"""BMC clients against BMC emulators on loopback (tests/unit/bmc_emulators.py): Redfish
through sushy to sushy-emulator, IPMI through ipmitool to a pyghmi BMC. Errors name the
node and the BMC and never hold the password."""

from __future__ import annotations

import pytest
from bmc_emulators import IpmiEmulator, RedfishEmulator

from provision.inventory import parse_inventory
from provision.providers.pxe import bmc as bmclib

INVENTORY = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: t
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: 10.20.0.10}}
network: {{subnet: 10.20.0.0/24}}
providers: {{pxe: {{interface: br0}}}}
nodes:
  - name: cp-1
    roles: [control-plane]
    provider: pxe
    address: 10.20.0.11
    mac: 52:54:00:aa:00:01
    bmc: {bmc}
"""


def node_with(tmp_path, monkeypatch, bmc: str, password: str):
    monkeypatch.setenv("TEST_BMC_PASSWORD", password)
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY.format(bmc=bmc))
    inv = parse_inventory(path.read_text(), path)
    return inv, inv.node("cp-1")


@pytest.fixture
def redfish(tmp_path):
    with RedfishEmulator(tmp_path) as emulator:
        yield emulator


@pytest.fixture
def ipmi():
    with IpmiEmulator() as emulator:
        yield emulator


def redfish_bmc(tmp_path, monkeypatch, emulator, password=None, system=None):
    system_id = f", systemId: {system}" if system else ""
    inv, node = node_with(
        tmp_path, monkeypatch,
        f"{{type: redfish, address: '{emulator.address}', username: admin, "
        f"password: env:TEST_BMC_PASSWORD, insecure: true{system_id}}}",
        password or emulator.password)
    return bmclib.connect(inv, node)


def test_redfish_power_and_one_time_pxe_boot(tmp_path, monkeypatch, redfish):
    system = redfish.systems()[0]
    bmc = redfish_bmc(tmp_path, monkeypatch, redfish, system=system)
    bmc.power_off()
    bmc.wait_power(bmclib.PowerState.OFF, timeout=60)
    bmc.boot_once(bmclib.BootDevice.PXE)
    bmc.power_on()
    bmc.wait_power(bmclib.PowerState.ON, timeout=60)
    assert bmc.power() is bmclib.PowerState.ON
    assert "s3cret" not in repr(bmc)


def test_redfish_wrong_password_names_node_and_bmc_not_the_password(tmp_path, monkeypatch,
                                                                   redfish):
    bmc = redfish_bmc(tmp_path, monkeypatch, redfish, password="not-the-password")
    with pytest.raises(bmclib.BmcError) as err:
        bmc.power()
    text = str(err.value)
    assert "redfish BMC http://127.0.0.1" in text and "of cp-1" in text
    assert "refused the login" in text
    assert "not-the-password" not in text


def test_redfish_several_systems_need_a_system_id(tmp_path, monkeypatch):
    with RedfishEmulator(tmp_path, systems=2) as redfish:
        assert len(redfish.systems()) >= 2
        several_systems(tmp_path, monkeypatch, redfish)


def several_systems(tmp_path, monkeypatch, redfish):
    bmc = redfish_bmc(tmp_path, monkeypatch, redfish)
    with pytest.raises(bmclib.BmcError, match="no bmc.systemId"):
        bmc.power()
    bmc = redfish_bmc(tmp_path, monkeypatch, redfish, system="no-such-system")
    with pytest.raises(bmclib.BmcError, match="no Redfish system 'no-such-system'"):
        bmc.power()


def test_redfish_unreachable_bmc_fails_fast(tmp_path, monkeypatch):
    from bmc_emulators import free_port

    class Nowhere:
        address = f"http://127.0.0.1:{free_port()}"
        password = "x"

    bmc = redfish_bmc(tmp_path, monkeypatch, Nowhere)
    with pytest.raises(bmclib.BmcError, match="cannot reach http://127.0.0.1"):
        bmc.power()


def ipmi_bmc(tmp_path, monkeypatch, emulator, password=None):
    inv, node = node_with(
        tmp_path, monkeypatch,
        f"{{type: ipmi, address: '{emulator.address}', username: {emulator.username}, "
        "password: env:TEST_BMC_PASSWORD}",
        password or emulator.password)
    return bmclib.connect(inv, node)


def test_ipmi_power_and_boot_device(tmp_path, monkeypatch, ipmi):
    bmc = ipmi_bmc(tmp_path, monkeypatch, ipmi)
    assert bmc.power() is bmclib.PowerState.OFF
    bmc.boot_once(bmclib.BootDevice.PXE)
    assert ipmi.state["boot"] == "network"
    bmc.power_on()
    assert bmc.power() is bmclib.PowerState.ON and ipmi.state["power"] == "on"
    bmc.boot_once(bmclib.BootDevice.DISK)
    assert ipmi.state["boot"] == "hd"
    bmc.power_off()
    assert ipmi.state["power"] == "off"


def test_ipmi_wrong_password_names_node_and_bmc_not_the_password(tmp_path, monkeypatch, ipmi):
    bmc = ipmi_bmc(tmp_path, monkeypatch, ipmi, password="wrong-ipmi-pass")
    with pytest.raises(bmclib.BmcError) as err:
        bmc.power()
    text = str(err.value)
    assert f"ipmi BMC {ipmi.address} of cp-1" in text and "refused the login" in text
    assert "wrong-ipmi-pass" not in text


def test_the_password_is_never_on_the_ipmitool_command_line(tmp_path, monkeypatch, ipmi):
    import subprocess

    seen = []
    real = subprocess.run

    def spy(argv, **kw):
        seen.append((list(argv), kw.get("env", {}).get("IPMI_PASSWORD")))
        return real(argv, **kw)

    monkeypatch.setattr(subprocess, "run", spy)
    ipmi_bmc(tmp_path, monkeypatch, ipmi).power()
    argv, env_password = seen[0]
    assert ipmi.password not in " ".join(argv) and "-E" in argv
    assert env_password == ipmi.password


def test_ipmi_bmc_that_does_not_answer(tmp_path, monkeypatch):
    import socket

    from bmc_emulators import free_port

    class Nowhere:
        address = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
        username = "ADMIN"
        password = "x"

    with pytest.raises(bmclib.BmcError, match="no answer from the BMC"):
        ipmi_bmc(tmp_path, monkeypatch, Nowhere).power()
