"""What the running cluster says about its own membership, for the membership planner.

Facts, never changes: Kubernetes nodes (``kubectl get nodes -o json``), etcd members
and their health (``etcdctl member list`` / ``endpoint health --cluster``), every API
load balancer's backends (haproxy's configuration), who holds the API virtual IP,
and which nodes answer over SSH. Everything is asked of the cluster itself, so a plan
never depends on what an earlier run remembers.

The parsers (``parse_*``) are pure and unit-tested; ``observe_membership`` runs the
commands through a ``Runner`` (the cluster's one SSH transport, provision/run/context.py).
Paths and ports on the nodes are the roles' own (provision/nodefacts.py).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from provision import nodefacts
from provision.inventory import Inventory, Node
from provision.observe.transport import Json, Runner

UNSTARTED_PREFIX = "unstarted:"  # key of an added-but-never-started etcd member


class ObservationError(ValueError):
    """A command's output could not be understood."""


@dataclass(frozen=True)
class K8sNode:
    name: str
    ready: bool
    roles: frozenset[str]  # from node-role.kubernetes.io/<role> labels
    kubelet_version: str
    address: str = ""  # InternalIP
    unschedulable: bool = False

    @property
    def is_control_plane(self) -> bool:
        return "control-plane" in self.roles


@dataclass(frozen=True)
class EtcdMember:
    name: str  # empty while a member is added but not started yet
    peer_url: str
    client_url: str  # empty while unstarted
    healthy: bool
    member_id: str  # hex, as `etcdctl member remove` wants it
    is_learner: bool = False

    @property
    def started(self) -> bool:
        return bool(self.name) and bool(self.client_url)

    @property
    def peer_host(self) -> str:
        return urlsplit(self.peer_url).hostname or ""


@dataclass(frozen=True)
class HaproxyServer:
    backend: str
    name: str
    address: str
    port: int | None


@dataclass
class Observed:
    """One observation of the cluster. Keys are node names.

    ``k8s_known``/``etcd_known`` are False when the question could not be answered
    (no control-plane node reachable, the command failed): an empty dict with
    ``*_known`` True means "asked, and there is none" (a cluster not built yet).
    ``lb_backends`` has a key only for control-plane nodes whose haproxy config was
    read; ``reachable`` is every node that answered over SSH.
    """

    machines: dict[str, str] = field(default_factory=dict)
    k8s_nodes: dict[str, K8sNode] = field(default_factory=dict)
    etcd_members: dict[str, EtcdMember] = field(default_factory=dict)
    lb_backends: dict[str, set[str]] = field(default_factory=dict)
    reachable: set[str] = field(default_factory=set)
    api_server_manifests: set[str] = field(default_factory=set)
    vip_holder: str | None = None
    k8s_known: bool = True
    etcd_known: bool = True
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> Json:
        return {
            "machines": dict(sorted(self.machines.items())),
            "k8s_nodes": {k: {"ready": v.ready, "roles": sorted(v.roles),
                              "kubelet_version": v.kubelet_version, "address": v.address}
                          for k, v in sorted(self.k8s_nodes.items())},
            "etcd_members": {k: {"name": v.name, "member_id": v.member_id,
                                 "peer_url": v.peer_url, "client_url": v.client_url,
                                 "healthy": v.healthy, "is_learner": v.is_learner}
                             for k, v in sorted(self.etcd_members.items())},
            "lb_backends": {k: sorted(v) for k, v in sorted(self.lb_backends.items())},
            "reachable": sorted(self.reachable),
            "api_server_manifests": sorted(self.api_server_manifests),
            "vip_holder": self.vip_holder,
            "k8s_known": self.k8s_known,
            "etcd_known": self.etcd_known,
            "problems": list(self.problems),
        }


# --- pure parsers -----------------------------------------------------------------


