"""The names provision gives to things outside its state directory, in one place.

Everything provision makes on a host (network namespaces, nspawn machines, cgroups,
libvirt domains, volumes and networks, SSH control sockets) carries the prefix
``pv-``, so a crashed run's leftovers can be found by name alone
(provision/lab/cleanup.py) and nothing of anyone else's is ever touched.
"""

from __future__ import annotations

import hashlib

PREFIX = "pv-"


def cluster_object(cluster: str) -> str:
    """The cluster's own object: its lab namespace, its libvirt network."""
    return f"{PREFIX}{cluster}"


def node_object(cluster: str, node: str) -> str:
    """A node's machine: nspawn machine, node namespace, cgroup, libvirt domain."""
    return f"{PREFIX}{cluster}-{node}"


def node_objects_prefix(cluster: str) -> str:
    """What the name of every node object of the cluster starts with."""
    return node_object(cluster, "")


def lab_netns(cluster: str) -> str:
    """The lab namespace that holds the cluster's bridge and provisioner services."""
    return cluster_object(cluster)


def short_tag(text: str, length: int = 10) -> str:
    """A stable short hash for names with a length limit (interfaces: 15 characters)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


__all__ = ["PREFIX", "cluster_object", "lab_netns", "node_object", "node_objects_prefix",
           "short_tag"]
