"""Membership steps: what the stages cannot do, because the stages only ever add.

The stages create machines, converge roles and join nodes; every API server, load
balancer and etcd configuration they render follows the inventory. Taking something
away is done by these steps, one per action of the membership plan
(provision/plan/membership.py):

* before the stages, repairs that must precede any join: a lost etcd member leaves
  (``remove-etcd-member`` with ``keep_node``: etcd adds no member while one is down),
  the old Node object of a node being replaced is deleted and its broken machine
  released (``replace-node``), and the API virtual IP is moved off every
  control-plane node that is leaving (``remove-control-plane``), so the VIP never
  sits on a node the stages no longer manage;
* after the stages (so a replace is add-then-remove), the removals in the planner's
  order: drain, delete the Node, remove the etcd member, reset the host, release the
  machine.

Every step asks the cluster first and does nothing when already done, so a run
killed at any point is finished by the next one (the planner re-observes).
"""

from __future__ import annotations

import shlex
import subprocess
import time

from provision import nodefacts
from provision.errors import StageFailed
from provision.plan.membership import (
    DRAIN_AND_REMOVE_WORKER,
    RELEASE_MACHINE,
    REMOVE_CONTROL_PLANE,
    REMOVE_ETCD_MEMBER,
    REPLACE_NODE,
    Action,
    MembershipPlan,
)
from provision.providers.base import MachineState
from provision.run import plays
from provision.run.context import ClusterContext, RunContext
from provision.run.step import CLUSTER_WIDE, Change, Step, StepOutcome
from provision.run.steps.reset import reset_nodes

KUBECTL = f"kubectl --kubeconfig {nodefacts.ADMIN_KUBECONFIG} --request-timeout=20s"
VIP_MOVE_TIMEOUT = 60.0  # seconds for another node to take the VIP


# --- node operations the steps share ----------------------------------------------------


def _tail(proc: subprocess.CompletedProcess[str], chars: int = 600) -> str:
    return ((proc.stderr or "") + (proc.stdout or "")).strip()[-chars:] \
        or f"exit {proc.returncode}"


def _fail(ctx: RunContext, step: str, node: str, what: str) -> StageFailed:
    ctx.progress.node_state(step, node, "failed")
    return StageFailed(step, node, what, str(ctx.record.log))


def _on(ctx: RunContext, step: str, node: str, script: str, what: str) -> None:
    proc = ctx.ssh.run(node, script, timeout=60)
    if proc.returncode != 0:
        raise _fail(ctx, step, node, f"{what} on {node} failed: {_tail(proc)}")


