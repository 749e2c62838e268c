"""One lab machine's pieces: assembled before nspawn boots it (disk, identity, link,
cgroups), taken apart once it stopped (nothing is left but its directory)."""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provision.errors import ProviderError
from provision.inventory import Inventory, Node
from provision.lab import cgroups, mounts, netns, nspawn, procs
from provision.paths import ClusterPaths, write_secret
from provision.providers.local.layout import NodeLayout
from provision.providers.machine import set_known_host


def assemble(inv: Inventory, node: Node, lay: NodeLayout, rootfs: Path) -> None:
    """Everything the node boots with: its record, overlay disk on the image it was
    first made on, identity, eth0 on the lab bridge, cgroups with its limits."""
    lay.dir.mkdir(parents=True, exist_ok=True)
    record = lay.record()
    lower = Path(record.get("lower", rootfs))
    if not lower.is_dir():
        raise ProviderError(
            f"the image {lower} that {node.name}'s disk was made on is gone from the "
            f"cache; `provision destroy` the node (its disk is lost) and create it again")
    record.update(cluster=inv.name, node=node.name, address=node.address,
                  machine=lay.machine, netns=lay.netns, veth=lay.veth, cgroup=lay.cgroup,
                  lower=str(lower), lab=lay.lab)
    lay.write_record(record)
    lay.containerd.mkdir(exist_ok=True)
    lay.kubelet.mkdir(exist_ok=True)
    mounts.mount_overlay(lower, lay.upper, lay.work, lay.root)
    write_identity(inv, node, lay)
    mac = node.mac or netns.node_mac(inv.name, node.name)
    netns.ensure_node_link(lay.lab, lay.netns, lay.veth, mac)
    netns.forget_neighbor(lay.lab, node.address)
    cgroups.create(lay.cgroup, cpus=node.machine.cpus, memory=node.machine.memory_bytes)


def write_identity(inv: Inventory, node: Node, lay: NodeLayout) -> None:
    """The node's identity and access, written into its disk before it boots."""
    paths = ClusterPaths.for_cluster(inv.name)
    etc = lay.root / "etc"
    hostkey = etc / "ssh" / "ssh_host_ed25519_key"
    if not hostkey.exists():  # first boot: a fresh identity
        key = Ed25519PrivateKey.generate()
        write_secret(hostkey, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        lay.host_key_pub.write_text(f"{pub} root@{node.name}\n")
        (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    record_host_key(paths, node, lay)

    (etc / "hostname").write_text(f"{node.name}\n")
    hosts = etc / "hosts"
    # Only a fresh machine gets this minimal file: the hosts stage owns /etc/hosts
    # afterwards (every node of the cluster) and a restart must not undo it.
    current = hosts.read_text().splitlines() if hosts.exists() else []
    if not any(line.split()[:2] == [node.address, node.name] for line in current):
        hosts.write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{node.address}\t{node.name}\n")
    network = etc / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-eth0.network").write_text(
        "# Written by provision: the node's static address from the inventory.\n"
        "[Match]\nName=eth0\n\n"
        f"[Network]\nAddress={node.address}/{inv.network.ip_network.prefixlen}\n"
        f"Gateway={inv.network.gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\nKeepConfiguration=static\n")
    ssh_dir = lay.root / "root" / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    write_secret(ssh_dir / "authorized_keys", paths.ssh_public_key.read_text())


def record_host_key(paths: ClusterPaths, node: Node, lay: NodeLayout) -> None:
    """known_hosts gets the key we generated (read from the node's disk, never from
    the network), keyed by the node's address."""
    pub = lay.host_key_pub.read_text().split()
    set_known_host(paths.known_hosts, node.address, f"{pub[0]} {pub[1]}")


def machine_spec(lay: NodeLayout, node: Node) -> nspawn.LaunchSpec:
    return nspawn.LaunchSpec(
        name=lay.machine, root=lay.root, netns=lay.netns, hostname=node.name,
        pidfile=lay.pidfile, console_log=lay.console_log,
        cgroup_procs=[p / "cgroup.procs" for p in cgroups.group_paths(lay.cgroup)],
        binds=[(lay.containerd, "/var/lib/containerd"), (lay.kubelet, "/var/lib/kubelet")],
    )


def take_apart(lay: NodeLayout, timeout: float) -> None:
    """Stop the machine (clean poweroff, SIGKILL after ``timeout``) and remove every
    piece of it but its directory: process, cgroups, mounts, namespace, veth."""
    pid = lay.pid()
    if pid is not None:
        nspawn.terminate(pid, lay.machine, timeout)
    lay.pidfile.unlink(missing_ok=True)
    if cgroups.exists(lay.cgroup):
        cgroups.remove(lay.cgroup)
    mounts.umount_all_under(lay.root)
    nspawn.remove_propagate_dir(lay.machine)
    procs.kill_all(netns.pids_in(lay.netns))
    netns.delete_link(lay.lab, lay.veth)
    netns.delete(lay.netns)


__all__ = ["assemble", "machine_spec", "record_host_key", "take_apart", "write_identity"]