def _load_json(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ObservationError(f"{what}: not JSON ({exc.msg} at line {exc.lineno})") from None


def parse_kubectl_nodes(text: str) -> dict[str, K8sNode]:
    """``kubectl get nodes -o json`` -> name -> K8sNode."""
    data = _load_json(text, "kubectl get nodes")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ObservationError("kubectl get nodes: no 'items' list")
    out: dict[str, K8sNode] = {}
    for item in data["items"]:
        meta = item.get("metadata") or {}
        status = item.get("status") or {}
        name = meta.get("name")
        if not name:
            continue
        labels = meta.get("labels") or {}
        roles = frozenset(key.split("/", 1)[1] for key in labels
                          if key.startswith("node-role.kubernetes.io/") and "/" in key
                          and key.split("/", 1)[1])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        address = next((a.get("address", "") for a in status.get("addresses") or []
                        if a.get("type") == "InternalIP"), "")
        out[name] = K8sNode(
            name=name,
            ready=ready,
            roles=roles,
            kubelet_version=(status.get("nodeInfo") or {}).get("kubeletVersion", ""),
            address=address,
            unschedulable=bool((item.get("spec") or {}).get("unschedulable", False)),
        )
    return out


@dataclass(frozen=True)
class RawMember:
    """One entry of ``etcdctl member list``, before it is joined with health."""

    member_id: str  # hex
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


def parse_etcd_member_list(text: str) -> list[RawMember]:
    """``etcdctl member list -w json`` (v3.4/3.5) -> raw members, IDs as hex strings.

    etcdctl prints IDs as decimal uint64 (fields with zero values are omitted: an
    unstarted member has no ``name`` and no ``clientURLs``); ``member remove`` wants hex.
    """
    data = _load_json(text, "etcdctl member list")
    if not isinstance(data, dict):
        raise ObservationError("etcdctl member list: expected an object")
    members = []
    for m in data.get("members") or []:
        raw_id = m.get("ID")
        if not isinstance(raw_id, int):
            raise ObservationError(f"etcdctl member list: member without an integer ID: {m}")
        members.append(RawMember(
            member_id=format(raw_id, "x"),
            name=str(m.get("name", "")),
            peer_urls=tuple(str(u) for u in m.get("peerURLs") or []),
            client_urls=tuple(str(u) for u in m.get("clientURLs") or []),
            is_learner=bool(m.get("isLearner", False)),
        ))
    return members


def parse_etcd_endpoint_health(text: str) -> dict[str, bool]:
    """``etcdctl endpoint health -w json`` -> endpoint URL -> healthy.

    etcdctl exits non-zero when any endpoint is unhealthy but still prints the list,
    so callers parse stdout whatever the exit code.
    """
    text = text.strip()
    if not text:
        return {}
    data = _load_json(text, "etcdctl endpoint health")
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ObservationError("etcdctl endpoint health: expected a list")
    return {str(e.get("endpoint", "")).rstrip("/"): bool(e.get("health", False))
            for e in data if isinstance(e, dict) and e.get("endpoint")}


def etcd_members(
    member_list: Sequence[RawMember],
    health: Mapping[str, bool],
    address_to_name: Mapping[str, str] | None = None,
) -> dict[str, EtcdMember]:
    """Join membership with health. Keyed by member name; an unstarted member (no name
    yet) is keyed by the node whose address its peer URL names, else
    ``unstarted:<peer URL>``."""
    address_to_name = address_to_name or {}
    out: dict[str, EtcdMember] = {}
    for m in member_list:
        peer = m.peer_urls[0] if m.peer_urls else ""
        clients = [u.rstrip("/") for u in m.client_urls]
        healthy = any(health.get(u, False) for u in clients)
        member = EtcdMember(
            name=m.name, peer_url=peer, client_url=clients[0] if clients else "",
            healthy=healthy, member_id=m.member_id, is_learner=m.is_learner,
        )
        key = member.name or address_to_name.get(member.peer_host, "")
        out[key or f"{UNSTARTED_PREFIX}{peer}"] = member
    return out


_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|resolvers|peers|userlist|"
                      r"program|http-errors|ring|cache|mailers)\b\s*(\S*)")


def parse_haproxy_servers(text: str) -> list[HaproxyServer]:
    """``server`` lines of every backend/listen section of an haproxy.cfg."""
    servers: list[HaproxyServer] = []
    section, section_name = "", ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[:1].isspace():
            m = _SECTION.match(line)
            if m:
                section, section_name = m.group(1), m.group(2)
                continue
        words = line.split()
        if section in ("backend", "listen") and words[0] == "server" and len(words) >= 3:
            host, _, port = words[2].rpartition(":")
            if not host:  # no port given
                host, port = words[2], ""
            servers.append(HaproxyServer(section_name, words[1], host.strip("[]"),
                                         int(port) if port.isdigit() else None))
    return servers


