"""Reset: a node back to a clean OS (roles/reset). Kubernetes, etcd, their data and
interfaces go; the OS, its packages and the firewall rules that keep SSH reachable
stay. Used by ``destroy --keep-machines`` and by every removal of a reachable node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from provision.run import plays
from provision.run.context import ClusterContext, RunContext
from provision.run.step import Change, Step, StepOutcome

NAME = "reset"


def reset_nodes(ctx: RunContext, names: Sequence[str],
                extra_hosts: Mapping[str, str] | None = None) -> None:
    """``extra_hosts``: machines the inventory no longer names (name -> address)."""
    if names:
        plays.run_plays(ctx, NAME, [{"name": "reset to a clean OS", "hosts": ",".join(names),
                                     "gather_facts": False, "roles": ["reset"]}], extra_hosts)


class ResetNodes(Step):
    """Every machine of the cluster, the inventory's and removed nodes' alike."""

    name = NAME
    title = "reset every node to a clean OS (machines kept)"

    def nodes(self, ctx: ClusterContext) -> list[str]:
        return sorted(ctx.ssh.machines())

    def plan(self, ctx: ClusterContext) -> list[Change]:
        return [Change(name, "kubeadm reset; Kubernetes, etcd and their data removed",
                       "destroy --keep-machines") for name in self.nodes(ctx)]

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        machines = ctx.ssh.machines()
        names = [c.node for c in changes]
        inventory = {n.name for n in ctx.inventory.nodes}
        reset_nodes(ctx, names, {n: m.address for n, m in machines.items()
                                 if n in names and n not in inventory})
        return StepOutcome(self.name, status="changed" if names else "skipped",
                           changed=names)


__all__ = ["NAME", "ResetNodes", "reset_nodes"]
