"""Membership changes around the stage pipeline: the part of a plan stages cannot do.

The stages only ever *add*: they create machines, converge roles and join nodes,
and every API server, load balancer and etcd configuration they render follows the
inventory. What they cannot do is take something away. ``up`` therefore runs

1. ``before_pipeline``: repairs that must precede any join. A lost etcd member
   (its machine is gone) leaves, because etcd adds no member while one is down;
   the old Node object of a node being replaced is deleted, so the new machine can
   join under the same name; a broken machine (``--force``) is released; and the
   API virtual IP is moved off every control-plane node that is leaving, so the
   VIP never sits on a node the stages no longer manage;
2. the pipeline (additions: machines, etcd member add, control-plane and worker
   joins, load balancer backends, every API server's etcd list);
3. ``after_pipeline``: removals, in the planner's order, after every addition, so
   a replace is add-then-remove: drain, delete the Node, remove the etcd member,
   reset the host, release the machine.

Every step asks the cluster first and does nothing when already done, so a run
killed at any point is finished by the next one (the planner re-observes).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from provision import observe_cluster, planner, playbooks
from provision.errors import StageFailed
from provision.executors import ssh
from provision.observe_cluster import ADMIN_KUBECONFIG, ETCD_CLIENT_PORT, Observed
from provision.providers.base import registered_providers

STAGE = "membership"  # the name membership work has in progress views and run records
KUBECTL = f"kubectl --kubeconfig {ADMIN_KUBECONFIG} --request-timeout=20s"
VIP_MOVE_TIMEOUT = 60.0  # seconds for another node to take the VIP


@dataclass
class Machine:
    """A machine the cluster has: an inventory node, or one the inventory dropped."""

    name: str
    address: str
    provider: str


def cluster_machines(cluster: Any) -> dict[str, Machine]:
    """Inventory nodes plus the machines providers still hold for removed nodes."""
    out = {n.name: Machine(n.name, str(n.address), n.provider) for n in cluster.inv.nodes}
    for name in cluster.inv.providers.configured():
        if name not in registered_providers():
            continue
        known = getattr(cluster.provider(name), "known_machines", None)
        for node, address in (known(cluster.inv) if known else {}).items():
            out.setdefault(node, Machine(node, address, name))
    return out


def orphans(cluster: Any) -> dict[str, Machine]:
    """Machines of nodes no longer in the inventory."""
    names = {n.name for n in cluster.inv.nodes}
    return {k: m for k, m in cluster_machines(cluster).items() if k not in names}


def machine_states(cluster: Any, machines: dict[str, Machine]) -> dict[str, str]:
    by_provider: dict[str, list[str]] = {}
    inventory = {n.name: n for n in cluster.inv.nodes}
    for m in machines.values():
        by_provider.setdefault(m.provider, []).append(m.name)
    states: dict[str, str] = {}
    for provider, names in by_provider.items():
        nodes = [inventory.get(n, n) for n in names]
        observed = cluster.provider(provider).observe(cluster.inv, nodes)
        states.update({k: str(getattr(v, "value", v)) for k, v in observed.items()})
    return states


def observe(cluster: Any, write_ssh_config: Callable[[], Any]) -> Observed:
    """What the machines and the cluster say now (nothing is changed)."""
    machines = cluster_machines(cluster)
    states = machine_states(cluster, machines)
    if any(s == "running" for s in states.values()):
        write_ssh_config()  # includes the machines of removed nodes
    return observe_cluster.observe_cluster(cluster.inv, states,
                                           observe_cluster.ssh_runner(cluster.paths))


def plan(cluster: Any, write_ssh_config: Callable[[], Any], force: bool = False
         ) -> tuple[planner.Plan, Observed]:
    obs = observe(cluster, write_ssh_config)
    return planner.plan_changes(cluster.inv, obs, force=force), obs


class Membership:
    """Applies the membership actions of a plan (see the module docstring)."""

    def __init__(self, cluster: Any, engine: Any, *, force_drain: bool = False,
                 drain_timeout: int = 300) -> None:
        self.cluster = cluster
        self.engine = engine
        self.inv = cluster.inv
        self.paths = cluster.paths
        self.progress = engine.progress
        self.record = engine.record
        self.force_drain = force_drain
        self.drain_timeout = drain_timeout
        self.machines = cluster_machines(cluster)

    # ----------------------------------------------------------------- phases
    def before_pipeline(self, plan: planner.Plan) -> list[str]:
        """Repairs and VIP moves that precede the joins; returns the nodes touched."""
        steps: list[tuple[planner.Action, Callable[[planner.Action], None]]] = []
        for a in plan.actions:
            if a.kind == planner.REMOVE_ETCD_MEMBER and a.details.get("keep_node"):
                steps.append((a, self._remove_member))
            elif a.kind == planner.REPLACE_NODE:
                steps.append((a, self._clear_for_replacement))
            elif a.kind == planner.REMOVE_CONTROL_PLANE and (
                    a.details.get("holds_vip") or a.details.get("reachable")):
                # Holder or not: the stages rewrite the others' VRRP peers without it,
                # and a keepalived that hears no peer would take the VIP as well.
                steps.append((a, self._move_vip_off))
        return self._run("membership (before)", steps)

    def after_pipeline(self, plan: planner.Plan) -> list[str]:
        steps: list[tuple[planner.Action, Callable[[planner.Action], None]]] = []
        for a in plan.actions:
            if a.kind == planner.DRAIN_AND_REMOVE_WORKER:
                steps.append((a, self._remove_worker))
            elif a.kind == planner.REMOVE_CONTROL_PLANE:
                steps.append((a, self._remove_control_plane))
            elif a.kind == planner.REMOVE_ETCD_MEMBER and not a.details.get("keep_node"):
                steps.append((a, self._remove_etcd_node))
            elif a.kind == planner.RELEASE_MACHINE:
                steps.append((a, self._release))
        return self._run("membership", steps)

    def _run(self, title: str, steps: Sequence[tuple[planner.Action, Callable[..., None]]]
             ) -> list[str]:
        if not steps:
            return []
        names = list(dict.fromkeys(a.node for a, _ in steps))
        self.progress.stage_started(STAGE, names)
        for action, step in steps:
            started = time.time()
            self.progress.node_state(STAGE, action.node, "running", action.kind)
            self.record.log_line(f"[{STAGE}] {action.kind} {action.node}: {action.reason}")
            step(action)
            self.progress.node_result(STAGE, action.node, "changed", started, time.time(),
                                      detail=action.kind)
            self.progress.node_state(STAGE, action.node, "changed")
        self.progress.stage_finished(STAGE, "changed")
        self.record.log_line(f"[{STAGE}] {title}: done for {', '.join(names)}")
        return names

    # ----------------------------------------------------------------- actions
    def _remove_member(self, action: planner.Action) -> None:
        member_id = action.details["etcd_member_id"]
        self._etcd_member_remove(action.node, member_id)

    def _clear_for_replacement(self, action: planner.Action) -> None:
        name = action.node
        self._on_helper(name, f"{KUBECTL} delete node {shlex.quote(name)} --ignore-not-found",
                        "delete the old Node object")
        if name in self.machines and self._state(name) != "missing":
            self._release_machine(name)

    def _move_vip_off(self, action: planner.Action) -> None:
        name = action.node
        self._on(name, "systemctl disable --now keepalived", "stop keepalived (VIP moves)")
        vip = shlex.quote(str(self.inv.control_plane.virtual_ip))
        others = [n.name for n in self.inv.control_plane_nodes if n.name != name]
        deadline = time.monotonic() + VIP_MOVE_TIMEOUT
        while time.monotonic() < deadline:
            for other in others:
                proc = ssh.run_on_node(self.paths, other,
                                       f"ip -o -4 addr show | grep -qwF {vip}", timeout=15)
                if proc.returncode == 0:
                    self.record.log_line(f"[{STAGE}] the API VIP moved from {name} to {other}")
                    return
            time.sleep(1)
        self._fail(name, f"no other control-plane node ({', '.join(others)}) took the API "
                   f"virtual IP within {VIP_MOVE_TIMEOUT:.0f}s after keepalived stopped on "
                   f"{name}; check keepalived there (`journalctl -u keepalived`)")

    def _remove_worker(self, action: planner.Action) -> None:
        name = action.node
        self._drain_and_delete(name)
        self._reset_and_release(name, action)

    def _remove_control_plane(self, action: planner.Action) -> None:
        name = action.node
        if action.details.get("reachable"):
            # keepalived must not take the VIP back while the node is drained
            self._on(name, "systemctl disable --now keepalived", "stop keepalived")
        self._drain_and_delete(name)
        member_id = action.details.get("etcd_member_id")
        if member_id and self.inv.etcd.placement != "dedicated":
            self._etcd_member_remove(name, member_id)
        self._reset_and_release(name, action)

    def _remove_etcd_node(self, action: planner.Action) -> None:
        name = action.node
        self._etcd_member_remove(name, action.details["etcd_member_id"])
        if name != "-":
            self._reset_and_release(name, action)

    def _release(self, action: planner.Action) -> None:
        self._release_machine(action.node)

    # ----------------------------------------------------------------- steps
    def _drain_and_delete(self, name: str) -> None:
        node = shlex.quote(name)
        drain = (f"{KUBECTL} drain {node} --ignore-daemonsets --delete-emptydir-data "
                 f"--timeout={self.drain_timeout}s")
        if self.force_drain:
            # skip the eviction API (and so PodDisruptionBudgets); delete bare pods too
            drain += " --disable-eviction --force"
        script = (f"if ! {KUBECTL} get node {node} >/dev/null 2>&1; then exit 0; fi\n"
                  f"{KUBECTL} cordon {node}\n"
                  f"{drain}\n"
                  f"{KUBECTL} delete node {node} --ignore-not-found")
        proc = self._helper_run(name, script, timeout=self.drain_timeout + 120)
        if proc.returncode != 0:
            hint = ("" if self.force_drain else
                    "; a PodDisruptionBudget may forbid the eviction: fix it, or pass "
                    "--force-drain to delete the pods regardless")
            self._fail(name, f"drain of {name} failed: {_tail(proc)}{hint}")

    def _etcd_member_remove(self, name: str, member_id: str) -> None:
        remaining = [n for n in self.inv.etcd_members if n.name != name]
        asker = next((n.name for n in remaining if self._reachable(n.name)), None)
        if asker is None:
            self._fail(name, "no remaining etcd member answers over SSH to remove the "
                       f"member {member_id} of {name}")
            return
        etcdctl = observe_cluster.etcdctl(
            [f"https://{n.address}:{ETCD_CLIENT_PORT}" for n in remaining], "10s")
        mid = shlex.quote(member_id)
        # Remaining members healthy first: removing one from a sick cluster can lose
        # quorum. A member already gone (an earlier, interrupted run) is success.
        script = (f"set -e\n{etcdctl} endpoint health\n"
                  f"if {etcdctl} member list | grep -q ^{mid},; then "
                  f"{etcdctl} member remove {mid}; fi")
        proc = ssh.run_on_node(self.paths, asker, script, timeout=90)
        self.record.log_line(f"[{STAGE}] etcd member remove {member_id} ({name}) on {asker}: "
                             f"rc {proc.returncode}")
        if proc.returncode != 0:
            self._fail(name, f"etcd member remove {member_id} (on {asker}) failed: {_tail(proc)}")

    def _reset_and_release(self, name: str, action: planner.Action) -> None:
        if action.details.get("reachable") and self._state(name) == "running":
            machine = self.machines.get(name)
            playbooks.reset_hosts(self.engine, [name],
                                  {name: machine.address} if machine else None)
        else:
            self.record.log_line(f"[{STAGE}] {name}: reset skipped (the host does not "
                                 "answer over SSH); its machine is released")
        self._release_machine(name)

    def _release_machine(self, name: str) -> None:
        machine = self.machines.get(name)
        if machine is None:
            return
        ssh.close_masters(self.paths, [name])
        node = next((n for n in self.inv.nodes if n.name == name), name)
        self.cluster.provider(machine.provider).destroy(self.inv, [node])
        self.record.log_line(f"[{STAGE}] released the machine of {name} "
                             f"({machine.provider})")

    # ----------------------------------------------------------------- helpers
    def _state(self, name: str) -> str:
        machine = self.machines.get(name)
        if machine is None:
            return "missing"
        return machine_states(self.cluster, {name: machine}).get(name, "missing")

    def _reachable(self, name: str) -> bool:
        try:
            return ssh.run_on_node(self.paths, name, "true", timeout=20).returncode == 0
        except Exception:  # noqa: BLE001 - unreachable is an answer here
            return False

    def _helper_run(self, about: str, script: str, timeout: float = 120) -> Any:
        """Run on the first control-plane node of the inventory that answers."""
        for node in self.inv.control_plane_nodes:
            if node.name != about and self._reachable(node.name):
                return ssh.run_on_node(self.paths, node.name, script, timeout=timeout)
        self._fail(about, "no control-plane node of the inventory answers over SSH")
        raise AssertionError  # unreachable: _fail raises

    def _on_helper(self, about: str, script: str, what: str) -> None:
        proc = self._helper_run(about, script)
        if proc.returncode != 0:
            self._fail(about, f"{what} failed: {_tail(proc)}")

    def _on(self, name: str, script: str, what: str) -> None:
        proc = ssh.run_on_node(self.paths, name, script, timeout=60)
        if proc.returncode != 0:
            self._fail(name, f"{what} on {name} failed: {_tail(proc)}")

    def _fail(self, node: str, what: str) -> None:
        self.progress.node_state(STAGE, node, "failed")
        raise StageFailed(STAGE, node, what, str(self.record.log))


def _tail(proc: Any, chars: int = 600) -> str:
    return ((proc.stderr or "") + (proc.stdout or "")).strip()[-chars:] or f"exit {proc.returncode}"


__all__ = ["STAGE", "Machine", "Membership", "cluster_machines", "observe", "orphans", "plan"]