def parse_haproxy_stats(csv: str, backend: str) -> dict[str, dict[str, str]]:
    """The servers of ``backend`` in haproxy's stats CSV (``/stats;csv``), by server
    name: every column as the header names it (``status``: UP, DOWN, ...; ``addr``)."""
    lines = csv.splitlines()
    if not lines or not lines[0].startswith("#"):
        return {}
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {r["svname"]: r for r in rows if r.get("pxname") == backend
            and r.get("svname") not in ("FRONTEND", "BACKEND")}


def api_servers(servers: Sequence[HaproxyServer]) -> list[HaproxyServer]:
    """The API backend's servers: the backend named as the roles name it when there is
    one, else every server that is not on loopback (a stats or local service)."""
    named = [s for s in servers if s.backend == nodefacts.HAPROXY_API_BACKEND]
    if named:
        return named
    return [s for s in servers if not s.address.startswith("127.") and s.address != "::1"
            and s.address != "localhost"]


def backend_nodes(servers: Iterable[HaproxyServer], known: Iterable[str],
                  address_to_name: Mapping[str, str]) -> set[str]:
    """Node names of haproxy servers: by server name, else by address."""
    known = set(known)
    out: set[str] = set()
    for s in servers:
        if s.name in known:
            out.add(s.name)
        elif s.address in address_to_name:
            out.add(address_to_name[s.address])
        else:
            out.add(s.name)
    return out


# --- gathering over SSH -----------------------------------------------------------

# One SSH round trip per node: answers at all, has joined, runs (or was joining as) an
# API server, then (control plane) the haproxy config and whether the VIP is here.
# Sections are fenced so outputs cannot be confused.
_PROBE = (
    "echo @@reachable; "
    "if [ -f {kubelet} ]; then echo @@joined; fi; "
    "if [ -f {manifest} ]; then echo @@apiserver; fi; "
    "if [ -r {cfg} ]; then echo @@haproxy; cat {cfg}; fi; "
    "echo @@vip; ip -o -4 addr show 2>/dev/null | grep -qwF {vip} && echo here; true"
)


