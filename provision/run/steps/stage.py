"""Pipeline stages as steps: the machines stage (providers) and role stages (Ansible).

A role stage, on its target nodes:

1. plan: the stage's input hash per node (role files and their meta dependencies,
   the variables the node gets, artifact versions) against the hash stored on the
   node by the last successful converge (``<marker dir>/<stage>``); a node whose
   hash differs, or that has none, is converged;
2. apply: nodes whose hash matches are checked first and skipped if their checks
   pass, the others converged (the playbook records the new hash on each node only
   after all its roles passed);
3. prove: the converged nodes' checks; the first failing node stops the run with
   the node, the stage, the failing task or check, and the log file.

Nothing here remembers earlier runs: the nodes themselves say what is done.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from provision import clustervars
from provision.errors import BadInput, ProviderError, StageFailed
from provision.executors import ansible
from provision.executors.ssh import ensure_cluster_keypair
from provision.inventory import Node
from provision.observe.markers import read_markers
from provision.pipeline import Stage
from provision.providers.base import Machine, MachineState
from provision.run import plays
from provision.run.context import ClusterContext, RunContext
from provision.run.step import Change, Step, StepOutcome
from provision.run.verify import VerifyResult, run_checks


def stage_nodes(ctx: ClusterContext, stage: Stage, only: Sequence[str] = ()) -> list[Node]:
    """The inventory nodes a stage targets, narrowed to ``only`` when given."""
    return [n for n in ctx.inventory.nodes if stage.targets_node(set(n.roles))
            and (not only or n.name in only)]


def role_closure(roles_dir: Path, roles: Sequence[str]) -> list[str]:
    """``roles`` and, depth first, every role they depend on (meta/main.yml
    ``dependencies``): the files that decide what the stage does."""
    out: list[str] = []

    def visit(role: str) -> None:
        if role in out:
            return
        root = roles_dir / role
        if not root.is_dir():
            raise BadInput(f"pipeline names role {role!r} but {root} does not exist")
        out.append(role)
        meta = root / "meta" / "main.yml"
        data = yaml.safe_load(meta.read_text()) if meta.is_file() else None
        deps = data.get("dependencies") if isinstance(data, dict) else None
        for dep in deps or []:
            visit(str(dep["role"] if isinstance(dep, dict) else dep))

    for role in roles:
        visit(role)
    return out


def _role_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_hash(ctx: ClusterContext, stage: Stage, node: Node,
               gvars: dict[str, object]) -> str:
    """Everything that decides what converging this stage on this node does."""
    groups = clustervars.groups(ctx.inventory)
    if stage.sees is not None:
        groups = {g: groups[g] for g in stage.sees}
        seen = {n for members in groups.values() for n in members} | {node.name}
        nodes = gvars.get("provision_nodes")
        gvars = {**gvars, "provision_nodes": [
            n for n in (nodes if isinstance(nodes, list) else [])
            if isinstance(n, dict) and n.get("name") in seen]}
    inputs = {
        "stage": stage.name,
        "roles": {r: _role_digest(ctx.roles_dir / r)
                  for r in role_closure(ctx.roles_dir, stage.role_names)},
        "global": gvars,
        "host": clustervars.host_vars(node.name, node.address, node.roles),
        "groups": groups,
        "artifacts": ctx.artifact_versions(),
    }
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def check_stage(ctx: RunContext, stage: Stage, names: list[str],
                suffix: str = "") -> VerifyResult:
    """Run the stage's checks on ``names``; every check's result reaches the record."""
    junit = ctx.record.junit_dir / (stage.name + (f"-{suffix}" if suffix else "") + ".xml")
    for name in names:
        ctx.progress.node_state(stage.name, name, "verifying")
    context = {**ctx.cluster_vars(), "provision_leaving_nodes": sorted(ctx.leaving),
               "stage": stage.name}
    result = run_checks(ctx.paths, stage.verify, names, context, junit,
                        checks_dir=ctx.checks_dir)
    for check in result.checks:
        ctx.progress.check_result(stage.name, check.node, check.name, check.outcome,
                                  check.duration, check.message)
    return result


def fail(ctx: RunContext, stage: str, node: str, what: str, started: float,
         log: Path | None = None) -> StageFailed:
    """Report a node's failure and return the error to raise."""
    ctx.progress.node_result(stage, node, "failed", started, time.time(), detail=what)
    ctx.progress.node_state(stage, node, "failed")
    return StageFailed(stage, node, what, str(log or ctx.record.stage_log(stage)))


