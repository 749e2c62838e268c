"""The pxe provider's boot server, without machines: dnsmasq's configuration, the iPXE
scripts, the boot HTTP server on loopback (real HTTP), install records and the "last
step seen" of an install; and the inventory rules of bare metal."""

from __future__ import annotations

import subprocess
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from provision.inventory import InventoryInvalid, parse_inventory
from provision.providers import cloudinit
from provision.providers.pxe import boot
from provision.providers.pxe.server import Handler

ROOT = Path(__file__).resolve().parents[2]

INVENTORY = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: metal
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: 10.20.0.10}}
network: {{subnet: 10.20.0.0/24}}
providers:
  pxe: {{interface: br-lab, {pxe}}}
nodes:
  - name: cp-1
    roles: [control-plane]
    provider: pxe
    address: 10.20.0.11
    mac: 52:54:00:AA:00:01
    machine: {{rootDevice: /dev/vda}}
    bmc: {{type: redfish, address: https://10.20.1.11, username: admin,
          password: env:BMC_PASSWORD}}
  - name: w-1
    roles: [worker]
    provider: pxe
    address: 10.20.0.21
    mac: 52:54:00:aa:00:02
    bmc: {{type: ipmi, address: 10.20.1.21, username: ADMIN, password: env:BMC_PASSWORD}}
