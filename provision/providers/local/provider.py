"""The local provider: lab machines on this host, their lifecycle over ``layout``
(names and paths), ``pieces`` (what a machine is made of), ``forward`` (the API
forwarder) and ``host`` (the box's kernel limits). See the package's docstring."""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from provision.errors import BadInput, ProviderError
from provision.executors.ssh import SSHEndpoint, close_masters, ensure_cluster_keypair
from provision.inventory import Inventory, LocalSettings, Node, Problem
from provision.lab import image, mounts, netns, nspawn, nsproxy, procs
from provision.names import lab_netns, node_objects_prefix
from provision.paths import ClusterPaths
from provision.providers import services
from provision.providers.base import (
    Capability,
    Machine,
    MachineState,
    NodeSay,
    Provider,
    problem,
    raise_if_invalid,
    say_nothing,
)
from provision.providers.local import forward, host, pieces
from provision.providers.local.layout import NodeLayout, recorded_machines
from provision.providers.machine import (
    SSH_PORT,
    Login,
    SSHWait,
    connector,
    ensure_lab_bridge,
    set_known_host,
)


def settings(inv: Inventory) -> LocalSettings:
    return inv.providers.local or LocalSettings()


class LocalProvider(Provider):
    name = "local"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({
        Capability.CREATE, Capability.POWER, Capability.SERVICES, Capability.API_FORWARD})
    ssh_timeout = 120.0  # seconds from nspawn start to sshd answering
    stop_timeout = 30.0  # clean poweroff before SIGKILL

    def layout(self, inv: Inventory, name: str) -> NodeLayout:
        return NodeLayout.of(inv.name, name)

    # --- every provider ----------------------------------------------------------------

    def validate(self, inv: Inventory, nodes: Sequence[Node], *,
                 host: bool = True) -> list[Problem]:
        out: list[Problem] = []
        if host and os.geteuid() != 0:
            out.append(problem(inv, "providers.local", "lab machines need root "
                               "(network namespaces, mounts, cgroups, systemd-nspawn)",
                               hint="run provision as root"))
        for tool, pkg in (("systemd-nspawn", "systemd-container"), ("ip", "iproute2")):
            if host and not shutil.which(tool):
                out.append(problem(inv, "providers.local", f"{tool} is not installed",
                                   hint=f"apt-get install {pkg}"))
        img = settings(inv).image
        try:
            recipe = image.find_recipe(img)
            if host and not recipe.is_built() and not (shutil.which("debootstrap")
                                              or os.path.exists("/usr/sbin/debootstrap")):
                out.append(problem(inv, "providers.local.image",
                                   f"image {img!r} is not built and debootstrap is missing",
                                   hint="apt-get install debootstrap"))
        except BadInput as e:
            out.append(problem(inv, "providers.local.image", str(e),
                               hint="add a recipe under images/ or use debian-12"))
        try:
            subnet = inv.network.ip_network
            gateway = ipaddress.ip_address(str(inv.network.gateway))
        except ValueError as e:
            return out + [problem(inv, "network.subnet", f"bad node subnet: {e}")]
        if gateway not in subnet:
            out.append(problem(inv, "network.gateway", f"gateway {gateway} is outside {subnet}"))
        running = nspawn.find_machines(node_objects_prefix(inv.name)) if host else {}
        for n in nodes:
            where = f"nodes[{n.name}]"
            try:
                addr = ipaddress.ip_address(n.address)
            except ValueError:
                out.append(problem(inv, f"{where}.address", f"not an address: {n.address}"))
                continue
            if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
                out.append(problem(inv, f"{where}.address",
                                   f"{addr} is not a host address of the lab subnet {subnet}",
                                   hint=f"pick a free address in {subnet}"))
            elif addr == gateway:
                out.append(problem(inv, f"{where}.address",
                                   f"{addr} is the lab gateway (the provisioner's side)"))
            lay = self.layout(inv, n.name)
            pid = running.get(lay.machine)
            if pid is not None and pid != lay.pid():
                out.append(problem(inv, f"{where}.name",
                                   f"a systemd-nspawn machine named {lay.machine} is already "
                                   f"running (pid {pid}) and is not this cluster's",
                                   hint="rename the cluster or stop that machine"))
            elif host and not lay.meta.exists() and netns.exists(lay.netns):
                out.append(problem(inv, f"{where}.name",
                                   f"network namespace {lay.netns} exists and is not this "
                                   "cluster's", hint=f"left from a crashed run? "
                                   f"`ip netns delete {lay.netns}`"))
        return out

    def ensure(self, inv: Inventory, nodes: Sequence[Node], say: NodeSay) -> set[str]:
        raise_if_invalid(self, inv, nodes)
        if not nodes:
            return set()

        def say_all(message: str) -> None:
            for n in nodes:
                say(n.name, message)

        rootfs = image.ensure_image(settings(inv).image, say_all)
        host.raise_inotify_limits(say_all)
        paths = ClusterPaths.for_cluster(inv.name)
        ensure_cluster_keypair(paths)
        ensure_lab_bridge(inv)
        started: set[str] = set()
        for n in nodes:
            lay = self.layout(inv, n.name)
            if lay.pid() is not None:
                say(n.name, "running, reused")
                pieces.record_host_key(paths, n, lay)
                continue
            say(n.name, "starting" if lay.meta.exists() else "creating")
            pieces.assemble(inv, n, lay, rootfs)
            nspawn.launch(pieces.machine_spec(lay, n))
            started.add(n.name)
        self._ssh_wait(inv).run(nodes, say)
        return started

    def observe(self, inv: Inventory, names: Sequence[str]) -> dict[str, MachineState]:
        out = {}
        for name in names:
            lay = self.layout(inv, name)
            if lay.pid() is not None:
                out[name] = MachineState.RUNNING
            elif lay.meta.exists():
                out[name] = MachineState.STOPPED
            else:
                out[name] = MachineState.MISSING
        return out

    def destroy(self, inv: Inventory, names: Sequence[str], *, wipe: bool = False) -> None:
        close_masters(ClusterPaths.for_cluster(inv.name), list(names))
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda name: self._destroy_node(inv, name), names))
        # the lab goes with the last lab machine; the machines directory also holds other
        # providers' state (pxe/, service pid files), which never keeps the lab alive
        if not recorded_machines(inv.name):
            self._destroy_lab(inv)

    def ssh_endpoint(self, inv: Inventory, name: str, address: str) -> SSHEndpoint:
        return SSHEndpoint(address=address, port=SSH_PORT,
                           proxy_command=nsproxy.proxy_command(lab_netns(inv.name)))

    # --- capabilities ----------------------------------------------------------------------

    def machines(self, inv: Inventory) -> dict[str, Machine]:
        """Every lab machine this cluster has on disk, in the inventory or not any more,
        with the address it was created with: a node removed from the inventory still
        has a machine to drain, reset and release, and the inventory no longer says
        where it is."""
        return {name: Machine(name, address, self.name)
                for name, address in recorded_machines(inv.name).items()}

    def start(self, inv: Inventory, node: Node) -> None:
        if not self.layout(inv, node.name).meta.exists():
            raise ProviderError(f"lab machine {node.name} does not exist: run `provision up`")
        self.ensure(inv, [node], say_nothing)

    def stop(self, inv: Inventory, node: Node) -> None:
        close_masters(ClusterPaths.for_cluster(inv.name), [node.name])
        pieces.take_apart(self.layout(inv, node.name), self.stop_timeout)

    def spawn_service(self, inv: Inventory, name: str, argv: list[str]) -> int:
        """Run a provisioner-side service (the artifact mirror) detached inside the lab
        namespace, where nodes reach it on the gateway address (providers/services.py:
        reused while its arguments stay the same); destroy stops it."""
        lab = ensure_lab_bridge(inv)
        return services.spawn(ClusterPaths.for_cluster(inv.name).machines_dir, name, argv,
                              prefix=["ip", "netns", "exec", lab])

    def service_netns(self, inv: Inventory) -> str | None:
        return lab_netns(inv.name)

    def forward_api(self, inv: Inventory) -> int:
        """127.0.0.1:<apiForwardPort> on the host -> the API virtual IP in the lab.
        Idempotent; returns the loopback port. Stopped by destroy."""
        return forward.forward(lab_netns(inv.name), settings(inv).api_forward_port,
                               inv.control_plane.virtual_ip, inv.control_plane.port,
                               ClusterPaths.for_cluster(inv.name).machines_dir)

    # --- internals -----------------------------------------------------------------------

    def _ssh_wait(self, inv: Inventory) -> SSHWait:
        def gone(n: Node) -> str | None:
            return None if self.layout(inv, n.name).pid() is not None else "the machine exited"

        return SSHWait(
            what="lab machines", login=Login.cluster(inv),
            connect=connector(lab_netns(inv.name)), gone=gone,
            look=lambda n: f"; see {self.layout(inv, n.name).console_log}",
            timeout=self.ssh_timeout)

    def _destroy_node(self, inv: Inventory, name: str) -> None:
        lay = self.layout(inv, name)
        address = lay.record().get("address")
        if address is None and name in {n.name for n in inv.nodes}:
            address = inv.node(name).address
        pieces.take_apart(lay, timeout=10)
        if lay.dir.exists():
            mounts.remove_tree(lay.dir)
        if address:
            set_known_host(ClusterPaths.for_cluster(inv.name).known_hosts, address, None)

    def _destroy_lab(self, inv: Inventory) -> None:
        """The cluster's lab namespace and everything running in it (forwarders, mirrors)."""
        machines_dir = ClusterPaths.for_cluster(inv.name).machines_dir
        if machines_dir.is_dir():
            forward.stop_all(machines_dir)
            for service_file in machines_dir.glob("service-*"):
                service_file.unlink(missing_ok=True)  # its process is in the lab: killed below
        lab = lab_netns(inv.name)
        procs.kill_all(netns.pids_in(lab))
        netns.delete(lab)
        if machines_dir.is_dir() and not any(machines_dir.iterdir()):
            machines_dir.rmdir()


__all__ = ["LocalProvider", "settings"]
