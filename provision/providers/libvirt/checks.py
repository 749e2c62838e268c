"""What stops the libvirt provider from making a cluster's VMs, found before anything
is defined: libvirt-python, the image recipe, each VM's size for its roles, the
namespace, the URI, the pool, the network or bridge, and names taken by objects that
are not this cluster's."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from provision.errors import BadInput, ProviderError
from provision.inventory import Inventory, LibvirtSettings, Node, Problem
from provision.lab import netns as labnet
from provision.lab import vmimage
from provision.providers.base import problem
from provision.providers.libvirt import network
from provision.providers.libvirt.connection import Connections, attempt, find, is_local, missing
from provision.providers.libvirt.domain import MiB, VMLayout, domain_meta, vm_size

if TYPE_CHECKING:
    import libvirt

# Smallest memory a node can do its job in (kubeadm's preflight wants 1700 MB on a
# control plane; a worker runs the kubelet, containerd, kube-proxy and the CNI).
MIN_MEMORY = {"control-plane": 1700 * MiB, "etcd": 768 * MiB, "worker": 1024 * MiB}
MIN_MEMORY_ANY = 512 * MiB

WHERE = "providers.libvirt"


class Named(Protocol):
    def name(self) -> str: ...


def problems(inv: Inventory, s: LibvirtSettings, nodes: Sequence[Node],
             connections: Connections, *, host: bool = True) -> list[Problem]:
    if host and missing() is not None:
        return [problem(inv, WHERE, "libvirt-python is not installed",
                        hint="pip install 'provision[libvirt]' (needs libvirt-dev, "
                        "pkg-config)")]
    out: list[Problem] = []
    recipe = None
    try:
        recipe = vmimage.find_recipe(s.image)
        if host and not recipe.is_built():
            needs = vmimage.build_requirements()
            if needs:
                out.append(problem(inv, f"{WHERE}.image", f"image {s.image!r} is not "
                                   f"built and building it needs: {', '.join(needs)}"))
    except BadInput as e:
        out.append(problem(inv, f"{WHERE}.image", str(e),
                           hint="add a recipe with kind = \"vm\" under images/"))
    out += node_problems(inv, s, nodes, recipe.size if recipe is not None else 0)
    if not host:
        return out
    if s.netns and not labnet.exists(s.netns):
        out.append(problem(inv, f"{WHERE}.netns", f"network namespace {s.netns!r} does "
                           "not exist", hint=f"create it (`ip netns add {s.netns}`) and "
                           "run libvirtd in it, or remove netns"))
    try:
        conn = connections.get(s.uri)
    except ProviderError as e:
        return out + [problem(inv, f"{WHERE}.uri", f"cannot connect to {s.uri}: {e}",
                              hint="is libvirtd running and the URI right? "
                              "`virsh -c URI list` shows the same error")]
    return out + host_problems(inv, s, conn, nodes)


def node_problems(inv: Inventory, s: LibvirtSettings, nodes: Sequence[Node],
                  image_size: int) -> list[Problem]:
    """Each VM's size, for its roles and the image; its address in the subnet."""
    out = []
    subnet = inv.network.ip_network
    for node in nodes:
        at = f"nodes[{node.name}].machine"
        size = vm_size(s, node)
        memory, disk = size.memory_bytes, size.disk_bytes
        if size.cpus is None or memory is None or disk is None:
            out.append(problem(inv, at, "a libvirt machine needs cpus, memory and disk",
                               hint="set them on the node or in providers.libvirt.defaults"))
            continue
        need = max([MIN_MEMORY_ANY] + [MIN_MEMORY.get(r, 0) for r in node.roles])
        if memory < need:
            roles = "/".join(sorted(node.roles))
            out.append(problem(inv, f"{at}.memory",
                               f"{memory // MiB} MiB is too little for a {roles} VM "
                               f"(needs at least {need // MiB} MiB)",
                               hint=f"memory: {-(-need // MiB)}Mi or more"))
        if disk < image_size:
            out.append(problem(inv, f"{at}.disk", f"{disk // MiB} MiB is smaller than "
                               f"the image ({image_size // MiB} MiB)",
                               hint=f"disk: {image_size >> 30}Gi or more"))
        if ipaddress.ip_address(node.address) not in subnet:
            out.append(problem(inv, f"nodes[{node.name}].address",
                               f"{node.address} is outside the node subnet {subnet}"))
    return out


def host_problems(inv: Inventory, s: LibvirtSettings, conn: libvirt.virConnect,
                  nodes: Sequence[Node]) -> list[Problem]:
    """The pool, the network or bridge, and names taken on the libvirt host."""
    out: list[Problem] = []
    pool = attempt(conn.storagePoolLookupByName, s.pool)
    if isinstance(pool, str):
        pools = _names(conn.listAllStoragePools)
        out.append(problem(inv, f"{WHERE}.pool", f"unknown storage pool {s.pool!r} on "
                           f"{s.uri}: {pool}", hint=f"pools there: {', '.join(pools) or 'none'}"))
    elif not pool.isActive():
        out.append(problem(inv, f"{WHERE}.pool", f"storage pool {s.pool!r} on {s.uri} "
                           "is not active", hint=f"virsh pool-start {s.pool}"))
    if s.network:
        net = attempt(conn.networkLookupByName, s.network)
        if isinstance(net, str):
            nets = _names(conn.listAllNetworks)
            out.append(problem(inv, f"{WHERE}.network", f"unknown libvirt network "
                               f"{s.network!r} on {s.uri}: {net}",
                               hint=f"networks there: {', '.join(nets) or 'none'}; or "
                               "remove network to let provision create one"))
        elif not net.isActive():
            out.append(problem(inv, f"{WHERE}.network", f"libvirt network "
                               f"{s.network!r} on {s.uri} is not active",
                               hint=f"virsh net-start {s.network}"))
    elif s.bridge:
        if is_local(s.uri) and not network.on_lab_bridge(inv, s):
            present = (labnet.link_exists(s.netns, s.bridge) if s.netns
                       else Path(f"/sys/class/net/{s.bridge}/bridge").is_dir())
            if not present:
                out.append(problem(inv, f"{WHERE}.bridge", f"no bridge {s.bridge!r}"
                                   + (f" in network namespace {s.netns}" if s.netns
                                      else " on this host")))
    else:
        name = network.owned_network_name(inv.name)
        owned = find(conn.networkLookupByName, name)
        if owned is not None and network.network_cluster(owned) != inv.name:
            out.append(problem(inv, f"{WHERE}.network", f"a libvirt network {name!r} "
                               "exists and was not created by provision for this "
                               "cluster", hint="set network: to use it, or remove it"))
    for node in nodes:
        lay = VMLayout(inv.name, node.name)
        dom = find(conn.lookupByName, lay.domain)
        if dom is not None and domain_meta(dom).get("cluster") != inv.name:
            out.append(problem(inv, f"nodes[{node.name}].name", f"a libvirt domain "
                               f"{lay.domain!r} exists and is not this cluster's",
                               hint="rename the cluster or remove that domain"))
    return out


def _names(lister: Callable[[int], Sequence[Named]]) -> list[str]:
    try:
        return sorted(x.name() for x in lister(0))
    except Exception:  # noqa: BLE001 - only for a hint
        return []


__all__ = ["MIN_MEMORY", "MIN_MEMORY_ANY", "host_problems", "node_problems", "problems"]
