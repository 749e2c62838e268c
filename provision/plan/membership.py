"""The reconcile planner: inventory + observed cluster -> the ordered changes.

Pure: no I/O, the same input always gives the same plan. ``plan_changes`` decides
*what* changes and in which order; applying an action is the job of ``up``.

Order (docs/operations.md explains each rule):

1. machines: start stopped machines, create machines for new nodes (inventory order);
2. repairs, for members whose machine is gone (or broken, with ``--force``): every
   lost etcd member leaves first (``remove-etcd-member``; it is already lost, and etcd
   refuses to add a member while one is down), then each ``replace-node`` makes a new
   machine that joins under the same name;
3. dedicated etcd members join, one at a time;
4. control-plane nodes join, one at a time (co-located etcd: member add, then the new
   member must be healthy before the next step);
5. every remaining load balancer gets the new backends;
6. workers join;
7. removals, after every addition (so a replace is add-then-remove): workers
   (highest numbers first), control-plane nodes one at a time (VIP moved off, LB
   backend removed, etcd member removed, reset, machine released), then dedicated
   etcd members, then machines that never joined.

Every etcd membership step is simulated; a plan that would lose quorum at any step,
remove the last control-plane node, or change a node's roles in place is refused.
(A control-plane node registered without its label, whose machine holds an API
server manifest, is a join a killed run stopped half-way: it is joined again.)
An even etcd end state, or an edit that takes etcd from tolerating a failure to a
single member, is refused unless ``force``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from provision.inventory import Inventory
from provision.observe.membership import UNSTARTED_PREFIX, Observed
from provision.observe.transport import Json

CREATE_MACHINE = "create-machine"
START_MACHINE = "start-machine"
REPLACE_NODE = "replace-node"
ADD_ETCD_MEMBER = "add-etcd-member"
JOIN_CONTROL_PLANE = "join-control-plane"
JOIN_WORKER = "join-worker"
UPDATE_LOAD_BALANCER = "update-load-balancer"
DRAIN_AND_REMOVE_WORKER = "drain-and-remove-worker"
REMOVE_CONTROL_PLANE = "remove-control-plane"
REMOVE_ETCD_MEMBER = "remove-etcd-member"
RELEASE_MACHINE = "release-machine"
NOTHING = "nothing"

# How a joining node's etcd member comes to be (Action.details["etcd"]).
BOOTSTRAP = "bootstrap a new etcd cluster"
MEMBER_ADD = "member add"
RESUME_MEMBER = "added by an earlier run: start it"
ALREADY_MEMBER = "already a member"

KINDS = (CREATE_MACHINE, START_MACHINE, REPLACE_NODE, ADD_ETCD_MEMBER, JOIN_CONTROL_PLANE,
         JOIN_WORKER, UPDATE_LOAD_BALANCER, DRAIN_AND_REMOVE_WORKER, REMOVE_CONTROL_PLANE,
         REMOVE_ETCD_MEMBER, RELEASE_MACHINE, NOTHING)

# Kinds `up` applies after the stages (provision/membership.py): everything else is
# done by the stages themselves, or before them.
REMOVAL_KINDS = frozenset({DRAIN_AND_REMOVE_WORKER, REMOVE_CONTROL_PLANE, REMOVE_ETCD_MEMBER,
                           RELEASE_MACHINE})

# Kinds that change etcd or Kubernetes membership: `up` runs them one at a time.
MEMBERSHIP_KINDS = frozenset({REPLACE_NODE, ADD_ETCD_MEMBER, JOIN_CONTROL_PLANE,
                              REMOVE_CONTROL_PLANE, REMOVE_ETCD_MEMBER})


@dataclass
class Action:
    kind: str
    node: str
    reason: str
    details: Json = field(default_factory=dict)

    def flag(self, key: str) -> bool:
        return bool(self.details.get(key))

    def text(self, key: str) -> str | None:
        value = self.details.get(key)
        return value if isinstance(value, str) else None

    def lines(self, key: str) -> list[str]:
        value = self.details.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    def to_json(self) -> Json:
        return {"kind": self.kind, "node": self.node, "reason": self.reason,
                "details": self.details}


@dataclass
class MembershipPlan:
    """Ordered actions. With any refusal, ``up`` must change nothing (``ok`` False);
    the actions are still listed so the operator sees what the edit meant."""

    actions: list[Action] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    force: bool = False
    fresh: bool = False  # no cluster yet: `up` may run the whole pipeline instead

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.kind != NOTHING]

    def kinds(self) -> list[tuple[str, str]]:
        """(kind, node) pairs: the shape tests and summaries compare."""
        return [(a.kind, a.node) for a in self.actions]

    def to_json(self) -> Json:
        return {"ok": self.ok, "force": self.force, "fresh": self.fresh,
                "actions": [a.to_json() for a in self.actions],
                "refusals": list(self.refusals), "warnings": list(self.warnings)}

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    def to_table(self) -> str:
        rows = [(str(i), a.kind, a.node, a.reason) for i, a in enumerate(self.actions, 1)]
        header = ("#", "action", "node", "reason")
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(3)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header[:3], widths, strict=True))
                 + "  " + header[3]]
        for row in rows:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row[:3], widths, strict=True))
                         + "  " + row[3])
        if self.warnings:
            lines.append("")
            lines += [f"warning: {w}" for w in self.warnings]
        if self.refusals:
            lines.append("")
            lines += [f"refused: {r}" for r in self.refusals]
            lines.append("nothing will be changed: fix the inventory"
                         + ("" if self.force else " (or pass --force where the message allows)"))
        return "\n".join(lines)


def natural_key(name: str) -> tuple[int | str, ...]:
    """worker-2 < worker-10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def quorum(members: int) -> int:
    return members // 2 + 1


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names, key=natural_key)) or "none"