def gate(ctx: RunContext, stage: Stage, names: list[str], result: VerifyResult,
         started: float) -> None:
    """Raise for the first node whose checks failed (or when they could not run)."""
    if result.error:
        raise fail(ctx, stage.name, names[0], result.error, started, log=result.junit)
    for name in names:
        failure = result.first_failure(name)
        if failure:
            first_line = failure.message.splitlines()[0] if failure.message else ""
            raise fail(ctx, stage.name, name, f"check {failure.name} failed: {first_line}",
                       started, log=result.junit)


class StageStep(Step):
    """A pipeline stage on its target nodes (``only``: on these alone)."""

    def __init__(self, stage: Stage, only: Sequence[str] = ()) -> None:
        self.stage = stage
        self.only = tuple(only)
        self.name = stage.name
        self.title = stage.description or f"stage {stage.name}"
        self._started = 0.0

    def nodes(self, ctx: ClusterContext) -> list[str]:
        return [n.name for n in stage_nodes(ctx, self.stage, self.only)]


class MachinesStage(StageStep):
    """The providers make every target node's machine exist and answer SSH."""

    def __init__(self, stage: Stage, only: Sequence[str] = ()) -> None:
        super().__init__(stage, only)
        self._changed: set[str] = set()

    def plan(self, ctx: ClusterContext) -> list[Change]:
        nodes = stage_nodes(ctx, self.stage, self.only)
        states = ctx.providers.states({n.name: Machine(n.name, n.address, n.provider)
                                       for n in nodes})
        changes = []
        for node in nodes:
            state = states.get(node.name, MachineState.MISSING)
            if state is MachineState.MISSING:
                changes.append(Change(node.name, "create machine",
                                      "no machine exists for this node"))
            elif state is MachineState.STOPPED:
                changes.append(Change(node.name, "start machine",
                                      "the machine exists but is stopped"))
        return changes

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        nodes = stage_nodes(ctx, self.stage, self.only)
        self._started = time.time()
        outcome = StepOutcome(self.name, status="skipped")
        if not nodes:
            return outcome
        for node in nodes:
            ctx.progress.node_state(self.name, node.name, "running", "ensure machine")
        ensure_cluster_keypair(ctx.paths)

        def say(node: str, message: str) -> None:
            ctx.progress.node_state(self.name, node, "running", message)

        # Providers that need a host-side daemon (libvirtd in the lab namespace) go
        # after the local provider, which creates that namespace; the others then work
        # at once (a VM boots while a bare-metal machine installs). Every provider
        # finishes before the first failure is reported: none is left half-way.
        groups = ctx.providers.by_provider(nodes)
        first = {k: v for k, v in groups.items() if k == "local"}
        rest = {k: v for k, v in groups.items() if k != "local"}

        def ensure(name: str) -> set[str]:
            return ctx.providers.get(name).ensure(ctx.inventory, groups[name], say)

        changed: set[str] = set()
        for wave in (first, rest):
            with ThreadPoolExecutor(max_workers=max(1, len(wave))) as pool:
                futures = {name: pool.submit(ensure, name) for name in wave}
            for name, future in futures.items():
                exc = future.exception()
                if exc is not None:
                    # the node the provider names, else the first of its group
                    named = exc.nodes if isinstance(exc, ProviderError) else ()
                    raise fail(ctx, self.name, (*named, groups[name][0].name)[0],
                               f"machine provider: {exc}", self._started) from exc
                changed |= future.result()
        ctx.ssh.write_config()
        self._changed = changed
        outcome.changed = [n.name for n in nodes if n.name in changed]
        outcome.skipped = [n.name for n in nodes if n.name not in changed]
        outcome.status = "changed" if outcome.changed else "skipped"
        return outcome

    def prove(self, ctx: RunContext, outcome: StepOutcome) -> None:
        names = outcome.changed + outcome.skipped
        if not names:
            return
        gate(ctx, self.stage, names, check_stage(ctx, self.stage, names), self._started)
        for name in names:
            status = "changed" if name in self._changed else "skipped"
            ctx.progress.node_result(self.name, name, status, self._started, time.time(),
                                     detail="" if status == "changed" else "already running")
            ctx.progress.node_state(self.name, name, status)


