"""Semantic checks: what the schema alone cannot see (relations between fields).

They run on whatever sections passed the schema, so one broken node does not hide a
problem elsewhere; checks that need the whole node list (no control plane, etcd
count) run only when every node and pool is valid.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from provision.inventory.model import (
    Bmc,
    ControlPlaneSpec,
    EtcdSpec,
    KubernetesSpec,
    MachineSpec,
    NetworkSpec,
    NodeSpec,
    PoolSpec,
    ProvidersSpec,
)
from provision.inventory.problems import Problem, Severity, format_path
from provision.inventory.yamlsource import Loc, Positions
from provision.releases import supported_kubernetes_versions

MAX_NODES = 5000  # Kubernetes' own tested limit for one cluster


@dataclass
class Sections:
    """The parts of the inventory that passed the schema (None: invalid, not checked)."""

    kubernetes: KubernetesSpec | None = None
    control_plane: ControlPlaneSpec | None = None
    etcd: EtcdSpec | None = None
    network: NetworkSpec | None = None
    providers: ProvidersSpec | None = None
    nodes: list[tuple[int, NodeSpec]] = field(default_factory=list)
    pools: list[tuple[int, PoolSpec]] = field(default_factory=list)
    complete: bool = True  # every node and every pool is valid


@dataclass
class Placed:
    """One concrete node and where its fields are written in the file."""

    name: str
    roles: list[str]
    provider: str
    address: int | None  # None: beyond 255.255.255.255 (a pool that runs off the end)
    mac: str | None
    bmc: Bmc | None
    machine: MachineSpec
    origin: Loc  # ("nodes", i) or ("pools", j)
    pool: PoolSpec | None = None
    index: int = 0  # number in the pool

    @property
    def label(self) -> str:
        return f"node '{self.name}' ({format_path(self.origin)})"

    def loc(self, key: str) -> Loc:
        """Where a node field is written; pool nodes point at the pool's field."""
        if self.pool is None:
            return (*self.origin, key)
        return (*self.origin, {"name": "name", "address": "firstAddress"}.get(key, key))


