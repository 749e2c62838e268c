"""Where a cluster's VMs attach: an existing libvirt network (``network``), an
existing bridge (``bridge``; the lab bridge of the cluster's lab namespace is made
when missing), or by default an isolated network ``pv-<cluster>`` that provision
owns: the subnet's gateway on its bridge, no forwarding, DHCP or DNS (addresses are
static, from the seed), removed with the cluster's last VM. Ownership is recorded in
the network's metadata, so a network of the same name that is not ours is never
touched."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from provision import names
from provision.inventory import Inventory, LibvirtSettings
from provision.lab import netns as labnet
from provision.providers.base import NodeSay
from provision.providers.libvirt.connection import find, libvirt_call
from provision.providers.libvirt.render import NS, render

if TYPE_CHECKING:
    import libvirt


def owned_network_name(cluster: str) -> str:
    return names.cluster_object(cluster)


def owned_bridge_name(cluster: str) -> str:
    # Linux limits interface names to 15 characters.
    return "pvv" + names.short_tag(cluster)


def attachment(inv: Inventory, s: LibvirtSettings) -> str:
    """``network:<name>`` or ``bridge:<name>``: recorded in a VM's spec."""
    if s.network:
        return f"network:{s.network}"
    if s.bridge:
        return f"bridge:{s.bridge}"
    return f"network:{owned_network_name(inv.name)}"


def on_lab_bridge(inv: Inventory, s: LibvirtSettings) -> bool:
    """VMs on the lab bridge of this cluster's own lab namespace (beside lab machines)."""
    return bool(s.netns and s.bridge == labnet.BRIDGE and s.netns == names.lab_netns(inv.name))


def render_network(inv: Inventory) -> str:
    return render("network.xml.j2", name=owned_network_name(inv.name), cluster=inv.name,
                  bridge=owned_bridge_name(inv.name), gateway=inv.network.gateway,
                  prefix=inv.network.ip_network.prefixlen)


def network_cluster(net: libvirt.virNetwork) -> str | None:
    """The cluster whose network this is (None: provision did not make it)."""
    root = ET.fromstring(net.XMLDesc(0))
    for el in root.iter():
        if el.tag == f"{{{NS}}}cluster":
            return el.text
    return None


def ensure_network(inv: Inventory, conn: libvirt.virConnect, say: NodeSay) -> None:
    """The owned network, defined and active."""
    name = owned_network_name(inv.name)
    net = find(conn.networkLookupByName, name)
    if net is None:
        say("*", f"creating libvirt network {name} ({inv.network.subnet}, isolated)")
        with libvirt_call(f"virNetworkDefineXML({name})"):
            net = conn.networkDefineXML(render_network(inv))
    if not net.isActive():
        with libvirt_call(f"virNetworkCreate({name})"):
            net.create()


def destroy_network(inv: Inventory, conn: libvirt.virConnect) -> None:
    """The owned network, if it is there and ours."""
    name = owned_network_name(inv.name)
    net = find(conn.networkLookupByName, name)
    if net is None or network_cluster(net) != inv.name:
        return  # gone, or not ours: never remove it
    if net.isActive():
        with libvirt_call(f"virNetworkDestroy({name})"):
            net.destroy()
    with libvirt_call(f"virNetworkUndefine({name})"):
        net.undefine()


__all__ = [
    "attachment", "destroy_network", "ensure_network", "network_cluster", "on_lab_bridge",
    "owned_bridge_name", "owned_network_name", "render_network",
]