class _Etcd:
    """etcd membership as it would be after each planned step (name -> healthy)."""

    def __init__(self, members: dict[str, bool]) -> None:
        self.members = dict(members)
        self.moves: list[tuple[int, int]] = []  # (before, after), one per add/remove

    @property
    def changed(self) -> bool:
        return bool(self.moves)

    def _moved(self, before: int) -> None:
        self.moves.append((before, len(self.members)))

    def healthy(self) -> int:
        return sum(self.members.values())

    def lost_quorum(self) -> bool:
        return bool(self.members) and self.healthy() < quorum(len(self.members))

    def add(self, name: str) -> str | None:
        """Refusal message, or None (then the member is counted healthy: `up` waits
        for it to be healthy before the next step)."""
        n = len(self.members)
        down = [m for m, ok in self.members.items() if not ok]
        # etcd's strict reconfig check: a voting member is added only when every
        # member is connected (1 -> 2 is etcd's own exception, for restores).
        if down:
            return (f"cannot add etcd member {name}: member(s) {_names(down)} are not "
                    f"healthy, and etcd refuses to add a member while any is down "
                    f"({n} members, {self.healthy()} healthy); repair or remove them first")
        self.members[name] = True
        self._moved(n)
        return None

    def remove(self, name: str) -> str | None:
        n = len(self.members)
        if n <= 1:
            return (f"cannot remove etcd member {name}: it is the last member; removing it "
                    "would end the cluster's data (use `provision destroy` for that)")
        after_healthy = self.healthy() - (1 if self.members.get(name) else 0)
        if after_healthy < quorum(n - 1):
            return (f"removing etcd member {name} would lose quorum: {n - 1} members would "
                    f"remain with {after_healthy} healthy, and {quorum(n - 1)} are needed; "
                    "repair the unhealthy members first")
        del self.members[name]
        self._moved(n)
        return None


def plan_changes(inv: Inventory, observed: Observed, *, force: bool = False) -> MembershipPlan:
    """What to change so the cluster matches ``inv``, in a safe order."""
    return _Planner(inv, observed, force).plan()