class Checker:
    def __init__(self, sections: Sections, positions: Positions, file: str) -> None:
        self.s = sections
        self.pos = positions
        self.file = file
        self.problems: list[tuple[Problem, Loc]] = []
        self._said: set[tuple[Loc, str]] = set()

    def add(
        self,
        loc: Loc,
        message: str,
        hint: str | None = None,
        severity: Severity = "error",
        *,
        once: str | None = None,
        at_key: bool = False,
    ) -> None:
        """Record a problem; `once` dedups repeats of one kind at one place (pools)."""
        if once is not None:
            if (loc, once) in self._said:
                return
            self._said.add((loc, once))
        line, col = self.pos.key(loc) if at_key else self.pos.value(loc)
        self.problems.append(
            (Problem(self.file, line, col, format_path(loc), message, hint, severity), loc)
        )

    def default_note(self, loc: Loc) -> str:
        return "" if self.pos.has(loc) else " (the default)"

    # -- nodes --------------------------------------------------------------------

    def placed(self) -> list[Placed]:
        out = [
            Placed(
                n.name,
                list(n.roles),
                n.provider,
                int(ipaddress.IPv4Address(n.address)),
                n.mac,
                n.bmc,
                n.machine or MachineSpec(),
                ("nodes", i),
            )
            for i, n in self.s.nodes
        ]
        for j, p in self.s.pools:
            first = int(ipaddress.IPv4Address(p.first_address))
            for k in range(1, p.count + 1):
                addr = first + k - 1
                out.append(
                    Placed(
                        p.node_name(k),
                        list(p.roles),
                        p.provider,
                        addr if addr < 2**32 else None,
                        p.macs[k - 1] if k <= len(p.macs) else None,
                        p.bmcs[k - 1] if k <= len(p.bmcs) else None,
                        p.template,
                        ("pools", j),
                        p,
                        k,
                    )
                )
        return out

    def run(self) -> list[tuple[Problem, Loc]]:
        self.kubernetes()
        self.network()
        if self.too_many_nodes():
            return self.problems
        nodes = self.placed()
        self.virtual_ip(nodes)
        self.pool_names()
        self.names(nodes)
        self.addresses(nodes)
        self.macs_and_bmcs(nodes)
        self.providers(nodes)
        self.roles(nodes)
        if self.s.complete:
            self.membership(nodes)
        return self.problems

    def too_many_nodes(self) -> bool:
        """More nodes than a cluster holds: the per-node checks would only take long."""
        total = len(self.s.nodes) + sum(p.count for _, p in self.s.pools)
        if total <= MAX_NODES:
            return False
        self.add(
            ("pools",) if self.s.pools else ("nodes",),
            f"{total} nodes: a cluster holds at most {MAX_NODES}",
            "split the machines into several clusters",
        )
        return True

    # -- cluster-wide settings ----------------------------------------------------

    def kubernetes(self) -> None:
        k = self.s.kubernetes
        if k is None:
            return
        supported = supported_kubernetes_versions()
        if k.version not in supported:
            self.add(
                ("kubernetes", "version"),
                f"Kubernetes {k.version} is not supported",
                "use one of " + ", ".join(supported),
            )
        pod, svc = ipaddress.IPv4Network(k.pod_cidr), ipaddress.IPv4Network(k.service_cidr)
        if pod.overlaps(svc):
            loc: Loc = ("kubernetes", "serviceCIDR")
            self.add(
                loc,
                f"service network {svc}{self.default_note(loc)} overlaps the pod network {pod}",
                "pick networks that do not overlap, like podCIDR 10.244.0.0/16 and "
                "serviceCIDR 10.96.0.0/12",
            )
        if self.s.network is None:
            return
        subnet = self.s.network.ip_network
        for key, net in (("podCIDR", pod), ("serviceCIDR", svc)):
            if net.overlaps(subnet):
                loc = ("kubernetes", key)
                what = "pod" if key == "podCIDR" else "service"
                self.add(
                    loc,
                    f"{what} network {net}{self.default_note(loc)} overlaps the node subnet "
                    f"{subnet}",
                    f"set kubernetes.{key} to a range outside {subnet}",
                )

    def network(self) -> None:
        n = self.s.network
        if n is None:
            return
        if self.pos.has(("network", "gateway")) and n.gateway is not None:
            # (the default gateway is the subnet's first host: always fine)
            gw = ipaddress.IPv4Address(n.gateway)
            self._in_subnet(("network", "gateway"), f"gateway {gw}", int(gw))
        p = self.s.providers
        if p is not None and p.pxe is not None and p.pxe.server_address is not None:
            server = ipaddress.IPv4Address(p.pxe.server_address)
            loc: Loc = ("providers", "pxe", "serverAddress")
            if self._in_subnet(loc, f"PXE server address {server}", int(server)):
                cp = self.s.control_plane
                if cp is not None and cp.virtual_ip == str(server):
                    self.add(
                        loc,
                        f"PXE server address {server} is the API virtual IP",
                        "give the provisioner another address of the subnet",
                    )

    def _in_subnet(self, loc: Loc, subject: str, addr: int, *, once: str | None = None) -> bool:
        """Errors for an address outside the subnet or on its network/broadcast address."""
        assert self.s.network is not None
        subnet = self.s.network.ip_network
        if not (int(subnet.network_address) <= addr <= int(subnet.broadcast_address)):
            self.add(
                loc,
                f"{subject} is outside the node subnet {subnet}",
                f"use an address in {subnet}, or change network.subnet",
                once=once and once + "/outside",
            )
            return False
        special = {
            int(subnet.network_address): "the network address",
            int(subnet.broadcast_address): "the broadcast address",
        }
        if addr in special:
            self.add(
                loc,
                f"{subject} is {special[addr]} of {subnet}",
                f"use a host address of {subnet}",
                once=once and once + "/special",
            )
            return False
        return True

    def _gateway(self) -> int | None:
        n = self.s.network
        return int(ipaddress.IPv4Address(n.gateway)) if n and n.gateway else None

    def virtual_ip(self, nodes: list[Placed]) -> None:
        cp, n = self.s.control_plane, self.s.network
        if cp is None or n is None:
            return
        loc: Loc = ("controlPlane", "virtualIP")
        vip = int(ipaddress.IPv4Address(cp.virtual_ip))
        if not self._in_subnet(loc, f"virtual IP {cp.virtual_ip}", vip):
            return
        if vip == self._gateway():
            self.add(
                loc,
                f"virtual IP {cp.virtual_ip} is the gateway's address",
                "use an unused address of the subnet for the virtual IP",
            )
        for node in nodes:
            if node.address == vip:
                self.add(
                    loc,
                    f"virtual IP {cp.virtual_ip} is the address of {node.label}",
                    "use an address no node has for the virtual IP",
                )
                break

    # -- names, addresses, MACs, BMCs ---------------------------------------------

    def pool_names(self) -> None:
        seen: dict[str, int] = {}
        for j, p in self.s.pools:
            if p.name in seen:
                self.add(
                    ("pools", j, "name"),
                    f"pool name '{p.name}' is already used by pools[{seen[p.name]}]",
                    "give each pool its own name",
                )
            else:
                seen[p.name] = j
        pools = dict(self.s.pools)
        for i, n in self.s.nodes:
            # worker-5 beside a pool `worker` of count 2: fine today, a clash once the
            # count reaches 5 (a count raise must never rename or collide)
            pool_name, _, number = n.name.rpartition("-")
            if pool_name in seen and number.isdigit() and not number.startswith("0"):
                pool = pools[seen[pool_name]]
                if int(number) > pool.count:
                    self.add(
                        ("nodes", i, "name"),
                        f"node name '{n.name}' is what pool '{pool_name}' will call its node "
                        f"{number} when its count is raised",
                        "rename the node, or the pool",
                        "warning",
                    )
        for j, p in self.s.pools:
            longest = p.node_name(max(p.count, 1))
            if len(longest) > 63:
                self.add(
                    ("pools", j, "name"),
                    f"node name '{longest}' is longer than 63 characters",
                    "shorten the pool name",
                )

    def _first_seen(
        self,
        nodes: list[Placed],
        key: Callable[[Placed], object],
        report: Callable[[Placed, Placed], None],
    ) -> None:
        first: dict[object, Placed] = {}
        for node in nodes:
            k = key(node)
            if k is None:
                continue
            if k in first:
                report(first[k], node)
            else:
                first[k] = node

    def names(self, nodes: list[Placed]) -> None:
        def report(old: Placed, new: Placed) -> None:
            if new.pool is not None:
                if old.pool is not None and old.pool.name == new.pool.name:
                    return  # a duplicate pool name: already reported
                self.add(
                    new.loc("name"),
                    f"pool '{new.pool.name}' expands to '{new.name}', already the name of "
                    f"{old.label}",
                    "rename the pool or that node",
                    once="name",
                )
            else:
                self.add(
                    new.loc("name"),
                    f"node name '{new.name}' is already used by {old.label}",
                    "give every node its own name",
                )

        self._first_seen(nodes, lambda n: n.name, report)

    def addresses(self, nodes: list[Placed]) -> None:
        if self.s.network is not None:
            gateway = self._gateway()
            for node in nodes:
                loc = node.loc("address")
                shown = ipaddress.IPv4Address(node.address) if node.address is not None else ""
                what = (
                    f"{shown}, the address pool '{node.pool.name}' gives '{node.name}',"
                    if node.pool
                    else f"node address {shown}"
                )
                once = "pool" if node.pool else None
                if node.address is None:
                    pool = node.pool.name if node.pool else ""
                    self.add(
                        loc,
                        f"pool '{pool}' runs past the last IPv4 address",
                        "lower count or firstAddress",
                        once="overflow",
                    )
                    continue
                if not self._in_subnet(loc, what, node.address, once=once):
                    continue
                if node.address == gateway:
                    self.add(
                        loc,
                        f"{what} is the gateway's address",
                        "use another address, or set network.gateway",
                        once=once and "gateway",
                    )

        def report(old: Placed, new: Placed) -> None:
            shown = ipaddress.IPv4Address(new.address or 0)
            if new.pool is not None:
                if old.pool is not None and old.pool is new.pool:
                    return
                self.add(
                    new.loc("address"),
                    f"pool '{new.pool.name}' gives '{new.name}' the address {shown}, already "
                    f"used by {old.label}",
                    "move firstAddress so the pool's range is free, or lower count",
                    once="address",
                )
            else:
                self.add(
                    new.loc("address"),
                    f"address {shown} is already used by {old.label}",
                    "give every node its own address",
                )

        self._first_seen(nodes, lambda n: n.address, report)

    def macs_and_bmcs(self, nodes: list[Placed]) -> None:
        def mac_loc(node: Placed) -> Loc:
            if node.pool is None:
                return node.loc("mac")
            return (*node.origin, "macs", node.index - 1)

        def report_mac(old: Placed, new: Placed) -> None:
            self.add(
                mac_loc(new),
                f"MAC address {new.mac} is already used by {old.label}",
                "every machine has its own MAC address: check for a copy-paste",
            )

        self._first_seen(nodes, lambda n: n.mac, report_mac)

        def bmc_loc(node: Placed) -> Loc:
            if node.pool is None:
                return (*node.origin, "bmc", "address")
            return (*node.origin, "bmcs", node.index - 1, "address")

        def report_bmc(old: Placed, new: Placed) -> None:
            self.add(
                bmc_loc(new),
                f"BMC {new.bmc.address if new.bmc else ''} already manages {old.label}",
                "every machine has its own BMC (set systemId for a multi-system BMC)",
            )

        self._first_seen(
            nodes, lambda n: (n.bmc.address, n.bmc.system_id) if n.bmc else None, report_bmc
        )

    # -- providers ----------------------------------------------------------------

    def providers(self, nodes: list[Placed]) -> None:
        for node in nodes:
            self._provider(node)
        for j, p in self.s.pools:
            if p.provider != "pxe":
                continue
            for key, what in (("macs", "MAC address"), ("bmcs", "BMC")):
                have = len(getattr(p, key))
                if have < p.count:
                    self.add(
                        ("pools", j, key),
                        f"pxe pool '{p.name}' has count {p.count} but {have} entries in {key}",
                        f"list one {what} per node under {key} (in node order)",
                    )

    def _provider(self, node: Placed) -> None:
        once = "pool" if node.pool else None
        providers = self.s.providers
        configured = providers is None or node.provider in providers.configured()
        if not configured:
            self.add(
                node.loc("provider"),
                f"provider '{node.provider}' is not configured",
                f"add it under providers, like 'providers: {{{node.provider}: {{}}}}'",
                once=once and "unconfigured",
            )
        if node.provider == "pxe" and node.pool is None:
            if node.mac is None:
                self.add(
                    node.loc("mac"),
                    "missing 'mac': a pxe node needs the MAC address of its boot NIC",
                    "add mac: with the MAC address the machine PXE-boots from",
                )
            if node.bmc is None:
                self.add(
                    node.loc("bmc"),
                    "missing 'bmc': a pxe node needs a BMC to be powered on",
                    "add bmc: {type: redfish, address: ..., username: ..., password: env:NAME}",
                )
        if node.provider != "pxe" and node.bmc is not None and node.pool is None:
            self.add(
                node.loc("bmc"),
                f"bmc is only used by the pxe provider, not '{node.provider}'",
                "remove bmc, or set provider: pxe",
                "warning",
            )
        if node.provider == "libvirt":
            defaults = (
                providers.libvirt.defaults
                if providers is not None and providers.libvirt is not None
                else None
            ) or MachineSpec()
            mloc: Loc = (*node.origin, "machine" if node.pool is None else "template")
            unset = [
                key
                for key in ("cpus", "memory", "disk")
                if getattr(node.machine, key) is None and getattr(defaults, key) is None
            ]
            if unset and configured:
                self.add(
                    mloc,
                    "a libvirt machine needs cpus, memory and disk; not set: " + ", ".join(unset),
                    f"set them in {format_path(mloc)}, or in providers.libvirt.defaults",
                    once=once and "libvirt",
                )
        if node.provider == "pxe" and providers is not None and providers.pxe is not None:
            server = providers.pxe.server_address
            if server and node.address == int(ipaddress.IPv4Address(server)):
                self.add(
                    node.loc("address"),
                    f"address {server} is providers.pxe.serverAddress (the provisioner)",
                    "give the node another address",
                )

    # -- roles and membership -----------------------------------------------------

    def roles(self, nodes: list[Placed]) -> None:
        etcd = self.s.etcd
        if etcd is None or etcd.placement != "control-plane":
            return
        for node in nodes:
            if "etcd" in node.roles:
                self.add(
                    (*node.origin, "roles", node.roles.index("etcd")),
                    "the etcd role is not allowed with etcd.placement: control-plane",
                    "remove it (every control-plane node runs an etcd member), or set "
                    "etcd.placement: dedicated",
                    once="pool" if node.pool else None,
                )

    def membership(self, nodes: list[Placed]) -> None:
        nodes_loc: Loc = ("nodes",) if self.pos.has(("nodes",)) else ("pools",)
        cps = [n for n in nodes if "control-plane" in n.roles]
        if not cps:
            self.add(
                nodes_loc,
                "no control-plane node",
                "give at least one node the control-plane role (3 for high availability)",
                at_key=True,
            )
        etcd = self.s.etcd
        if etcd is None:
            return
        loc: Loc = ("etcd", "placement")
        at_key = False
        if etcd.placement == "control-plane":
            if not cps:
                return  # said above
            members, what = cps, "control-plane nodes (they run etcd)"
            loc, at_key = nodes_loc, True
        else:
            members = [n for n in nodes if "etcd" in n.roles]
            what = "etcd members"
        names = ", ".join(n.name for n in members)
        if not members:
            self.add(
                loc,
                "no etcd member: etcd.placement is dedicated but no node has the etcd role",
                "give 3 nodes the etcd role, or set etcd.placement: control-plane",
            )
        elif len(members) % 2 == 0:
            self.add(
                loc,
                f"{len(members)} {what} ({names}): an even count tolerates no more failures "
                "than one fewer, and a split can lose quorum",
                f"use an odd number: {len(members) + 1} or {len(members) - 1}",
                at_key=at_key,
            )
        elif len(members) == 1:
            self.add(
                loc,
                f"a single etcd member ({names}): losing it loses the cluster",
                "use 3 for high availability (fine for a throwaway cluster)",
                "warning",
                at_key=at_key,
            )


def semantic_problems(
    sections: Sections, positions: Positions, file: str
) -> list[tuple[Problem, Loc]]:
    """Every cross-field problem, with the document path it is about."""
    return Checker(sections, positions, file).run()