def _helper_run(ctx: RunContext, step: str, about: str, script: str,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run on the first control-plane node of the inventory that answers."""
    for node in ctx.inventory.control_plane_nodes:
        if node.name != about and ctx.ssh.reachable(node.name):
            return ctx.ssh.run(node.name, script, timeout=timeout)
    raise _fail(ctx, step, about, "no control-plane node of the inventory answers over SSH")


def drain_and_delete(ctx: RunContext, step: str, name: str) -> None:
    """Cordon, drain (PodDisruptionBudgets respected unless --force-drain) and delete
    the Node; nothing to do when the Node is gone already."""
    node = shlex.quote(name)
    timeout = ctx.options.drain_timeout
    drain = (f"{KUBECTL} drain {node} --ignore-daemonsets --delete-emptydir-data "
             f"--timeout={timeout}s")
    if ctx.options.force_drain:
        # skip the eviction API (and so PodDisruptionBudgets); delete bare pods too
        drain += " --disable-eviction --force"
    # set -e: a drain that fails, times out on a PodDisruptionBudget or dies with a
    # killed run's session must never go on to delete the Node with its pods
    script = ("set -e\n"
              f"if ! {KUBECTL} get node {node} >/dev/null 2>&1; then exit 0; fi\n"
              f"{KUBECTL} cordon {node}\n"
              f"{drain}\n"
              f"{KUBECTL} delete node {node} --ignore-not-found")
    proc = _helper_run(ctx, step, name, script, timeout=timeout + 120)
    if proc.returncode != 0:
        hint = ("" if ctx.options.force_drain else
                "; a PodDisruptionBudget may forbid the eviction: fix it, or pass "
                "--force-drain to delete the pods regardless")
        raise _fail(ctx, step, name, f"drain of {name} failed: {_tail(proc)}{hint}")


def remove_etcd_member(ctx: RunContext, step: str, name: str, member_id: str) -> None:
    """``etcd member remove`` on a remaining member that answers (roles/etcd
    remove_member.yml: the remaining members must be healthy first; a member already
    gone is success)."""
    remaining = [n for n in ctx.inventory.etcd_members if n.name != name]
    asker = next((n.name for n in remaining if ctx.ssh.reachable(n.name)), None)
    if asker is None:
        raise _fail(ctx, step, name, "no remaining etcd member answers over SSH to remove "
                    f"the member {member_id} of {name}")
    ctx.record.log_line(f"[{step}] etcd member remove {member_id} ({name}) on {asker}")
    plays.run_plays(ctx, f"{step}-etcd", [{
        "name": f"etcd member remove {member_id} ({name})", "hosts": asker,
        "gather_facts": False,
        "tasks": [{"ansible.builtin.include_role": {"name": "etcd",
                                                    "tasks_from": "remove_member"}}],
        "vars": {"etcd_remove_member_id": member_id,
                 "etcd_remove_endpoints": [nodefacts.etcd_client_url(n.address)
                                           for n in remaining]},
    }])


def release_machine(ctx: RunContext, step: str, name: str) -> None:
    """The provider destroys the machine (no machine: nothing to do)."""
    machine = ctx.ssh.machines().get(name)
    if machine is None:
        return
    ctx.ssh.close([name])
    ctx.providers.release(machine)
    ctx.record.log_line(f"[{step}] released the machine of {name} ({machine.provider})")


def reset_and_release(ctx: RunContext, step: str, name: str, reachable: bool) -> None:
    machine = ctx.ssh.machines().get(name)
    running = machine is not None and ctx.providers.states({name: machine}).get(name) \
        is MachineState.RUNNING
    if reachable and running and machine is not None:
        reset_nodes(ctx, [name], {name: machine.address})
    else:
        ctx.record.log_line(f"[{step}] {name}: reset skipped (the host does not answer "
                            "over SSH); its machine is released")
    release_machine(ctx, step, name)


def move_vip_off(ctx: RunContext, step: str, name: str) -> None:
    """Stop keepalived on ``name`` and wait until another control-plane node holds the
    API virtual IP."""
    _on(ctx, step, name, "systemctl disable --now keepalived", "stop keepalived (VIP moves)")
    vip = shlex.quote(str(ctx.inventory.control_plane.virtual_ip))
    others = [n.name for n in ctx.inventory.control_plane_nodes if n.name != name]
    deadline = time.monotonic() + VIP_MOVE_TIMEOUT
    while time.monotonic() < deadline:
        for other in others:
            proc = ctx.ssh.run(other, f"ip -o -4 addr show | grep -qwF {vip}", timeout=15)
            if proc.returncode == 0:
                ctx.record.log_line(f"[{step}] the API VIP moved from {name} to {other}")
                return
        time.sleep(1)
    raise _fail(ctx, step, name, f"no other control-plane node ({', '.join(others)}) took "
                f"the API virtual IP within {VIP_MOVE_TIMEOUT:.0f}s after keepalived "
                f"stopped on {name}; check keepalived there (`journalctl -u keepalived`)")


# --- the steps --------------------------------------------------------------------------


class MembershipStep(Step):
    """A step for one action of the membership plan; ``plan`` lists the action's own
    steps as the planner wrote them (what the step will do, in order)."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self.name = action.kind
        self.title = f"{action.kind} {action.node}"

    def nodes(self, ctx: ClusterContext) -> list[str]:
        return [] if self.action.node == CLUSTER_WIDE else [self.action.node]

    def plan(self, ctx: ClusterContext) -> list[Change]:
        what = self.action.lines("steps") or [self.action.kind]
        return [Change(self.action.node, step, self.action.reason) for step in what]

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        node = self.action.node
        started = time.time()
        ctx.progress.node_state(self.name, node, "running", self.action.kind)
        ctx.record.log_line(f"[{self.name}] {node}: {self.action.reason}")
        self.act(ctx)
        ctx.progress.node_result(self.name, node, "changed", started, time.time(),
                                 detail=self.action.kind)
        ctx.progress.node_state(self.name, node, "changed")
        return StepOutcome(self.name, status="changed", changed=[node])

    def act(self, ctx: RunContext) -> None:
        raise NotImplementedError


class RemoveLostMember(MembershipStep):
    """Before the stages: the etcd member of a node whose machine is gone leaves."""

    def act(self, ctx: RunContext) -> None:
        remove_etcd_member(ctx, self.name, self.action.node, self._member_id())

    def _member_id(self) -> str:
        member_id = self.action.text("etcd_member_id")
        if member_id is None:
            raise StageFailed(self.name, self.action.node, "the plan names no etcd member id",
                              "-")
        return member_id


class ClearForReplacement(MembershipStep):
    """Before the stages: the old Node object goes, so the new machine can join under
    the same name, and a broken old machine is released."""

    def act(self, ctx: RunContext) -> None:
        name = self.action.node
        proc = _helper_run(ctx, self.name, name,
                           f"{KUBECTL} delete node {shlex.quote(name)} --ignore-not-found")
        if proc.returncode != 0:
            raise _fail(ctx, self.name, name,
                        f"delete the old Node object failed: {_tail(proc)}")
        machine = ctx.ssh.machines().get(name)
        if machine is not None and \
                ctx.providers.states({name: machine}).get(name) is not MachineState.MISSING:
            release_machine(ctx, self.name, name)


class MoveVipOff(MembershipStep):
    """Before the stages: a leaving control-plane node gives up the VIP. Holder or
    not: the stages rewrite the others' VRRP peers without it, and a keepalived that
    hears no peer would take the VIP as well."""

    def __init__(self, action: Action) -> None:
        super().__init__(action)
        self.name = "move-vip"
        self.title = f"move the API virtual IP off {action.node}"

    def plan(self, ctx: ClusterContext) -> list[Change]:
        return [Change(self.action.node, "stop keepalived; wait until another node holds "
                       "the API virtual IP", "it leaves the control plane")]

    def act(self, ctx: RunContext) -> None:
        move_vip_off(ctx, self.name, self.action.node)


class RemoveWorker(MembershipStep):
    def act(self, ctx: RunContext) -> None:
        name = self.action.node
        drain_and_delete(ctx, self.name, name)
        reset_and_release(ctx, self.name, name, self.action.flag("reachable"))


class RemoveControlPlane(MembershipStep):
    def act(self, ctx: RunContext) -> None:
        name = self.action.node
        if self.action.flag("reachable"):
            # keepalived must not take the VIP back while the node is drained
            _on(ctx, self.name, name, "systemctl disable --now keepalived", "stop keepalived")
        drain_and_delete(ctx, self.name, name)
        member_id = self.action.text("etcd_member_id")
        if member_id and ctx.inventory.etcd.placement != "dedicated":
            remove_etcd_member(ctx, self.name, name, member_id)
        reset_and_release(ctx, self.name, name, self.action.flag("reachable"))


class RemoveEtcdMember(RemoveLostMember):
    """After the stages: a dedicated etcd member (or a member that never started)."""

    def act(self, ctx: RunContext) -> None:
        name = self.action.node
        remove_etcd_member(ctx, self.name, name, self._member_id())
        if name != CLUSTER_WIDE:
            reset_and_release(ctx, self.name, name, self.action.flag("reachable"))


class ReleaseMachine(MembershipStep):
    def act(self, ctx: RunContext) -> None:
        release_machine(ctx, self.name, self.action.node)


def before_stages(plan: MembershipPlan) -> list[Step]:
    """Repairs and VIP moves that precede the joins."""
    steps: list[Step] = []
    for a in plan.actions:
        if a.kind == REMOVE_ETCD_MEMBER and a.flag("keep_node"):
            steps.append(RemoveLostMember(a))
        elif a.kind == REPLACE_NODE:
            steps.append(ClearForReplacement(a))
        elif a.kind == REMOVE_CONTROL_PLANE and (a.flag("holds_vip") or a.flag("reachable")):
            steps.append(MoveVipOff(a))
    return steps


def after_stages(plan: MembershipPlan) -> list[Step]:
    """Removals, in the planner's order, after every addition."""
    steps: list[Step] = []
    for a in plan.actions:
        if a.kind == DRAIN_AND_REMOVE_WORKER:
            steps.append(RemoveWorker(a))
        elif a.kind == REMOVE_CONTROL_PLANE:
            steps.append(RemoveControlPlane(a))
        elif a.kind == REMOVE_ETCD_MEMBER and not a.flag("keep_node"):
            steps.append(RemoveEtcdMember(a))
        elif a.kind == RELEASE_MACHINE:
            steps.append(ReleaseMachine(a))
    return steps


__all__ = ["ClearForReplacement", "MembershipStep", "MoveVipOff", "ReleaseMachine",
           "RemoveControlPlane", "RemoveEtcdMember", "RemoveLostMember", "RemoveWorker",
           "after_stages", "before_stages", "drain_and_delete", "move_vip_off",
           "release_machine", "remove_etcd_member", "reset_and_release"]
