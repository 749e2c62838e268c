"""libvirt provider against libvirt's in-process test driver (test:///default).

The test driver keeps real objects (domains, networks, pools, volumes) but runs no VM
and cannot upload volume data, so ``upload`` is replaced by a recorder (which also
lets the seed ISO be read back) and the SSH wait is skipped. Rendered XML is compared
with golden files; set UPDATE_GOLDEN=1 to rewrite them after an intended change.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import libvirt  # libvirt-python: make up installs it, so its absence is a failure
import pytest

from provision.errors import ProviderError
from provision.inventory import Inventory, parse_inventory  # noqa: E402
from provision.lab import vmimage  # noqa: E402
from provision.paths import ClusterPaths  # noqa: E402
from provision.providers import cloudinit  # noqa: E402
from provision.providers.base import (  # noqa: E402
    Capability,
    Machine,
    MachineState,
    ProvidersInvalid,
    say_nothing,
)
from provision.providers.libvirt import (  # noqa: E402
    LibvirtProvider,
    connection,
    domain,
    network,
    volumes,
)
from provision.providers.registry import Providers, load  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "libvirt"
TEST_URI = "test:///default"

INVENTORY = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: {name}
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: 10.40.0.10}}
network: {{subnet: 10.40.0.0/24}}
providers:
  libvirt:
    uri: "{uri}"
    pool: {pool}
{extra}    defaults: {{cpus: 2, memory: 2Gi, disk: 8Gi}}
nodes:
  - {{name: cp-1, roles: [control-plane], provider: libvirt, address: 10.40.0.11}}
{worker}"""
WORKER = """  - {{name: w-1, roles: [worker], provider: libvirt, address: 10.40.0.21,
     machine: {{cpus: 1, memory: {worker_memory}, disk: 6Gi}}, mac: "52:54:00:aa:bb:cc"}}
"""


def make_inventory(name: str | None = None, uri: str = TEST_URI, pool: str = "default-pool",
                   extra: str = "", worker_memory: str = "1Gi",
                   with_worker: bool = True) -> Inventory:
    name = name or f"u{secrets.token_hex(3)}"
    worker = WORKER.format(worker_memory=worker_memory) if with_worker else ""
    text = INVENTORY.format(name=name, uri=uri, pool=pool, extra=extra, worker=worker)
    return parse_inventory(text, "inv.yaml")


FAKE_IMAGE = vmimage.VMImage(
    name="vm-0123456789abcdef", dir=Path("/cache/vm"), disk=Path("/cache/vm/root.qcow2"),
    kernel=Path("/cache/vm/vmlinuz"), initrd=Path("/cache/vm/initrd.img"),
    cmdline="root=LABEL=root rw console=ttyS0,115200n8 net.ifnames=0",
    digest="0123456789abcdef")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path} (run with UPDATE_GOLDEN=1)"
    assert text == path.read_text(), f"rendered XML differs from {path}"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("PROVISION_LIBVIRT_ACCEL", raising=False)
    return tmp_path