class _Planner:
    def __init__(self, inv: Inventory, obs: Observed, force: bool) -> None:
        self.inv = inv
        self.obs = obs
        self.force = force
        self.plan_ = MembershipPlan(force=force, warnings=list(obs.problems))
        self.desired = {n.name: n for n in inv.nodes}
        self.order = [n.name for n in inv.nodes]
        self.dedicated = inv.etcd.placement == "dedicated"
        self.etcd = _Etcd({name: m.healthy and m.started
                           for name, m in obs.etcd_members.items()})
        # control-plane nodes Kubernetes knows, as they would be after each step
        self.cps = {n for n, k in obs.k8s_nodes.items() if k.is_control_plane}
        # Registered by a kubeadm join --control-plane that stopped before it labelled
        # the Node (a killed run): the machine holds an API server manifest, which a
        # worker never has. Not a role change: the join is undone and done again.
        self.half_joined = {
            n.name for n in inv.control_plane_nodes
            if n.name in obs.k8s_nodes and not obs.k8s_nodes[n.name].is_control_plane
            and n.name in obs.api_server_manifests}
        self.replaced: set[str] = set()
        self.moves_seen = 0

    # --- helpers ------------------------------------------------------------------

    def act(self, kind: str, node: str, reason: str, **details: object) -> None:
        # Say how the etcd membership moves with this action (the table's reader
        # checks the quorum math at a glance).
        moves = self.etcd.moves[self.moves_seen:]
        self.moves_seen = len(self.etcd.moves)
        if moves:
            counts = [moves[0][0], *(after for _, after in moves)]
            reason = f"{reason} (etcd {' -> '.join(map(str, counts))} members)"
        self.plan_.actions.append(Action(kind, node, reason, details))

    def refuse(self, message: str) -> None:
        if message not in self.plan_.refusals:
            self.plan_.refusals.append(message)

    def warn(self, message: str) -> None:
        if message not in self.plan_.warnings:
            self.plan_.warnings.append(message)

    def machine(self, name: str) -> str:
        return self.obs.machines.get(name, "missing")

    def in_cluster(self, name: str) -> bool:
        return name in self.obs.k8s_nodes or name in self.obs.etcd_members

    def unreachable(self, name: str) -> bool:
        return self.machine(name) == "running" and name not in self.obs.reachable

    def roles(self, name: str) -> frozenset[str]:
        return frozenset(self.desired[name].roles)

    def etcd_role(self, name: str) -> bool:
        return "etcd" in self.roles(name)

    def api_servers(self) -> list[str]:
        return sorted(self.cps, key=natural_key)

    # --- the plan -----------------------------------------------------------------

    def plan(self) -> MembershipPlan:
        obs = self.obs
        if not obs.k8s_known or not obs.etcd_known:
            return self.unknown()
        self.check_roles()
        self.plan_.fresh = not obs.k8s_nodes and not obs.etcd_members
        if self.etcd.lost_quorum():
            self.refuse(
                f"etcd has lost quorum: {self.etcd.healthy()} of {len(self.etcd.members)} "
                f"members healthy ({_names(n for n, ok in self.etcd.members.items() if ok)}"
                f" of {_names(self.etcd.members)}); no membership change can be committed. "
                "Restore from a backup (docs/operations.md, \"Backup and restore\")")
        if self.cps and self.obs.reachable & self.cps and self.obs.vip_holder is None:
            self.warn("no control-plane node holds the API virtual IP "
                      f"{self.inv.control_plane.virtual_ip}; `up` re-converges the api-lb "
                      "stage")
        self.machines()
        self.repairs()
        if self.dedicated:
            self.etcd_joins()
        joined_cps = self.cp_joins()
        self.load_balancers(joined_cps)
        self.worker_joins()
        self.removals()
        self.end_state_rules()
        if not self.plan_.actions and not self.plan_.refusals:
            self.act(NOTHING, "-", "the cluster matches the inventory" + (
                "; see the warnings" if self.plan_.warnings else
                f" ({len(self.order)} nodes running, joined and Ready)"))
        return self.plan_

    def unknown(self) -> MembershipPlan:
        """Membership could not be observed: only machine actions, or a refusal."""
        self.machines(membership_known=False)
        what = [w for w, known in (("Kubernetes nodes", self.obs.k8s_known),
                                   ("etcd members", self.obs.etcd_known)) if not known]
        why = f"cannot observe the cluster's {' and '.join(what)}"
        if self.plan_.actions:
            self.warn(f"{why}: only machines are started or created now; plan again once "
                      "they run")
        else:
            self.refuse(f"{why}, so no membership change is planned; check that a "
                        "control-plane node answers over SSH (`provision ssh NODE`) and see "
                        "the problems above")
        return self.plan_

    def check_roles(self) -> None:
        """Roles never change in place: remove the node, then add it under a new name."""
        colocated = {n for n, k in self.obs.k8s_nodes.items() if k.is_control_plane} & set(
            self.obs.etcd_members)
        if self.dedicated and colocated:
            self.refuse(
                f"etcd.placement is dedicated, but etcd runs on control-plane nodes "
                f"{_names(colocated)}: moving etcd between placements is not supported "
                "in place; keep etcd.placement: control-plane")
            return
        for name in self.order:
            want_cp = "control-plane" in self.roles(name)
            k8s = self.obs.k8s_nodes.get(name)
            if name in self.half_joined:
                self.warn(f"{name}: its kubeadm join --control-plane stopped half-way (the "
                          "Node is registered without the control-plane label); `up` "
                          "undoes and redoes the join")
            elif k8s is not None and k8s.is_control_plane != want_cp:
                have = "control-plane" if k8s.is_control_plane else "worker"
                want = "control-plane" if want_cp else "worker"
                self.refuse(
                    f"{name} is a {have} node in the cluster but a {want} in the "
                    "inventory: a node's roles cannot change in place; remove it in one "
                    "edit and add it back under a new name in another")
            if name in self.obs.etcd_members and not self.etcd_role(name):
                self.refuse(
                    f"{name} runs an etcd member but has no etcd role in the inventory: a "
                    "node's roles cannot change in place; remove it in one edit and add it "
                    "back under a new name in another")

    def machines(self, membership_known: bool = True) -> None:
        for name in self.order:
            state = self.machine(name)
            if state == "stopped":
                self.act(START_MACHINE, name, "the machine exists but is stopped",
                         provider=self.desired[name].provider)
            elif state == "missing" and not (membership_known and self.in_cluster(name)):
                self.act(CREATE_MACHINE, name, "new node: no machine exists yet",
                         provider=self.desired[name].provider,
                         address=str(self.desired[name].address))

    def broken(self, name: str) -> bool:
        """Running machine that answers neither SSH nor Kubernetes, nor etcd."""
        if not self.unreachable(name):
            return False
        k8s = self.obs.k8s_nodes.get(name)
        member = self.obs.etcd_members.get(name)
        return (k8s is None or not k8s.ready) and (member is None or not member.healthy)

    def repairs(self) -> None:
        def phase(name: str) -> int:
            roles = self.roles(name)
            return 0 if "control-plane" not in roles and "etcd" in roles else (
                1 if "control-plane" in roles else 2)

        todo: list[tuple[str, str]] = []  # (node, reason)
        for name in sorted(self.order, key=lambda n: (phase(n), self.order.index(n))):
            if not self.in_cluster(name):
                continue
            state = self.machine(name)
            if state == "missing":
                todo.append((name, "its machine is gone but it is still a cluster member"))
            elif self.broken(name):
                if self.force:
                    todo.append((name, "its machine is broken (no SSH, not Ready) and "
                                       "--force replaces it"))
                else:
                    self.warn(f"{name}: the machine runs but answers neither SSH nor the "
                              "cluster; it is not replaced automatically (that destroys "
                              "its machine): fix it, or run with --force to replace it")
            else:
                if self.unreachable(name):
                    self.warn(f"{name}: the machine runs but does not answer over SSH; "
                              "the cluster still reports it healthy, so it is left alone")
                k8s = self.obs.k8s_nodes.get(name)
                if k8s is not None and not k8s.ready and state == "running" \
                        and not self.unreachable(name) and name not in self.half_joined:
                    self.warn(f"{name} is NotReady in Kubernetes; `up` re-converges its "
                              "stages")
        # Every lost member leaves before any new one joins: it is already lost (no
        # fault tolerance is given up), and etcd adds no member while one is down.
        for name, _ in todo:
            member = self.obs.etcd_members.get(name)
            if member is None:
                continue
            others = sorted(set(self.etcd.members) - {name}, key=natural_key)
            refusal = self.etcd.remove(name)
            if refusal:
                self.refuse(f"replacing {name}: {refusal}")
            self.act(REMOVE_ETCD_MEMBER, name,
                     "its member is lost: it leaves before its replacement joins",
                     etcd_member_id=member.member_id, keep_node=True,
                     steps=[f"check etcd members {_names(others)} are healthy",
                            f"etcd member remove {member.member_id}"],
                     **self.reach(name))
        for name, reason in todo:
            state = self.machine(name)
            steps = []
            if name in self.obs.k8s_nodes:
                steps.append("kubectl delete node (the old Node object)")
            if state != "missing":
                steps.append("release the old machine")
            steps.append("create a new machine")
            if self.etcd_role(name):
                refusal = self.etcd.add(name)
                if refusal:
                    self.refuse(f"replacing {name}: {refusal}")
                steps.append("etcd member add, start it, wait until it is healthy")
            if "control-plane" in self.roles(name):
                steps.append("kubeadm join --control-plane")
            elif "worker" in self.roles(name):
                steps.append("kubeadm join")
            self.replaced.add(name)
            self.act(REPLACE_NODE, name, reason, roles=sorted(self.roles(name)),
                     steps=steps, api_servers=self.api_servers())

    def etcd_joins(self) -> None:
        for node in self.inv.etcd_members:
            name = node.name
            if "control-plane" in node.roles or name in self.replaced:
                continue
            if not self.need_etcd_add(name):
                continue
            if self.skip_unreachable(name, "its etcd member is not added"):
                continue
            how = self.join_etcd(name, "")
            reason = ("first etcd member: starts a new etcd cluster" if how == BOOTSTRAP
                      else "new etcd member in the inventory")
            self.act(ADD_ETCD_MEMBER, name, reason, etcd=how, bootstrap=how == BOOTSTRAP,
                     member_add=how == MEMBER_ADD, wait_healthy=True,
                     api_servers=self.api_servers())

    def join_etcd(self, name: str, context: str) -> str:
        """Plan one member joining; returns how (BOOTSTRAP, MEMBER_ADD, RESUME_MEMBER)."""
        member = self.obs.etcd_members.get(name)
        if member is not None and not member.started:
            # added by a run that stopped before the member started: start it, no add
            self.etcd.members[name] = True
            return RESUME_MEMBER
        bootstrap = not self.etcd.members
        refusal = self.etcd.add(name)
        if refusal:
            self.refuse(f"{context}{refusal}")
        return BOOTSTRAP if bootstrap else MEMBER_ADD

    def need_etcd_add(self, name: str) -> bool:
        member = self.obs.etcd_members.get(name)
        return member is None or not member.started

    def skip_unreachable(self, name: str, what: str) -> bool:
        if self.unreachable(name):
            self.warn(f"{name}: the machine runs but does not answer over SSH; {what} this "
                      "time")
            return True
        return False

    def cp_joins(self) -> list[str]:
        joined: list[str] = []
        target_lb = self.lb_target()
        for node in self.inv.control_plane_nodes:
            name = node.name
            if name in self.replaced:
                joined.append(name)
                continue
            in_k8s = name in self.obs.k8s_nodes and name not in self.half_joined
            member_needed = not self.dedicated and self.need_etcd_add(name)
            if in_k8s and not member_needed:
                continue
            if self.skip_unreachable(name, "it is not joined"):
                continue
            if in_k8s:  # a control-plane node without its co-located etcd member
                how = self.join_etcd(name, "")
                self.act(ADD_ETCD_MEMBER, name, "control-plane node without its etcd member",
                         etcd=how, bootstrap=how == BOOTSTRAP, member_add=how == MEMBER_ADD,
                         wait_healthy=True, api_servers=self.api_servers())
                continue
            init = not self.cps and not joined
            etcd = "dedicated"
            if not self.dedicated:
                etcd = (ALREADY_MEMBER if name in self.obs.etcd_members
                        and self.obs.etcd_members[name].started
                        else self.join_etcd(name, f"joining control-plane node {name}: "))
            reason = ("first control-plane node: kubeadm init" if init else
                      "its control-plane join stopped half-way: undone and done again"
                      if name in self.half_joined else
                      "control-plane node in the inventory, not in the cluster")
            self.act(JOIN_CONTROL_PLANE, name, reason, init=init, etcd=etcd,
                     wait_healthy=True, load_balancer_backends=sorted(
                         target_lb | {name}, key=natural_key))
            joined.append(name)
            self.cps.add(name)
        return joined

    def removed_names(self) -> list[str]:
        # every machine a provider still holds counts, whatever its state: a bare-metal
        # machine whose install failed is "missing" (nothing usable on it) but its record
        # (and its BMC) stay provision's until it is released
        seen: set[str] = set(self.obs.k8s_nodes) | set(self.obs.etcd_members)
        seen |= set(self.obs.machines)
        return sorted(seen - set(self.desired), key=natural_key, reverse=True)

    def lb_target(self) -> set[str]:
        """Backends every load balancer should have: the inventory's control plane. A
        control-plane node that is leaving loses its backend with the additions, before
        it is drained (the api-lb stage renders backends from the inventory), so no new
        connection goes to an API server about to stop."""
        return {n.name for n in self.inv.control_plane_nodes}

    def load_balancers(self, joined: list[str]) -> None:
        target = self.lb_target()
        for node in self.inv.control_plane_nodes:
            name = node.name
            if name in joined or name not in self.obs.k8s_nodes:
                continue  # a joining node's haproxy is written by its join
            if name not in self.obs.reachable:
                if self.machine(name) == "running":
                    self.warn(f"{name}: cannot read its load balancer configuration "
                              "(unreachable)")
                continue
            have = self.obs.lb_backends.get(name)
            if have == target:
                continue
            if have is None:
                reason = "no haproxy configuration found"
            else:
                parts = []
                if target - have:
                    parts.append(f"add {_names(target - have)}")
                if have - target:
                    parts.append(f"remove {_names(have - target)}")
                reason = "backends follow the control plane: " + "; ".join(parts)
            self.act(UPDATE_LOAD_BALANCER, name, reason,
                     backends=sorted(target, key=natural_key),
                     add=sorted(target - (have or set()), key=natural_key),
                     remove=sorted((have or set()) - target, key=natural_key))

    def worker_joins(self) -> None:
        for node in self.inv.worker_nodes:
            name = node.name
            if "control-plane" in node.roles or name in self.replaced:
                continue
            if name in self.obs.k8s_nodes:
                continue
            if self.skip_unreachable(name, "it is not joined"):
                continue
            self.act(JOIN_WORKER, name, "worker in the inventory, not in the cluster")

    def removals(self) -> None:
        names = self.removed_names()
        k8s = self.obs.k8s_nodes

        def is_cp(n: str) -> bool:
            return (n in k8s and k8s[n].is_control_plane) or (
                not self.dedicated and n in self.obs.etcd_members and n not in k8s
                and not n.startswith(UNSTARTED_PREFIX))

        workers = [n for n in names if n in k8s and not is_cp(n)]
        cps = [n for n in names if is_cp(n)]
        etcd_only = [n for n in names if n in self.obs.etcd_members and not is_cp(n)]
        machines_only = [n for n in names if not self.in_cluster(n)]
        for name in workers:
            self.act(DRAIN_AND_REMOVE_WORKER, name, "no longer in the inventory",
                     steps=["cordon", "drain (respects PodDisruptionBudgets)",
                            "kubectl delete node", *self.reset_and_release(name)],
                     **self.reach(name))
            if name in self.obs.etcd_members:
                self.remove_member(name, "a worker that still runs an etcd member")
        for name in cps:
            self.remove_control_plane(name)
        for name in etcd_only:
            if name in workers:
                continue
            self.remove_member(name, "no longer in the inventory")
        for name in machines_only:
            self.act(RELEASE_MACHINE, name,
                     "a machine of a node no longer in the inventory (never joined)",
                     **self.reach(name))

    def reach(self, name: str) -> Json:
        return {"reachable": name in self.obs.reachable,
                "machine": self.obs.machines.get(name, "unknown")}

    def reset_and_release(self, name: str) -> list[str]:
        reset = ("kubeadm reset and clean the host" if name in self.obs.reachable
                 else "reset skipped: the host does not answer over SSH")
        return [reset, "release the machine"]

    def remove_control_plane(self, name: str) -> None:
        remaining = self.cps - {name}
        if name in self.cps and not remaining:
            self.refuse(f"removing {name} would remove the last control-plane node: the "
                        "cluster would have no API server; keep at least one control-plane "
                        "node in the inventory (a replacement joins before the old one "
                        "leaves)")
        lb_hosts = sorted(remaining, key=natural_key)
        steps = []
        holds_vip = self.obs.vip_holder == name
        if holds_vip:
            steps.append("move the API virtual IP off it (stop keepalived; wait until "
                         "another node holds it)")
        steps.append(f"(its haproxy backend on {_names(lb_hosts)} is removed with the "
                     "additions, by the api-lb stage)")
        steps += ["cordon and drain", "kubectl delete node"]
        member = self.obs.etcd_members.get(name)
        if member is not None and not self.dedicated:
            others = sorted(set(self.etcd.members) - {name}, key=natural_key)
            refusal = self.etcd.remove(name)
            if refusal:
                self.refuse(refusal)
            steps.append(f"check etcd members {_names(others)} are healthy, then etcd member "
                         f"remove {member.member_id}")
        steps += self.reset_and_release(name)
        self.cps.discard(name)
        self.act(REMOVE_CONTROL_PLANE, name, "no longer in the inventory",
                 holds_vip=holds_vip, lb_hosts=lb_hosts,
                 etcd_member_id=member.member_id if member else None,
                 steps=steps, **self.reach(name))

    def remove_member(self, name: str, reason: str) -> None:
        member = self.obs.etcd_members[name]
        others = sorted(set(self.etcd.members) - {name}, key=natural_key)
        refusal = self.etcd.remove(name)
        if refusal:
            self.refuse(refusal)
        node = "-" if name.startswith(UNSTARTED_PREFIX) else name
        if node == "-":
            reason = f"an added member that never started ({member.peer_url})"
        self.act(REMOVE_ETCD_MEMBER, node, reason, etcd_member_id=member.member_id,
                 steps=[f"check etcd members {_names(others)} are healthy",
                        f"etcd member remove {member.member_id}",
                        f"update --etcd-servers on API servers {_names(self.cps)}",
                        *([] if node == "-" else self.reset_and_release(name))],
                 **self.reach(name))

    def end_state_rules(self) -> None:
        """Rules about where the etcd cluster ends, when this plan changes it."""
        if not self.etcd.changed:
            return
        before = len(self.obs.etcd_members)
        after = len(self.etcd.members)
        end = _names(self.etcd.members)
        if after % 2 == 0 and not self.force:
            self.refuse(
                f"etcd would end with {after} members ({end}): an even count tolerates no "
                f"more failures than {after - 1} and a network split can leave no "
                f"majority; use {after - 1} or {after + 1} members, or pass --force")
        if after == 1 and before >= 3 and not self.force:
            gone = _names(set(self.obs.etcd_members) - set(self.etcd.members))
            self.refuse(
                f"removing {gone} in one edit takes etcd from {before} members to 1 ({end}): "
                "on the way it has 2 members (an even count: either failing loses quorum) "
                "and it ends tolerating no failure; keep at least 3 members, or pass "
                "--force to accept a single-member etcd")


__all__ = ["KINDS", "MEMBERSHIP_KINDS", "REMOVAL_KINDS", "Action", "MembershipPlan", "natural_key",
           "plan_changes", "quorum"]