def sections(text: str) -> dict[str, str]:
    """``@@name`` fenced sections of one command's output."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:].strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def kubectl_script() -> str:
    admin = nodefacts.ADMIN_KUBECONFIG
    return (f"if [ ! -f {admin} ]; then echo @@absent; exit 0; fi; "
            f"kubectl --kubeconfig {admin} get nodes -o json")


def etcdctl_script(endpoints: Sequence[str]) -> str:
    base = nodefacts.etcdctl(endpoints)
    return (f"if [ ! -f {nodefacts.ETCD_CLIENT_CERT} ]; then echo @@absent; exit 0; fi; "
            f"echo @@members; {base} member list -w json || exit 1; "
            f"echo @@health; {base} endpoint health --cluster -w json 2>/dev/null; true")


def observe_membership(inv: Inventory, machines: Mapping[str, str], run: Runner,
                       parallel: int = 8) -> Observed:
    """Ask the cluster. ``machines``: provider state per node (running|stopped|missing);
    ``run(node, script)``: the cluster's SSH transport."""
    obs = Observed(machines={k: str(v) for k, v in machines.items()})
    address_to_name = {n.address: n.name for n in inv.nodes}
    cps = {n.name for n in inv.control_plane_nodes}
    running = [n.name for n in inv.nodes if obs.machines.get(n.name) == "running"]
    vip = str(inv.control_plane.virtual_ip)

    def probe(name: str) -> tuple[str, subprocess.CompletedProcess[str] | None, str]:
        script = _PROBE.format(cfg=nodefacts.HAPROXY_CONFIG, vip=shlex.quote(vip),
                               kubelet=nodefacts.KUBELET_KUBECONFIG,
                               manifest=nodefacts.API_SERVER_MANIFEST)
        try:
            return name, run(name, script), ""
        except (OSError, subprocess.SubprocessError) as exc:
            return name, None, str(exc)

    joined: set[str] = set()

    def probe_all(names: Sequence[str], inventory_nodes: bool) -> None:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(probe, names))
        for name, proc, error in results:
            if proc is None or proc.returncode != 0 or "@@reachable" not in proc.stdout:
                detail = error or (proc.stderr.strip() if proc else "") or "no answer"
                obs.problems.append(f"{name}: unreachable over SSH ({detail})")
                continue
            obs.reachable.add(name)
            parts = sections(proc.stdout)
            if inventory_nodes and name in cps and "haproxy" in parts:
                obs.lb_backends[name] = backend_nodes(
                    api_servers(parse_haproxy_servers(parts["haproxy"])),
                    address_to_name.values(), address_to_name)
            if inventory_nodes and "joined" in parts:
                joined.add(name)
            if inventory_nodes and "apiserver" in parts:
                obs.api_server_manifests.add(name)
            if parts.get("vip", "").strip() == "here":
                obs.vip_holder = name

    probe_all(running, inventory_nodes=True)

    ordered_cps = [n.name for n in inv.control_plane_nodes if n.name in obs.reachable]

    # No machine at all for a role's nodes: nothing to ask, and nothing built yet.
    def none_exist(nodes: Iterable[Node]) -> bool:
        return all(obs.machines.get(n.name, "missing") == "missing" for n in nodes)

    obs.k8s_nodes, obs.k8s_known = _ask_first(
        ordered_cps, run, kubectl_script(), parse_kubectl_nodes, "kubectl get nodes",
        obs.problems, none_exist(inv.control_plane_nodes))

    etcd_nodes = [n.name for n in inv.etcd_members if n.name in obs.reachable]
    endpoints = [nodefacts.etcd_client_url(n.address) for n in inv.etcd_members]

    def parse_etcd(text: str) -> dict[str, EtcdMember]:
        parts = sections(text)
        members = parse_etcd_member_list(parts.get("members", ""))
        health = parse_etcd_endpoint_health(parts.get("health", ""))
        return etcd_members(members, health, address_to_name)

    obs.etcd_members, obs.etcd_known = _ask_first(
        etcd_nodes, run, etcdctl_script(endpoints), parse_etcd, "etcdctl", obs.problems,
        none_exist(inv.etcd_members))
    # Nodes the cluster knows and the inventory does not (removals): can they still be
    # reached (to drain, reset), and does one hold the VIP (to move it off first)?
    leaving = sorted((set(obs.k8s_nodes) | {m.name for m in obs.etcd_members.values()
                                            if m.name}) - {n.name for n in inv.nodes})
    if leaving:
        probe_all(leaving, inventory_nodes=False)
    # "Nothing built yet" must be confirmed by every node: one that has joined a
    # cluster no control-plane node of the inventory answers for (every one of them
    # replaced in one edit, say) makes the membership unknown, never empty.
    if joined and not obs.k8s_nodes:
        obs.problems.append(f"{_names(joined)} joined a cluster, but no control-plane node "
                            "of the inventory answers for it")
        obs.k8s_known = False
        if not obs.etcd_members:
            obs.etcd_known = False
    return obs


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


T = TypeVar("T")


def _ask_first(nodes: Sequence[str], run: Runner, script: str,
               parse: Callable[[str], dict[str, T]], what: str,
               problems: list[str], nothing_built: bool) -> tuple[dict[str, T], bool]:
    """Run on the first node that answers; "@@absent" everywhere means "none yet"."""
    if not nodes and nothing_built:
        return {}, True
    absent = 0
    for name in nodes:
        try:
            proc = run(name, script)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{what} on {name}: {exc}")
            continue
        if proc.returncode == 0 and proc.stdout.startswith("@@absent"):
            absent += 1
            continue
        if proc.returncode != 0:
            problems.append(f"{what} on {name} failed: "
                            f"{(proc.stderr or proc.stdout).strip()[-300:]}")
            continue
        try:
            return parse(proc.stdout), True
        except ObservationError as exc:
            problems.append(f"{what} on {name}: {exc}")
    if nodes and absent == len(nodes):
        return {}, True  # not built yet: every node that answered says so
    if not nodes:
        problems.append(f"{what}: no reachable node to ask")
    return {}, False


__all__ = [
    "UNSTARTED_PREFIX", "EtcdMember", "HaproxyServer", "K8sNode", "ObservationError",
    "Observed", "RawMember", "api_servers", "backend_nodes", "etcd_members", "etcdctl_script",
    "kubectl_script", "observe_membership", "parse_etcd_endpoint_health",
    "parse_etcd_member_list", "parse_haproxy_servers", "parse_kubectl_nodes", "sections",
]