class RoleStage(StageStep):
    """A stage converged by Ansible roles (see the module docstring)."""

    def __init__(self, stage: Stage, only: Sequence[str] = ()) -> None:
        super().__init__(stage, only)
        self._run: plays.PlayRun | None = None

    def _apply_to(self, ctx: ClusterContext) -> list[Node]:
        # A run_once stage (cluster-wide work such as applying the CNI) converges on its
        # first node, which holds the marker, and is verified on every node.
        nodes = stage_nodes(ctx, self.stage, self.only)
        return nodes[:1] if self.stage.run_once else nodes

    def _hashes(self, ctx: ClusterContext) -> dict[str, str]:
        gvars = ctx.cluster_vars()
        return {n.name: stage_hash(ctx, self.stage, n, gvars) for n in self._apply_to(ctx)}

    def plan(self, ctx: ClusterContext) -> list[Change]:
        nodes = self._apply_to(ctx)
        wanted = self._hashes(ctx)
        states = ctx.providers.states({n.name: Machine(n.name, n.address, n.provider)
                                       for n in nodes})
        running = [n.name for n in nodes if states.get(n.name) is MachineState.RUNNING]
        markers = read_markers(ctx.ssh.runner(), running, ctx.marker_dir) if running else {}
        changes = []
        for node in nodes:
            found = markers.get(node.name)
            stored = found.hashes.get(self.stage.name) if found else None
            if found is not None and not found.reachable:
                reason = f"node unreachable ({found.error}); converge to find out"
            elif stored is None:
                reason = "never converged on this node"
            elif stored != wanted[node.name]:
                reason = "inputs changed since the last converge (roles, variables or artifacts)"
            else:
                continue
            changes.append(Change(node.name, "converge", reason))
        return changes

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        stage = self.stage
        names = self.nodes(ctx)
        outcome = StepOutcome(self.name, status="skipped")
        self._started = started = time.time()
        if not names:
            return outcome
        ctx.ensure_mirror()
        inventory = plays.write_inventory(ctx)
        hashes = self._hashes(ctx)
        planned = {c.node for c in changes}
        candidates = [n for n in hashes if n not in planned]
        if candidates:
            checked = names if stage.run_once else candidates
            for name in checked:
                ctx.progress.node_state(stage.name, name, "checking")
            precheck = check_stage(ctx, stage, checked, suffix="precheck")
            passed = precheck.passed_nodes(checked) if not precheck.error else set()
            if stage.run_once:
                passed = set(names) if passed == set(names) else set()
            for name in checked:
                if name in passed:
                    outcome.skipped.append(name)
                    ctx.progress.node_result(stage.name, name, "skipped", started, time.time(),
                                             detail="inputs unchanged and checks pass")
                    ctx.progress.node_state(stage.name, name, "skipped")
        todo = [n for n in hashes if n not in outcome.skipped]
        if not todo:
            return outcome
        playbook = ansible.write_stage_playbook(
            ctx.paths, stage.name, list(stage.roles), todo, stage.serial, hashes,
            ctx.marker_dir, prepare=list(stage.prepare))
        ctx.record.log_line(f"[{stage.name}] converge {', '.join(todo)} "
                            f"(roles: {', '.join(stage.roles)})")
        run = plays.run_playbook(ctx, stage.name, playbook, inventory)
        for name in todo:
            failed = run.failure(name)
            if failed:
                what, task = failed
                ctx.progress.node_result(stage.name, name, "failed",
                                         run.first_seen.get(name, started),
                                         run.last_seen.get(name, time.time()),
                                         detail=what, task=task)
                ctx.progress.node_state(stage.name, name, "failed", task)
                raise StageFailed(stage.name, name, what, str(run.log))
        self._run = run
        outcome.changed = todo
        outcome.status = "changed"
        return outcome

    def prove(self, ctx: RunContext, outcome: StepOutcome) -> None:
        run = self._run
        if run is None or not outcome.changed:
            return
        verify_on = self.nodes(ctx) if self.stage.run_once else outcome.changed
        gate(ctx, self.stage, verify_on, check_stage(ctx, self.stage, verify_on),
             self._started)
        for name in verify_on:
            host = run.result.hosts.get(name)
            status = "changed" if host and host.status == "changed" else "ok"
            ctx.progress.node_result(self.stage.name, name, status,
                                     run.first_seen.get(name, self._started),
                                     run.last_seen.get(name, time.time()))
            ctx.progress.node_state(self.stage.name, name, status)


def stage_step(stage: Stage, only: Sequence[str] = ()) -> StageStep:
    """The step that converges ``stage`` (``only``: on these nodes alone)."""
    return MachinesStage(stage, only) if stage.provider_action else RoleStage(stage, only)


__all__ = ["MachinesStage", "RoleStage", "StageStep", "check_stage", "fail", "gate", "role_closure",
           "stage_hash", "stage_nodes", "stage_step"]
