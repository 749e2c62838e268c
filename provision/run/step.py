"""The one shape of all work on nodes: a Step.

A step has a name (what progress views and run records call it) and a title, and
three parts, in the spirit of k0sctl's phases and kubeadm's phases:

* ``plan(ctx)``: what it would do now, as ``Change`` rows, read from the machines and
  the cluster; changes nothing (it gets a ClusterContext, which cannot act).
  ``provision plan`` shows exactly these rows; an empty list means nothing to do.
* ``apply(ctx, changes)``: does what the plan said; ``up`` calls it with the rows
  ``plan`` just returned, so the dry run and the real run share one code path.
* ``prove(ctx, outcome)``: shows it worked (a stage runs its checks; a membership
  step waits until the cluster says so) and raises ``StageFailed`` naming the node,
  the step, what failed and the log when it did not.

Pipeline stages (provision/run/steps/stage.py), membership moves and removals
(steps/membership.py), reset (steps/reset.py), backup and restore (steps/etcd.py)
and re-running checks (steps/verify.py) are all steps; ``run_steps`` runs a list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from provision.errors import StageFailed
from provision.observe.transport import Json
from provision.run.context import ClusterContext, RunContext

CLUSTER_WIDE = "-"  # the node of a change that is about the whole cluster


@dataclass(frozen=True)
class Change:
    """One thing a step would do: on which node, what, and why."""

    node: str
    action: str
    reason: str = ""

    def to_json(self) -> Json:
        return {"node": self.node, "action": self.action, "reason": self.reason}


@dataclass
class StepOutcome:
    """What a step did: the nodes it changed and those it found already done."""

    step: str
    status: str = "ok"  # ok | changed | skipped | failed
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> Json:
        return {"name": self.step, "status": self.status, "converged": list(self.changed),
                "skipped": list(self.skipped)}


class Step(ABC):
    name: str
    title: str

    @abstractmethod
    def nodes(self, ctx: ClusterContext) -> list[str]:
        """The nodes the step is about (its rows in progress views and reports)."""

    @abstractmethod
    def plan(self, ctx: ClusterContext) -> list[Change]:
        """What ``apply`` would do now; reads, never writes."""

    @abstractmethod
    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        """Do what ``plan`` returned."""

    def prove(self, ctx: RunContext, outcome: StepOutcome) -> None:
        """Raise StageFailed unless what ``apply`` did holds; the default proves
        nothing more than ``apply``'s own waits."""
        return None


def run_steps(ctx: RunContext, steps: Sequence[Step]) -> list[StepOutcome]:
    """Plan, apply and prove each step in order; the first failure stops the run."""
    return [run_step(ctx, step) for step in steps]


def run_step(ctx: RunContext, step: Step) -> StepOutcome:
    ctx.progress.stage_started(step.name, step.nodes(ctx))
    try:
        changes = step.plan(ctx)
        outcome = step.apply(ctx, changes)
        step.prove(ctx, outcome)
    except StageFailed:
        ctx.progress.stage_finished(step.name, "failed")
        raise
    ctx.progress.stage_finished(step.name, outcome.status)
    ctx.record.log_line(f"[{step.name}] {outcome.status}: converged "
                        f"{outcome.changed or '-'} skipped {outcome.skipped or '-'}")
    return outcome


__all__ = ["CLUSTER_WIDE", "Change", "Step", "StepOutcome", "run_step", "run_steps"]
