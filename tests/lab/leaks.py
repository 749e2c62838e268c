"""Leak check: nothing of a lab cluster may be left on the box after destroy."""

from __future__ import annotations

import subprocess

from provision.lab import netns
from provision.lab.cleanup import leftovers


def find_leaks(cluster: str, nodes: list[str]) -> list[str]:
    found = leftovers(cluster)
    # veths: the lab ends live in the lab namespace (gone with it), the node ends are
    # eth0 in node namespaces; none may have fallen back into the host's namespace.
    host_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                                text=True).stdout
    for node in nodes:
        veth = netns.veth_name(cluster, node)
        if f" {veth}@" in host_links or f" {veth}:" in host_links:
            found.append(f"veth: {veth} in the host namespace")
    return found


def assert_no_leaks(cluster: str, nodes: list[str]) -> None:
    found = find_leaks(cluster, nodes)
    assert not found, "left behind:\n  " + "\n  ".join(found)
