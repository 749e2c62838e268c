"""Re-running a stage's checks without converging anything: ``provision verify``, the
membership checks after removals, and the last part of a restore."""

from __future__ import annotations

import time
from collections.abc import Sequence

from provision.pipeline import Stage
from provision.run.context import ClusterContext, RunContext
from provision.run.step import Change, StepOutcome
from provision.run.steps.stage import StageStep, check_stage


class CheckStage(StageStep):
    """Every check of one stage on its nodes; the outcome says ``failed`` when any
    check failed (the caller decides whether that stops it)."""

    def __init__(self, stage: Stage, only: Sequence[str] = ()) -> None:
        super().__init__(stage, only)
        self.title = f"check {stage.name}"

    def plan(self, ctx: ClusterContext) -> list[Change]:
        return []  # checks change nothing

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        names = self.nodes(ctx)
        started = time.time()
        result = check_stage(ctx, self.stage, names, suffix="verify")
        failed = result.failed_nodes() | (set(names) if result.error else set())
        for name in names:
            status = "failed" if name in failed else "ok"
            ctx.progress.node_result(self.name, name, status, started, time.time(),
                                     detail=result.error)
            ctx.progress.node_state(self.name, name, status)
        return StepOutcome(self.name, status="failed" if failed else "ok",
                           skipped=[n for n in names if n not in failed])


__all__ = ["CheckStage"]