@pytest.fixture
def provider(state: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A provider whose image is a few small files and whose uploads are recorded."""
    files = state / "image"
    files.mkdir()
    for f in ("root.qcow2", "vmlinuz", "initrd.img"):
        (files / f).write_bytes(f.encode() * 100)
    img = vmimage.VMImage(name=FAKE_IMAGE.name, dir=files, disk=files / "root.qcow2",
                          kernel=files / "vmlinuz", initrd=files / "initrd.img",
                          cmdline=FAKE_IMAGE.cmdline, digest=FAKE_IMAGE.digest)
    monkeypatch.setattr(vmimage, "ensure_vm_image", lambda _name, _log=None: img)
    p = LibvirtProvider()
    p.uploads = {}  # type: ignore[attr-defined]

    def record(_conn: Any, vol: Any, src: bytes | Path) -> None:
        p.uploads[vol.name()] = src if isinstance(src, bytes) else src.read_bytes()  # type: ignore[attr-defined]

    p.upload = record
    p.image_name = lambda _image: img.name  # type: ignore[method-assign]
    p.wait_ssh = lambda *_a, **_k: None  # type: ignore[method-assign]
    yield p
    p.close()


def conn() -> Any:
    return libvirt.open(TEST_URI)


# --- rendering -------------------------------------------------------------------------


def _render(inv: Inventory, node: str, dtype: str) -> str:
    assert inv.providers.libvirt is not None
    return domain.render_domain(
        inv, inv.providers.libvirt, inv.node(node), domain_type=dtype, img=FAKE_IMAGE,
        disk=f"/pool/pv-{inv.name}-{node}.qcow2", seed=f"/pool/pv-{inv.name}-{node}-seed.iso",
        kernel="/pool/pv-base.vmlinuz", initrd="/pool/pv-base.initrd",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForGoldenFiles")


def test_domain_xml_tcg_owned_network_golden() -> None:
    golden("domain-tcg-owned-network.xml", _render(make_inventory("golden"), "cp-1", "qemu"))


def test_domain_xml_kvm_bridge_golden() -> None:
    inv = make_inventory("golden", extra="    bridge: br-lab\n    netns: pv-golden\n")
    golden("domain-kvm-bridge.xml", _render(inv, "w-1", "kvm"))


def test_network_xml_golden() -> None:
    golden("network.xml", network.render_network(make_inventory("golden")))


def test_domain_xml_has_the_required_devices() -> None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(_render(make_inventory("golden"), "w-1", "qemu"))
    assert root.get("type") == "qemu"
    assert root.find("features/acpi") is not None  # else a guest poweroff never ends
    disks = root.findall("devices/disk")
    assert [d.find("target").get("bus") for d in disks] == ["virtio", "virtio"]
    assert disks[1].find("readonly") is not None
    nic = root.find("devices/interface")
    assert nic.find("model").get("type") == "virtio"
    assert nic.find("mac").get("address") == "52:54:00:aa:bb:cc"  # the inventory's MAC
    assert root.find("devices/serial").get("type") == "file"
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert int(root.find("memory").text) == 1024 * 1024  # KiB
    assert root.find("vcpu").text == "1"


def test_derived_mac_is_stable_and_local() -> None:
    lay = domain.VMLayout("c", "n")
    assert lay.mac(None) == domain.VMLayout("c", "n").mac(None)
    assert lay.mac(None).startswith("52:54:00:")
    assert lay.mac(None) != domain.VMLayout("c", "m").mac(None)


def test_seed_iso_carries_identity_and_keys() -> None:
    inv = make_inventory("seed")
    key = cloudinit.HostKey.generate()
    seed = domain.seed(inv, inv.node("w-1"), key, "ssh-ed25519 AAAA cluster\n")
    files = cloudinit.read_iso(cloudinit.build_iso(seed.files()))
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    import yaml

    user = yaml.safe_load(files["user-data"])
    assert files["user-data"].startswith(b"#cloud-config\n")
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAA cluster"]
    assert user["ssh_keys"]["ed25519_public"] == key.public
    assert "OPENSSH PRIVATE KEY" in user["ssh_keys"]["ed25519_private"]
    assert user["disable_root"] is False and user["ssh_genkeytypes"] == []
    net = yaml.safe_load(files["network-config"])
    eth = net["ethernets"]["eth0"]
    assert eth["match"]["macaddress"] == "52:54:00:aa:bb:cc"
    assert eth["addresses"] == ["10.40.0.21/24"]
    assert eth["routes"] == [{"to": "0.0.0.0/0", "via": "10.40.0.1"}]
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "w-1"


def test_iso_volume_label_is_cidata() -> None:
    data = cloudinit.build_iso({"meta-data": b"x"})
    assert data[0x8000 + 40:0x8000 + 46] == b"cidata"  # primary volume descriptor


# --- static checks -------------------------------------------------------------------------


def _messages(problems: list[Any]) -> list[str]:
    return [f"{p.path}: {p.message}" for p in problems]


def test_registered() -> None:
    p = load("libvirt")
    assert isinstance(p, LibvirtProvider)
    assert p.capabilities == {Capability.CREATE, Capability.POWER, Capability.SERVICES}


def test_check_passes_on_good_input(state: Path) -> None:
    inv = make_inventory()
    assert _messages(LibvirtProvider().validate(inv, inv.nodes)) == []


def test_check_unknown_pool_and_network(state: Path) -> None:
    inv = make_inventory(pool="nope", extra="    network: nonet\n")
    msgs = _messages(LibvirtProvider().validate(inv, inv.nodes))
    assert any("providers.libvirt.pool: unknown storage pool 'nope'" in m for m in msgs), msgs
    assert any("providers.libvirt.network: unknown libvirt network 'nonet'" in m
               for m in msgs), msgs


def test_check_memory_too_small_for_the_role(state: Path) -> None:
    inv = make_inventory(worker_memory="512Mi")
    msgs = _messages(LibvirtProvider().validate(inv, inv.nodes))
    assert msgs == ["nodes[w-1].machine.memory: 512 MiB is too little for a worker VM "
                    "(needs at least 1024 MiB)"], msgs


def test_check_unreachable_uri_names_uri_and_libvirt_error(state: Path) -> None:
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    inv = make_inventory(uri=uri)
    msgs = _messages(LibvirtProvider().validate(inv, inv.nodes))
    assert len(msgs) == 1 and msgs[0].startswith(f"providers.libvirt.uri: cannot connect to {uri}")
    assert "virConnectOpen" in msgs[0] and "/nonexistent/libvirt-sock" in msgs[0]


def test_check_missing_netns_and_bridge(state: Path) -> None:
    inv = make_inventory(extra="    bridge: nosuchbr0\n    netns: pv-no-such-ns\n")
    msgs = _messages(LibvirtProvider().validate(inv, inv.nodes))
    assert any(m.startswith("providers.libvirt.netns: network namespace 'pv-no-such-ns'")
               for m in msgs), msgs


def test_network_and_bridge_together_is_an_inventory_error() -> None:
    from provision.inventory import InventoryInvalid

    with pytest.raises(InventoryInvalid, match="either network or bridge"):
        make_inventory(extra="    network: default\n    bridge: br0\n")


def test_ensure_refuses_bad_input_before_defining_anything(provider: Any) -> None:
    inv = make_inventory(worker_memory="256Mi")
    before = sorted(conn().listDefinedDomains())
    with pytest.raises(ProvidersInvalid, match="too little for a worker"):
        provider.ensure(inv, inv.nodes, say_nothing)
    assert sorted(conn().listDefinedDomains()) == before
    assert provider.uploads == {}


# --- lifecycle on the test driver -------------------------------------------------------


def test_lifecycle(provider: Any) -> None:
    inv = make_inventory()
    names = [n.name for n in inv.nodes]
    known_hosts = ClusterPaths.for_cluster(inv.name).known_hosts
    said: list[tuple[str, str]] = []
    started = provider.ensure(inv, inv.nodes, lambda n, m: said.append((n, m)))
    assert started == {"cp-1", "w-1"}  # neither was running before
    c = conn()
    assert any("TCG" in m for _, m in said)  # the test driver offers no KVM
    assert provider.observe(inv, names) == {"cp-1": MachineState.RUNNING,
                                            "w-1": MachineState.RUNNING}
    # the owned network, the overlay on the base image, the seed
    net = c.networkLookupByName(f"pv-{inv.name}")
    assert net.isActive() and "<dns enable='no'" in net.XMLDesc().replace('"', "'")
    pool = c.storagePoolLookupByName("default-pool")
    vols = set(pool.listVolumes())
    base = volumes.base_volume_names(FAKE_IMAGE)
    assert set(base.values()) <= vols
    for n in ("cp-1", "w-1"):
        assert {f"pv-{inv.name}-{n}.qcow2", f"pv-{inv.name}-{n}-seed.iso"} <= vols
    overlay = pool.storageVolLookupByName(f"pv-{inv.name}-w-1.qcow2")
    assert overlay.info()[1] == 6 << 30
    # the seed's host key is in known_hosts before the first connection
    files = cloudinit.read_iso(provider.uploads[f"pv-{inv.name}-w-1-seed.iso"])
    import yaml

    pub = yaml.safe_load(files["user-data"])["ssh_keys"]["ed25519_public"]
    known = known_hosts.read_text().splitlines()
    assert f"10.40.0.21 {pub}" in known
    dom = c.lookupByName(f"pv-{inv.name}-w-1")
    assert domain.domain_meta(dom)["hostkey"] == pub

    # idempotent: a second ensure reuses everything
    said.clear()
    assert provider.ensure(inv, inv.nodes, lambda n, m: said.append((n, m))) == set()
    assert ("w-1", "running, reused") in said and ("cp-1", "running, reused") in said
    assert not any("creating" in m for _, m in said)

    # drift is reported, never applied
    bigger = make_inventory(inv.name, worker_memory="3Gi")
    assert provider.drift(bigger, bigger.nodes) == {
        "w-1": ["memory: VM has 1024Mi, inventory says 3072Mi"]}
    said.clear()
    provider.ensure(bigger, bigger.nodes, lambda n, m: said.append((n, m)))
    assert any(n == "w-1" and "drift not applied: memory" in m for n, m in said)
    assert dom.info()[1] == 1024 * 1024  # still 1 GiB

    # stop / start
    provider.stop(inv, inv.node("w-1"))
    assert provider.observe(inv, ["w-1"]) == {"w-1": MachineState.STOPPED}
    provider.start(inv, inv.node("w-1"))
    assert provider.observe(inv, ["w-1"]) == {"w-1": MachineState.RUNNING}
    # a stopped VM is started again by ensure, which says so
    provider.stop(inv, inv.node("w-1"))
    assert provider.ensure(inv, inv.nodes, say_nothing) == {"w-1"}

    # destroy one: the network stays for the other
    provider.destroy(inv, ["w-1"])
    assert provider.observe(inv, names)["w-1"] == MachineState.MISSING
    assert c.networkLookupByName(f"pv-{inv.name}") is not None
    # destroy all: nothing of the cluster is left, only the shared base image
    provider.destroy(inv, names)
    provider.destroy(inv, names)  # idempotent
    assert provider.observe(inv, names) == {"cp-1": MachineState.MISSING,
                                            "w-1": MachineState.MISSING}
    assert f"pv-{inv.name}" not in [n.name() for n in c.listAllNetworks()]
    left = [v for v in pool.listVolumes() if inv.name in v]
    assert left == []
    assert "10.40.0.21" not in known_hosts.read_text()


def test_vm_of_a_node_removed_from_the_inventory_is_found_and_released(provider: Any) -> None:
    """The libvirt host itself says which VMs a cluster has: a node dropped from the
    inventory leaves a VM the inventory no longer names, with its address in the
    domain's metadata, and destroy by name releases it."""
    inv = make_inventory()
    provider.ensure(inv, inv.nodes, say_nothing)
    assert provider.machines(inv) == {"cp-1": Machine("cp-1", "10.40.0.11", "libvirt"),
                                      "w-1": Machine("w-1", "10.40.0.21", "libvirt")}
    smaller = make_inventory(inv.name, with_worker=False)
    assert [n.name for n in smaller.nodes] == ["cp-1"]
    providers = Providers(smaller)
    try:
        assert providers.orphans() == {"w-1": Machine("w-1", "10.40.0.21", "libvirt")}
        assert providers.states(providers.orphans()) == {"w-1": MachineState.RUNNING}
    finally:
        providers.close()
    # another cluster on the same libvirt host lists its own VMs only, not this w-1
    other = make_inventory(with_worker=False)
    provider.ensure(other, other.nodes, say_nothing)
    try:
        assert provider.machines(other) == {"cp-1": Machine("cp-1", "10.40.0.11", "libvirt")}
    finally:
        provider.destroy(other, ["cp-1"])

    provider.destroy(smaller, ["w-1"])
    c = conn()
    assert f"pv-{inv.name}-w-1" not in [d.name() for d in c.listAllDomains(0)]
    vols = c.storagePoolLookupByName("default-pool").listVolumes()
    assert not [v for v in vols if v.startswith(f"pv-{inv.name}-w-1")]
    assert set(provider.machines(smaller)) == {"cp-1"}
    assert Providers(smaller).orphans() == {}
    assert "10.40.0.21" not in ClusterPaths.for_cluster(inv.name).known_hosts.read_text()
    provider.destroy(smaller, ["cp-1"])
    assert provider.machines(smaller) == {}


def test_existing_domain_of_another_cluster_is_refused(provider: Any) -> None:
    inv = make_inventory()
    c = conn()
    c.defineXML(f"<domain type='test'><name>pv-{inv.name}-w-1</name><memory>1024</memory>"
                "<os><type>hvm</type></os></domain>")
    try:
        msgs = _messages(provider.validate(inv, inv.nodes))
        assert any("nodes[w-1].name" in m and "not this cluster's" in m for m in msgs), msgs
    finally:
        c.lookupByName(f"pv-{inv.name}-w-1").undefine()


def test_foreign_network_of_the_same_name_is_refused(provider: Any) -> None:
    inv = make_inventory()
    c = conn()
    net = c.networkDefineXML(f"<network><name>pv-{inv.name}</name>"
                             "<bridge name='pvforeign0'/></network>")
    try:
        msgs = _messages(provider.validate(inv, inv.nodes))
        assert any("was not created by provision" in m for m in msgs), msgs
    finally:
        net.undefine()


def test_failure_names_the_libvirt_call_and_console_log(tmp_path: Path) -> None:
    log = tmp_path / "x-console.log"
    log.write_text("Booting...\nKernel panic - not syncing: VFS\n")

    class Boom:
        def create(self) -> None:
            raise libvirt.libvirtError("no room for the guest")

    with pytest.raises(ProviderError) as err, connection.libvirt_call(
            "virDomainCreate", "w-1", str(log)):
        Boom().create()
    msg = str(err.value)
    assert "libvirt virDomainCreate for w-1 failed: no room for the guest" in msg
    assert f"console log: {log}" in msg and "| Kernel panic" in msg  # with its tail


def test_accel_override(monkeypatch: pytest.MonkeyPatch) -> None:
    c = conn()
    monkeypatch.setenv("PROVISION_LIBVIRT_ACCEL", "kvm")
    assert connection.domain_type(c) == "kvm"
    monkeypatch.setenv("PROVISION_LIBVIRT_ACCEL", "tcg")
    assert connection.domain_type(c) == "qemu"
    monkeypatch.setenv("PROVISION_LIBVIRT_ACCEL", "auto")
    assert connection.domain_type(c) == "qemu"  # the test driver offers no KVM domain caps


def test_ssh_endpoint_through_netns() -> None:
    inv = make_inventory("ep", extra="    netns: pv-lab\n")
    ep = LibvirtProvider().ssh_endpoint(inv, "w-1", inv.node("w-1").address)
    assert ep.address == "10.40.0.21" and ep.port == 22
    assert ep.proxy_command and ep.proxy_command.endswith(
        "-m provision.lab.nsproxy connect pv-lab %h %p")
    inv = make_inventory("ep")
    assert LibvirtProvider().ssh_endpoint(inv, "w-1", "10.40.0.21").proxy_command is None


def test_vm_recipe_is_found_and_hashed() -> None:
    r = vmimage.find_recipe("debian-12")
    assert r.name == "vm" and len(r.digest) == 16
    assert "linux-image-cloud-amd64" in r.recipe.packages
    assert "cloud-init" in r.recipe.packages and "qemu-guest-agent" in r.recipe.packages
    assert r.disk_dir.name == f"vm-{r.digest}"
    with pytest.raises(Exception, match="no VM image recipe named 'nope'"):
        vmimage.find_recipe("nope")
