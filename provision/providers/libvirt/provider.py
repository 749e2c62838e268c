"""The libvirt provider: one domain per node, its lifecycle over ``connection``,
``domain``, ``volumes``, ``network``, ``checks`` and ``boot`` (see the package's
docstring)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from provision.errors import BadInput, ProviderError
from provision.executors.ssh import SSHEndpoint, close_masters, ensure_cluster_keypair
from provision.inventory import Inventory, LibvirtSettings, Node, Problem
from provision.lab import nsproxy, vmimage
from provision.paths import ClusterPaths
from provision.providers import cloudinit, services
from provision.providers.base import (
    Capability,
    Machine,
    MachineState,
    NodeSay,
    Provider,
    raise_if_invalid,
    say_nothing,
)
from provision.providers.libvirt import boot, checks, domain, network, volumes
from provision.providers.libvirt.connection import (
    Connections,
    domain_type,
    find,
    is_local,
    libvirt_call,
)
from provision.providers.libvirt.domain import VMLayout
from provision.providers.machine import (
    SSH_PORT,
    connector,
    ensure_lab_bridge,
    set_known_host,
)

if TYPE_CHECKING:
    import libvirt


def settings(inv: Inventory) -> LibvirtSettings:
    return inv.providers.libvirt or LibvirtSettings()


class LibvirtProvider(Provider):
    name = "libvirt"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({
        Capability.CREATE, Capability.POWER, Capability.SERVICES})
    ssh_timeout_tcg = 900.0  # seconds from start to SSH under TCG (about 10x slower)
    ssh_timeout_kvm = 300.0
    stop_timeout = 120.0  # ACPI shutdown before a hard power-off

    def __init__(self) -> None:
        self.connections = Connections()
        # tests replace this to write volumes on drivers without upload (test:///)
        self.upload: volumes.Upload = volumes.upload

    def conn(self, inv: Inventory) -> libvirt.virConnect:
        return self.connections.get(settings(inv).uri)

    def close(self) -> None:
        self.connections.close()

    # --- every provider -----------------------------------------------------------------

    def validate(self, inv: Inventory, nodes: Sequence[Node], *,
                 host: bool = True) -> list[Problem]:
        return checks.problems(inv, settings(inv), nodes, self.connections, host=host)

    def ensure(self, inv: Inventory, nodes: Sequence[Node], say: NodeSay) -> set[str]:
        raise_if_invalid(self, inv, nodes)
        if not nodes:
            return set()
        s = settings(inv)
        conn = self.conn(inv)
        dtype = domain_type(conn)
        if dtype != "kvm":
            say("*", "WARNING: KVM is not usable here (or PROVISION_LIBVIRT_ACCEL=tcg): VMs run "
                "under TCG software emulation, about 10x slower (minutes to boot)")
        img = vmimage.ensure_vm_image(s.image, lambda m: say("*", m))
        ensure_cluster_keypair(ClusterPaths.for_cluster(inv.name))
        with libvirt_call(f"virStoragePoolLookupByName({s.pool})"):
            pool = conn.storagePoolLookupByName(s.pool)
        base = volumes.ensure_base_volumes(conn, pool, img, self.upload, say)
        if not s.network and not s.bridge:
            network.ensure_network(inv, conn, say)
        elif network.on_lab_bridge(inv, s):
            ensure_lab_bridge(inv)  # shared with lab machines: whichever runs first makes it
        started = {n.name for n in nodes
                   if self._ensure_vm(inv, conn, pool, n, img, base, dtype, say)}
        self.wait_ssh(inv, nodes, dtype, say)
        return started

    def observe(self, inv: Inventory, names: Sequence[str]) -> dict[str, MachineState]:
        conn = self.conn(inv)
        out = {}
        for name in names:
            dom = find(conn.lookupByName, VMLayout(inv.name, name).domain)
            if dom is None:
                out[name] = MachineState.MISSING
            else:
                out[name] = MachineState.RUNNING if dom.isActive() else MachineState.STOPPED
        return out

    def destroy(self, inv: Inventory, names: Sequence[str], *, wipe: bool = False) -> None:
        """The domains, their volumes, console logs and known_hosts lines; with the
        cluster's last VM also its services and its owned network."""
        s = settings(inv)
        conn = self.conn(inv)
        paths = ClusterPaths.for_cluster(inv.name)
        close_masters(paths, list(names))
        pool = volumes.refreshed_pool(conn, s.pool)
        in_inventory = {n.name: n.address for n in inv.nodes}
        for name in names:
            recorded = _remove_vm(conn, pool, VMLayout(inv.name, name), s.uri)
            address = recorded or in_inventory.get(name)
            if address:
                set_known_host(paths.known_hosts, address, None)
        if not domain.cluster_domains(conn, inv.name):
            services.stop_all(paths.machines_dir)
            if not s.network and not s.bridge:
                network.destroy_network(inv, conn)

    def ssh_endpoint(self, inv: Inventory, name: str, address: str) -> SSHEndpoint:
        s = settings(inv)
        proxy = nsproxy.proxy_command(s.netns) if s.netns else None
        return SSHEndpoint(address=address, port=SSH_PORT, proxy_command=proxy)

    # --- capabilities -------------------------------------------------------------------

    def machines(self, inv: Inventory) -> dict[str, Machine]:
        """Every domain on the inventory's libvirt host whose provision metadata says it
        belongs to this cluster, in the inventory or not any more, with the address it
        was created with."""
        conn = self.conn(inv)
        return {name: Machine(name, meta.get("address", ""), self.name)
                for name, meta in domain.cluster_domains(conn, inv.name).items()}

    def start(self, inv: Inventory, node: Node) -> None:
        conn = self.conn(inv)
        lay = VMLayout(inv.name, node.name)
        dom = find(conn.lookupByName, lay.domain)
        if dom is None:
            raise ProviderError(f"VM {lay.domain} of {node.name} does not exist: "
                                "run `provision up`")
        if not dom.isActive():
            with libvirt_call("virDomainCreate", node.name, lay.console_log):
                dom.create()
        self.wait_ssh(inv, [node], domain_type(conn), say_nothing)

    def stop(self, inv: Inventory, node: Node) -> None:
        """ACPI shutdown (the guest powers off cleanly), hard power-off after a timeout."""
        lay = VMLayout(inv.name, node.name)
        dom = find(self.conn(inv).lookupByName, lay.domain)
        if dom is not None:
            _power_off(dom, lay, self.stop_timeout)

    def spawn_service(self, inv: Inventory, name: str, argv: list[str]) -> int:
        """Run a provisioner-side service (the artifact mirror) detached where the VMs
        reach the gateway: inside ``netns`` when set, else in this host's namespace
        (the owned network's bridge holds the gateway there for local URIs).
        Reused while its arguments stay the same (providers/services.py); destroy
        stops it with the cluster's last VM."""
        s = settings(inv)
        if not is_local(s.uri):
            raise ProviderError(f"the artifact mirror, which the nodes install from with "
                                f"either artifacts.source, cannot run beside VMs on a remote "
                                f"libvirt host ({s.uri})")
        prefix = ["ip", "netns", "exec", s.netns] if s.netns else []
        return services.spawn(ClusterPaths.for_cluster(inv.name).machines_dir, name, argv,
                              prefix=prefix)

    def service_netns(self, inv: Inventory) -> str | None:
        return settings(inv).netns

    # --- beyond the interface -------------------------------------------------------------

    def drift(self, inv: Inventory, nodes: Sequence[Node]) -> dict[str, list[str]]:
        """Node -> how its existing VM differs from the inventory (for ``plan``)."""
        s = settings(inv)
        conn = self.conn(inv)
        img_name = self.image_name(s.image)
        out: dict[str, list[str]] = {}
        for node in nodes:
            dom = find(conn.lookupByName, VMLayout(inv.name, node.name).domain)
            if dom is None:
                continue
            diff = domain.drift(domain.domain_meta(dom), domain.spec(inv, s, node, img_name))
            if diff:
                out[node.name] = diff
        return out

    def image_name(self, image: str) -> str:
        """<recipe>-<hash> of the image the inventory names now (what drift compares)."""
        try:
            recipe = vmimage.find_recipe(image)
        except BadInput:  # reported by validate()
            return "?"
        return f"{recipe.name}-{recipe.digest}"

    def wait_ssh(self, inv: Inventory, nodes: Sequence[Node], dtype: str,
                 say: NodeSay) -> None:
        """Until every VM answers SSH and finished booting (tests on test:/// skip it)."""
        kvm = dtype == "kvm"
        timeout = self.ssh_timeout_kvm if kvm else self.ssh_timeout_tcg
        wait = boot.ssh_wait(inv, self.conn(inv), connector(settings(inv).netns), timeout, kvm)
        wait.run(nodes, say)

    # --- internals --------------------------------------------------------------------------

    def _ensure_vm(self, inv: Inventory, conn: libvirt.virConnect,
                   pool: libvirt.virStoragePool, node: Node, img: vmimage.VMImage,
                   base: dict[str, str], dtype: str, say: NodeSay) -> bool:
        """The node's VM exists and runs; True when it was not running before."""
        s = settings(inv)
        lay = VMLayout(inv.name, node.name)
        paths = ClusterPaths.for_cluster(inv.name)
        dom = find(conn.lookupByName, lay.domain)
        if dom is not None:
            meta = domain.domain_meta(dom)
            for line in domain.drift(meta, domain.spec(inv, s, node, img.name)):
                say(node.name, f"WARNING: spec drift not applied: {line} (destroy and "
                    "re-create the node to apply it)")
            if meta.get("hostkey"):
                set_known_host(paths.known_hosts, node.address, meta["hostkey"])
            if dom.isActive():
                say(node.name, "running, reused")
                return False
            say(node.name, "starting (existing VM)")
            with libvirt_call("virDomainCreate", node.name, lay.console_log):
                dom.create()
            return True
        say(node.name, f"creating VM {lay.domain}")
        key = cloudinit.HostKey.generate()
        host_pub = " ".join(key.public.split()[:2])
        seed = domain.seed(inv, node, key, paths.ssh_public_key.read_text())
        iso = cloudinit.build_iso(seed.files())
        seed_vol = volumes.replace(pool, lay.seed_volume,
                                   volumes.volume_xml(lay.seed_volume, len(iso), "raw"))
        with libvirt_call(f"virStorageVolUpload({lay.seed_volume})", node.name):
            self.upload(conn, seed_vol, iso)
        disk = domain.vm_size(s, node).disk_bytes or 0
        disk_vol = volumes.replace(pool, lay.disk_volume, volumes.volume_xml(
            lay.disk_volume, disk, "qcow2", backing=base["disk"]))
        xml = domain.render_domain(inv, s, node, domain_type=dtype, img=img,
                                   disk=disk_vol.path(), seed=seed_vol.path(),
                                   kernel=base["kernel"], initrd=base["initrd"],
                                   host_key=host_pub)
        # Known before the first boot: the first SSH connection is already strict.
        set_known_host(paths.known_hosts, node.address, host_pub)
        _remove_console(lay, s.uri)  # append='on' keeps every boot; a new VM starts empty
        with libvirt_call("virDomainDefineXML", node.name):
            dom = conn.defineXML(xml)
        say(node.name, f"starting VM ({dtype})")
        with libvirt_call("virDomainCreate", node.name, lay.console_log):
            dom.create()
        return True


