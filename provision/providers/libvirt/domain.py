"""A VM's domain: its names (``VMLayout``), the spec it is made of, the XML rendered
from templates/domain.xml.j2 with that spec in provision's metadata, the NoCloud seed
that gives it its identity, reading the metadata back (which cluster and node a
domain belongs to, its address and host key), and drift: how an existing VM differs
from the inventory (reported, never applied)."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provision import names
from provision.inventory import Inventory, LibvirtSettings, MachineSpec, Node
from provision.lab.vmimage import VMImage
from provision.providers import cloudinit
from provision.providers.libvirt import network
from provision.providers.libvirt.render import NS, render

if TYPE_CHECKING:
    import libvirt

MiB = 1 << 20
CONSOLE_DIR = "/var/log/libvirt/qemu"

# The spec keys a VM is created with and compared against on reuse.
SPEC_KEYS = ("cpus", "memory", "disk", "image", "mac", "address", "attachment")

# A domain's provision metadata: cluster, node, and the spec (strings only).
Meta = dict[str, str]


@dataclass(frozen=True)
class VMLayout:
    """Every name one VM uses."""

    cluster: str
    node: str

    @property
    def domain(self) -> str:
        return names.node_object(self.cluster, self.node)

    @property
    def disk_volume(self) -> str:
        return f"{self.domain}.qcow2"

    @property
    def seed_volume(self) -> str:
        return f"{self.domain}-seed.iso"

    @property
    def console_log(self) -> str:
        return f"{CONSOLE_DIR}/{self.domain}-console.log"

    def mac(self, explicit: str | None) -> str:
        if explicit:
            return explicit.lower()
        h = hashlib.sha256(f"{self.cluster}/{self.node}".encode()).digest()
        return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def vm_size(s: LibvirtSettings, node: Node) -> MachineSpec:
    """The node's machine size, each value it leaves out from ``defaults``."""
    d = s.defaults or MachineSpec()
    m = node.machine
    return MachineSpec(cpus=m.cpus or d.cpus, memory=m.memory or d.memory,
                       disk=m.disk or d.disk)


def spec(inv: Inventory, s: LibvirtSettings, node: Node, img_name: str) -> Meta:
    """What a VM for this node is made of: compared with the domain's metadata."""
    size = vm_size(s, node)
    return {"cpus": str(size.cpus), "memory": str(size.memory_bytes),
            "disk": str(size.disk_bytes), "image": img_name,
            "mac": VMLayout(inv.name, node.name).mac(node.mac), "address": node.address,
            "attachment": network.attachment(inv, s)}


def render_domain(inv: Inventory, s: LibvirtSettings, node: Node, *, domain_type: str,
                  img: VMImage, disk: str, seed: str, kernel: str, initrd: str,
                  host_key: str = "") -> str:
    lay = VMLayout(inv.name, node.name)
    want = spec(inv, s, node, img.name)
    if host_key:
        want["hostkey"] = host_key
    return render(
        "domain.xml.j2",
        domain_type=domain_type, name=lay.domain, node=lay.node, cluster=lay.cluster,
        spec=want, memory_kib=int(want["memory"]) // 1024, cpus=want["cpus"],
        kernel=kernel, initrd=initrd, cmdline=img.cmdline, disk=disk, seed=seed,
        bridge=s.bridge, network=s.network or network.owned_network_name(inv.name),
        mac=want["mac"], console_log=lay.console_log,
    )


def seed(inv: Inventory, node: Node, host_key: cloudinit.HostKey,
         authorized_key: str) -> cloudinit.Seed:
    """The VM's identity for cloud-init: hostname, static address, keys."""
    lay = VMLayout(inv.name, node.name)
    key_tag = hashlib.sha256(host_key.public.encode()).hexdigest()[:8]
    return cloudinit.Seed(
        instance_id=f"{lay.domain}-{key_tag}", hostname=node.name, mac=lay.mac(node.mac),
        address=node.address, prefix=inv.network.ip_network.prefixlen,
        gateway=inv.network.gateway, authorized_key=authorized_key, host_key=host_key,
    )


def domain_meta(dom: libvirt.virDomain) -> Meta:
    """The provision metadata of a domain ({} for a domain provision did not make)."""
    import libvirt

    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS)
    except libvirt.libvirtError:  # no metadata in our namespace
        return {}
    out: Meta = {}
    for child in ET.fromstring(xml):
        tag = child.tag.split("}")[-1]
        if tag == "spec":
            out[child.get("name", "")] = child.text or ""
        else:
            out[tag] = child.text or ""
    return out


def cluster_domains(conn: libvirt.virConnect, cluster: str) -> dict[str, Meta]:
    """Node name -> metadata of every domain provision made for ``cluster`` on this
    connection, in the inventory or not any more."""
    out = {}
    for dom in conn.listAllDomains(0):
        meta = domain_meta(dom)
        if meta.get("cluster") == cluster:
            out[meta.get("node") or dom.name()] = meta
    return out


def drift(meta: Meta, want: Meta) -> list[str]:
    """How a VM made with ``meta`` differs from ``want``, one line a spec key."""
    out = []
    for key in SPEC_KEYS:
        have = meta.get(key)
        if have is not None and have != want.get(key):
            out.append(f"{key}: VM has {_show(key, have)}, inventory says "
                       f"{_show(key, want.get(key, ''))}")
    return out


def _show(key: str, value: str) -> str:
    if key in ("memory", "disk") and value.isdigit():
        return f"{int(value) // MiB}Mi"
    return value


__all__ = [
    "CONSOLE_DIR", "MiB", "SPEC_KEYS", "Meta", "VMLayout", "cluster_domains",
    "domain_meta", "drift", "render_domain", "seed", "spec", "vm_size",
]
