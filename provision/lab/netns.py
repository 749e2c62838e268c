"""Network namespaces, the lab bridge and node veths (iproute2).

Nothing here touches the host's own network namespace: the bridge lives in the lab
namespace, and each veth is created directly with one end in the lab namespace and
the other (named eth0) in the node's namespace.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from provision import names

NETNS_DIR = Path("/run/netns")
BRIDGE = "br-lab"


class NetnsError(OSError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def listing() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def ensure(name: str) -> None:
    if not exists(name):
        _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def delete(name: str) -> None:
    if exists(name):
        _ip("netns", "delete", name, check=False)
        if exists(name):  # a stale bind mount without a namespace behind it
            subprocess.run(["umount", "-l", str(NETNS_DIR / name)], capture_output=True)
            (NETNS_DIR / name).unlink(missing_ok=True)


def inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def veth_name(cluster: str, node: str) -> str:
    """The lab-side end of a node's veth: unique per (cluster, node), 13 chars."""
    return "pv" + names.short_tag(f"{cluster}/{node}", 11)


def link_exists(netns: str, link: str) -> bool:
    return _ip("-n", netns, "link", "show", link, check=False).returncode == 0


def ensure_bridge(lab: str, gateway_cidr: str) -> None:
    """The lab namespace with br-lab holding the gateway address (idempotent)."""
    ensure(lab)
    if not link_exists(lab, BRIDGE):
        _ip("-n", lab, "link", "add", BRIDGE, "type", "bridge")
    addrs = _ip("-n", lab, "-o", "addr", "show", "dev", BRIDGE).stdout
    if f" {gateway_cidr} " not in addrs:
        _ip("-n", lab, "addr", "add", gateway_cidr, "dev", BRIDGE)
    _ip("-n", lab, "link", "set", BRIDGE, "up")


def node_mac(cluster: str, node: str) -> str:
    """A stable, locally administered MAC for a node's eth0: a restarted node keeps it,
    so the lab's ARP cache stays right (a new random MAC costs ~30 s of stale ARP)."""
    h = hashlib.sha256(f"mac/{cluster}/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))


def ensure_node_link(lab: str, node_ns: str, veth: str, mac: str) -> None:
    """Node namespace holding eth0, a veth whose peer is on br-lab. The node configures
    its address and route itself at boot (systemd-networkd), like a real server."""
    ensure(node_ns)
    if not link_exists(node_ns, "eth0"):
        if link_exists(lab, veth):  # half of an earlier attempt
            _ip("-n", lab, "link", "delete", veth, check=False)
        _ip("-n", lab, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
            "netns", node_ns, "address", mac)
    _ip("-n", lab, "link", "set", veth, "master", BRIDGE, "up")


def forget_neighbor(netns: str, address: str) -> None:
    """Drop the lab's ARP entry for an address (its MAC may have changed)."""
    _ip("-n", netns, "neigh", "flush", "to", address, check=False)


def delete_link(netns: str, link: str) -> None:
    if exists(netns) and link_exists(netns, link):
        _ip("-n", netns, "link", "delete", link, check=False)


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (to stop them before deleting it)."""
    ino = inode(name)
    if ino is None:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                out.append(int(entry))
        except OSError:
            continue
    return out