def _remove_vm(conn: libvirt.virConnect, pool: libvirt.virStoragePool | None,
               lay: VMLayout, uri: str) -> str | None:
    """The domain (powered off, undefined), its volumes and console log. Returns the
    address its metadata recorded (None: no domain, or not one provision made)."""
    import libvirt

    address = None
    dom = find(conn.lookupByName, lay.domain)
    if dom is not None:
        address = domain.domain_meta(dom).get("address")
        if dom.isActive():
            with libvirt_call("virDomainDestroy", lay.node, lay.console_log):
                dom.destroy()
        with libvirt_call("virDomainUndefine", lay.node):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    if pool is not None:
        volumes.delete(pool, [lay.disk_volume, lay.seed_volume], lay.node)
    _remove_console(lay, uri)
    return address


def _remove_console(lay: VMLayout, uri: str) -> None:
    """The VM's console log, when libvirt runs on this host (else it is not ours)."""
    if is_local(uri):
        with suppress(OSError):
            Path(lay.console_log).unlink(missing_ok=True)


def _power_off(dom: libvirt.virDomain, lay: VMLayout, timeout: float) -> None:
    import libvirt

    if not dom.isActive():
        return
    with suppress(libvirt.libvirtError):
        dom.shutdown()  # ACPI: needs <acpi/>, which the template always sets
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not dom.isActive():
                return
        except libvirt.libvirtError:
            return
        time.sleep(1)
    with libvirt_call("virDomainDestroy", lay.node, lay.console_log):
        dom.destroy()


__all__ = ["LibvirtProvider", "settings"]
