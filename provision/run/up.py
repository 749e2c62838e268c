"""What ``up`` does, and what ``plan`` says it will do: one list of steps for both.

``up`` on the whole pipeline reconciles the cluster with the inventory:

1. observe the machines and the cluster's membership, plan the membership changes
   (provision/plan/membership.py) and refuse unsafe ones before anything is touched;
2. run the steps, in order: the repairs and VIP moves that must precede any join
   (steps/membership.py ``before_stages``), every pipeline stage (steps/stage.py),
   then the removals (``after_stages``);
3. the removals follow a fresh observation: after a crash, or when the first look
   could not see the membership, that is what is really left to do; if anything was
   removed, the stages whose checks prove membership run their checks again.

``plan`` observes the same way and lists the same steps with what each would do
(its ``plan``), without acting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from provision.errors import BadInput, ProvisionError
from provision.observe.membership import Observed, observe_membership
from provision.observe.transport import Json
from provision.pipeline import Stage
from provision.plan.membership import REMOVAL_KINDS, MembershipPlan, plan_changes
from provision.providers.base import MachineState
from provision.run.context import ClusterContext, RunContext
from provision.run.step import Change, Step, StepOutcome, run_steps
from provision.run.steps.membership import after_stages, before_stages
from provision.run.steps.stage import stage_step
from provision.run.steps.verify import CheckStage

# Stages whose checks prove membership; run again after removals.
MEMBERSHIP_CHECKS = ("etcd", "api-lb", "control-plane", "workers")


class PlanRefused(BadInput):
    """The inventory asks for a change that is unsafe (quorum, last control plane)."""

    def __init__(self, plan: MembershipPlan) -> None:
        self.plan = plan
        super().__init__("the plan is refused; nothing was changed:\n  "
                         + "\n  ".join(plan.refusals))


def observe(ctx: ClusterContext) -> Observed:
    """What the machines and the cluster say now (nothing is changed)."""
    machines = ctx.ssh.machines()
    states = ctx.providers.states(machines)
    if any(s is MachineState.RUNNING for s in states.values()):
        ctx.ssh.write_config()  # includes the machines of removed nodes
    return observe_membership(ctx.inventory, {k: str(v) for k, v in states.items()},
                              ctx.ssh.runner())


def plan_membership(ctx: ClusterContext) -> tuple[MembershipPlan, Observed]:
    observed = observe(ctx)
    return plan_changes(ctx.inventory, observed, force=ctx.options.force), observed


def membership_known(observed: Observed) -> bool:
    return observed.k8s_known and observed.etcd_known


@dataclass
class PlannedStep:
    step: Step
    changes: list[Change]

    def to_json(self) -> Json:
        return {"step": self.step.name, "title": self.step.title,
                "changes": [c.to_json() for c in self.changes]}


@dataclass
class UpPlan:
    """``provision plan``: the membership plan and every step ``up`` would run, each
    with what it would do."""

    membership: MembershipPlan
    observed: Observed
    steps: list[PlannedStep] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.membership.ok

    def to_json(self) -> Json:
        return {**self.membership.to_json(), "observed": self.observed.to_json(),
                "steps": [s.to_json() for s in self.steps]}


def steps_for(ctx: ClusterContext, stages: Sequence[Stage],
              plan: MembershipPlan, observed: Observed) -> list[Step]:
    """The steps of a full ``up``, in order, for this membership plan."""
    known = membership_known(observed)
    before = before_stages(plan) if known else []
    after = after_stages(plan) if known else []
    return [*before, *(stage_step(s) for s in stages), *after]


def plan_up(ctx: ClusterContext, stages: Sequence[Stage]) -> UpPlan:
    plan, observed = plan_membership(ctx)
    steps = steps_for(ctx, stages, plan, observed)
    return UpPlan(plan, observed, [PlannedStep(s, s.plan(ctx)) for s in steps])


def run_stages(ctx: RunContext, stages: Sequence[Stage],
               only: Sequence[str] = ()) -> list[StepOutcome]:
    """``up --until/--only/--nodes``: the stages alone, no membership changes."""
    unknown = set(only) - {n.name for n in ctx.inventory.nodes}
    if unknown:
        raise BadInput(f"--nodes: no such node(s) in the inventory: {', '.join(sorted(unknown))}")
    return run_steps(ctx, [stage_step(s, only) for s in stages])


def reconcile(ctx: RunContext, stages: Sequence[Stage]) -> list[StepOutcome]:
    """A full ``up`` (see the module docstring); returns the stages' outcomes."""
    plan, observed = plan_membership(ctx)
    ctx.record.write_json("plan.json", {"observed": observed.to_json(), "plan": plan.to_json()})
    known = membership_known(observed)
    if known and not plan.ok:
        raise PlanRefused(plan)
    for warning in plan.warnings:
        ctx.progress.message(f"plan: {warning}")
    leaving = {a.node for a in plan.actions if a.kind in REMOVAL_KINDS}
    ctx.leaving = leaving | set(ctx.providers.orphans())
    if known:
        run_steps(ctx, before_stages(plan))
    outcomes = run_steps(ctx, [stage_step(s) for s in stages])

    after, observed = plan_membership(ctx)
    ctx.record.write_json("plan-after-stages.json", {"observed": observed.to_json(),
                                                     "plan": after.to_json()})
    if not after.ok:
        raise PlanRefused(after)
    left = [a for a in after.changes if a.kind not in REMOVAL_KINDS]
    if left:
        raise ProvisionError(
            "the stages finished but the cluster still differs from the inventory: "
            + "; ".join(f"{a.kind} {a.node} ({a.reason})" for a in left)
            + f"\n  observation and plan: {ctx.record.dir / 'plan-after-stages.json'}")
    removed = run_steps(ctx, after_stages(after))
    if removed:
        ctx.leaving = set()
        checks = run_steps(ctx, [CheckStage(s) for s in stages if s.name in MEMBERSHIP_CHECKS])
        if any(c.status == "failed" for c in checks):
            names = sorted({n for o in removed for n in o.changed})
            raise ProvisionError(f"removed {', '.join(names)}, but the membership checks "
                                 f"failed; see {ctx.record.report_html}")
    return outcomes


__all__ = ["MEMBERSHIP_CHECKS", "PlanRefused", "PlannedStep", "UpPlan", "membership_known",
           "observe", "plan_membership", "plan_up", "reconcile", "run_stages", "steps_for"]