"""


def inventory(tmp_path: Path, pxe: str = "httpPort: 8090", **replace: str):
    text = INVENTORY.format(pxe=pxe)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "metal.yaml"
    path.write_text(text)
    return parse_inventory(text, path)


def test_dedicated_dhcp_leases_known_macs_only_and_hands_ipxe_the_script(tmp_path):
    inv = inventory(tmp_path)
    server = boot.BootServer.of(inv, tmp_path / "machines", tmp_path / "run")
    conf = server.prepare(inv).read_text()
    assert "port=0\n" in conf and "interface=br-lab\n" in conf  # no DNS
    assert "dhcp-range=10.20.0.0,static,255.255.255.0,1h" in conf
    assert "dhcp-ignore=tag:!known" in conf
    assert "dhcp-boot=tag:ipxe,http://10.20.0.1:8090/boot.ipxe" in conf
    assert "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi" in conf
    assert "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe" in conf
    hosts = (server.dhcp_root / "hosts").read_text().splitlines()
    assert hosts == ["52:54:00:aa:00:01,10.20.0.11,cp-1", "52:54:00:aa:00:02,10.20.0.21,w-1"]
    assert {p.name for p in (server.dhcp_root / "tftp").iterdir()} == set(boot.TFTP_FILES)
    # dnsmasq itself accepts the configuration
    check = subprocess.run(["dnsmasq", "--test", f"--conf-file={server.prepare(inv)}"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_proxy_dhcp_leases_nothing(tmp_path):
    inv = inventory(tmp_path, pxe="dhcp: proxy, answerUnknown: true, serverAddress: 10.20.0.2")
    conf = boot.BootServer.of(inv, tmp_path / "machines", tmp_path / "run").prepare(inv).read_text()
    assert "dhcp-range=10.20.0.0,proxy,255.255.255.0" in conf
    assert "static" not in conf and "dhcp-ignore" not in conf
    assert "pxe-service=tag:!ipxe,x86PC" in conf
    assert "http://10.20.0.2:8090/boot.ipxe" in conf


def test_a_changed_configuration_is_a_new_file(tmp_path):
    inv = inventory(tmp_path)
    server = boot.BootServer.of(inv, tmp_path / "machines", tmp_path / "run")
    first = server.prepare(inv)
    assert server.prepare(inv) == first
    other = inventory(tmp_path, pxe="dhcp: proxy")
    second = boot.BootServer.of(other, tmp_path / "machines", tmp_path / "run").prepare(other)
    assert second != first and not first.exists()


def test_scripts_install_then_boot_the_disk():
    record = boot.Record("w-1", "52:54:00:aa:00:02", "10.20.0.21", token="T0KEN")
    script = boot.node_script("http://s:1", record, "console=ttyS0")
    assert "kernel http://s:1/install/T0KEN/vmlinuz initrd=installer.img boot=provision" \
        in script
    assert "provision.url=http://s:1/install/T0KEN" in script
    assert "initrd http://s:1/install/T0KEN/installer.img" in script
    record.phase, record.token = "installed", ""
    installed = boot.node_script("http://s:1", record, "")
    assert "kernel" not in installed and installed.rstrip().endswith("exit")
    assert "not in the inventory" in boot.node_script("http://s:1", None, "")
    assert "${mac:hexhyp}" in boot.boot_script("http://s:1")


@pytest.fixture
def served(tmp_path):
    """The boot HTTP server on loopback over a boot directory with one install."""
    inv = inventory(tmp_path)
    server = boot.BootServer.of(inv, tmp_path / "machines", tmp_path / "run")
    server.prepare(inv)
    image = tmp_path / "image"
    image.mkdir()
    for name in ("vmlinuz", "installer.img", "root.img.zst"):
        (image / name).write_bytes(name.encode() * 100)
    key = cloudinit.HostKey.generate()
    seed = cloudinit.Seed("i", "w-1", "52:54:00:aa:00:02", "10.20.0.21", 24, "10.20.0.1",
                          "ssh-ed25519 AAAA cluster", key)
    record = server.new_install(boot.Record("w-1", "52:54:00:aa:00:02", "10.20.0.21"),
                                {"PV_NODE": "w-1", "PV_DISK": ""}, seed.files())

    class H(Handler):
        pass

    H.root, H.image, H.cmdline = server.root, image, ""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    H.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, record, H.url, key
    finally:
        httpd.shutdown()
        httpd.server_close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_an_install_is_reached_through_its_token_only(served):
    server, record, url, key = served
    status, script = get(f"{url}/node/52-54-00-aa-00-02.ipxe")
    assert status == 200 and f"/install/{record.token}/vmlinuz" in script.decode()
    assert get(f"{url}/install/{record.token}/vmlinuz") == (200, b"vmlinuz" * 100)
    status, config = get(f"{url}/install/{record.token}/config")
    assert b"PV_NODE=w-1" in config and b"PV_IMAGE=http://" in config
    status, user_data = get(f"{url}/install/{record.token}/seed/user-data")
    assert status == 200 and key.public.split()[1].encode() in user_data
    assert get(f"{url}/install/wrong-token/seed/user-data")[0] == 404
    assert get(f"{url}/install/{record.token}/../machines/w-1.json")[0] == 404
    assert server.last_seen(record)[0] == "seed"


def test_done_is_recorded_the_secrets_go_and_the_disk_boots_next(served):
    server, record, url, _ = served
    assert post(f"{url}/install/{record.token}/log", b"installer log\n") == 200
    assert post(f"{url}/install/{record.token}/done", b"done") == 200
    assert server.result(record) == ("done", "done")
    install = server.install_dir(record.token)
    kept = server.finish(record, "installed", "")
    assert kept.read_text() == "installer log\n" and not install.exists()
    assert server.record("w-1").phase == "installed"
    status, script = get(f"{url}/node/52-54-00-aa-00-02.ipxe")
    assert b"booting from its disk" in script and b"kernel" not in script
    assert get(f"{url}/install/{record.token}/seed/user-data")[0] == 404


def test_failed_install_keeps_the_reason(served):
    server, record, url, _ = served
    assert post(f"{url}/install/{record.token}/failed", b"disk /dev/sda is 1024 MiB") == 200
    assert server.result(record) == ("failed", "disk /dev/sda is 1024 MiB")


def test_last_seen_reads_dnsmasq_for_dhcp_and_tftp(tmp_path):
    inv = inventory(tmp_path)
    server = boot.BootServer.of(inv, tmp_path / "machines", tmp_path / "run")
    server.prepare(inv)
    log = server.dhcp_log
    log.write_text("Dec  6 01:00:00 dnsmasq-dhcp[1]: DHCPACK(br-lab) 10.20.0.21 "
                   "52:54:00:aa:00:02 w-1 (an earlier install)\n")
    record = server.new_install(boot.Record("w-1", "52:54:00:aa:00:02", "10.20.0.21"), {}, {})
    assert server.last_seen(record) == ("nothing yet", "")
    with log.open("a") as f:
        f.write("Dec  6 01:05:00 dnsmasq-dhcp[1]: DHCPACK(br-lab) 10.20.0.21 "
                "52:54:00:aa:00:02 w-1\n")
    assert server.last_seen(record)[0] == "dhcp"
    with log.open("a") as f:
        f.write("Dec  6 01:05:01 dnsmasq-tftp[1]: sent /x/tftp/undionly.kpxe to 10.20.0.21\n")
    assert server.last_seen(record) == ("tftp", "/x/tftp/undionly.kpxe to 10.20.0.21")


def test_a_redfish_bmc_over_http_needs_insecure(tmp_path):
    with pytest.raises(InventoryInvalid, match="plain http:// would receive its password"):
        inventory(tmp_path, **{"https://10.20.1.11": "http://10.20.1.11"})
    with pytest.raises(InventoryInvalid, match="verifyTLS: false talks to any BMC"):
        inventory(tmp_path, **{"password: env:BMC_PASSWORD}\n  - name: w-1":
                               "password: env:BMC_PASSWORD, verifyTLS: false}\n  - name: w-1"})
    inv = inventory(tmp_path, **{"https://10.20.1.11": "http://10.20.1.11, insecure: true"})
    assert inv.node("cp-1").bmc.insecure


def test_validate_runs_the_providers_rules_that_need_no_host(tmp_path):
    from typer.testing import CliRunner

    from provision.cli import app

    path = tmp_path / "metal.yaml"
    path.write_text(INVENTORY.format(pxe="image: no-such-recipe"))
    result = CliRunner().invoke(app, ["validate", "-i", str(path)])
    assert result.exit_code == 2
    assert "providers.pxe.image" in result.output and "no metal image recipe" in result.output
