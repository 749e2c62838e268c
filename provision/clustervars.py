"""The variables every role and every check sees, derived from the inventory.

One function builds them so that Ansible (generated inventory), testinfra (check
context) and the stage input hash can never disagree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from provision.inventory import Inventory

GROUPS = {
    "control_plane": "control-plane",
    "etcd": "etcd",
    "workers": "worker",
}


def groups(inv: Inventory) -> dict[str, list[str]]:
    out = {group: [n.name for n in inv.nodes_with_role(role)] for group, role in GROUPS.items()}
    # etcd members are whatever the inventory says they are (co-located or dedicated)
    out["etcd"] = [n.name for n in inv.etcd_members]
    out["kube_nodes"] = [n.name for n in inv.nodes
                         if {"control-plane", "worker"} & set(n.roles)]
    return out


def host_vars(name: str, address: str, roles: Iterable[str]) -> dict[str, object]:
    """A node's own variables (a removed node's machine has no roles any more)."""
    return {"node_name": name, "node_address": address, "node_roles": sorted(roles)}


def global_vars(inv: Inventory, services: dict[str, str],
                files: dict[str, str] | None = None) -> dict[str, object]:
    """``services``: where the artifact mirror and registry answer for the nodes;
    ``files``: what the mirror serves under /files/<version>/ -> its sha256."""
    k8s = inv.kubernetes
    subnet = ipaddress.ip_network(str(inv.network.subnet))
    return {
        "provision_cluster_name": inv.name,
        "provision_kubernetes_version": k8s.version,
        "provision_pod_cidr": str(k8s.pod_cidr),
        "provision_service_cidr": str(k8s.service_cidr),
        "provision_cluster_domain": k8s.cluster_domain,
        "provision_cni": k8s.cni,
        "provision_api_vip": str(inv.control_plane.virtual_ip),
        "provision_api_port": int(inv.control_plane.port),
        "provision_node_subnet": str(subnet),
        "provision_node_prefix": subnet.prefixlen,
        "provision_gateway": str(inv.network.gateway),
        "provision_artifact_source": inv.artifacts.source,
        "provision_mirror_url": services.get("mirror_url", ""),
        "provision_registry": services.get("registry", ""),
        # a node checks every file it downloads from the mirror against these, which
        # reach it over SSH: a file replaced on the mirror is refused, not installed
        "provision_file_sha256": dict(files or {}),
        "provision_pki_dir": services.get("pki_dir", ""),
        "provision_nodes": [
            {"name": n.name, "address": str(n.address), "roles": sorted(n.roles)}
            for n in inv.nodes
        ],
    }
