"""The stage engine: converge, verify, gate, record; skip what is already done.

For each stage of the (narrowed) pipeline, on its target nodes:

1. compute the stage's input hash per node (role files, the variables the node
   gets, artifact versions);
2. read the hash stored on the node by the last successful converge; nodes whose
   hash matches are verified first, and skipped if their checks pass;
3. converge the others (the provider for ``machines``, Ansible roles otherwise);
   the playbook records the new hash on each node only after all its roles passed;
4. verify the converged nodes; the first failing node stops the run with the node,
   the stage, the failing task or check, and the log file.

Nothing here remembers earlier runs: the nodes themselves say what is done.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from provision import clustervars
from provision.errors import BadInput, StageFailed
from provision.executors import ansible, ssh
from provision.paths import ClusterPaths, data_dir
from provision.pipeline import Stage
from provision.verify import VerifyResult, run_checks

MARKER_DIR = "/var/lib/provision/stages"


class Record(Protocol):
    """The run's files (provision.report.RunRecord): log, events, per-stage logs, JUnit."""

    def log_line(self, text: str) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...
    def stage_log(self, stage: str) -> Path: ...

    @property
    def junit_dir(self) -> Path: ...


class Progress(Protocol):
    """Results and live state (provision.report.Tee feeds the record and the view)."""

    def stage_started(self, stage: str, nodes: list[str]) -> None: ...
    def node_result(self, stage: str, node: str, status: str, started: float,
                    finished: float, detail: str = "", task: str | None = None) -> None: ...
    def check_result(self, stage: str, node: str, check_name: str, outcome: str,
                     duration: float, message: str = "") -> None: ...
    def node_state(self, stage: str, node: str, state: str, task: str | None = None) -> None: ...
    def stage_finished(self, stage: str, status: str) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class StageOutcome:
    stage: str
    skipped: list[str] = field(default_factory=list)
    converged: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | changed | skipped | failed


@dataclass
class Hooks:
    """What the engine needs from the rest of provision, injected for testability.

    ``ensure_machines(nodes)`` makes machines exist (the provider);
    ``ssh_endpoints()`` says how to reach every node; ``services()`` starts (or
    finds) the artifact mirror and returns its addresses for the nodes;
    ``service_addresses()`` returns the same addresses without starting anything
    (checks and plan must not change the world).
    """

    ensure_machines: Callable[[list[Any]], set[str] | None]
    ssh_endpoints: Callable[[], dict[str, ssh.SSHEndpoint]]
    services: Callable[[], dict[str, str]] = lambda: {}
    service_addresses: Callable[[], dict[str, str]] = lambda: {}  # same, without starting
    artifact_versions: Callable[[], dict[str, str]] = lambda: {}


class Engine:
    def __init__(self, inv: Any, paths: ClusterPaths, record: Record, progress: Progress,
                 hooks: Hooks, roles_dir: Path | None = None, checks_dir: Path | None = None,
                 marker_dir: str = MARKER_DIR) -> None:
        self.inv = inv
        self.paths = paths
        self.record = record
        self.progress = progress
        self.hooks = hooks
        self.roles_dir = roles_dir or data_dir("roles")
        self.checks_dir = checks_dir
        self.marker_dir = marker_dir
        self._services: dict[str, str] | None = None
        self._role_digest: dict[str, str] = {}
        # Extra facts for the checks only (never in the stage hash): e.g. the nodes
        # that are leaving the cluster once the stages are done.
        self.check_context: dict[str, Any] = {}

    # ----------------------------------------------------------------- public
    def run(self, stages: Sequence[Stage], only_nodes: Sequence[str] = ()) -> list[StageOutcome]:
        unknown = set(only_nodes) - {n.name for n in self.inv.nodes}
        if unknown:
            missing = ", ".join(sorted(unknown))
            raise BadInput(f"--nodes: no such node(s) in the inventory: {missing}")
        outcomes = []
        for stage in stages:
            nodes = [n for n in self.inv.nodes if stage.targets_node(set(n.roles))
                     and (not only_nodes or n.name in only_nodes)]
            outcomes.append(self.run_stage(stage, nodes))
        return outcomes

    def run_stage(self, stage: Stage, nodes: list[Any]) -> StageOutcome:
        names = [n.name for n in nodes]
        outcome = StageOutcome(stage.name)
        self.progress.stage_started(stage.name, names)
        try:
            if not nodes:
                outcome.status = "skipped"
            elif stage.provider_action:
                self._converge_machines(stage, nodes, outcome)
            else:
                self._converge_roles(stage, nodes, outcome)
        except StageFailed:
            outcome.status = "failed"
            self.progress.stage_finished(stage.name, "failed")
            raise
        if outcome.status != "skipped":
            outcome.status = "changed" if outcome.converged else "skipped"
        self.progress.stage_finished(stage.name, outcome.status)
        self.record.log_line(f"[{stage.name}] {outcome.status}: converged "
                             f"{outcome.converged or '-'} skipped {outcome.skipped or '-'}")
        return outcome

    def verify_only(self, stages: Sequence[Stage], only_nodes: Sequence[str] = ()) -> bool:
        """Re-run every stage's checks; converge nothing. True when all pass."""
        self.write_ssh_config()
        all_ok = True
        for stage in stages:
            nodes = [n for n in self.inv.nodes if stage.targets_node(set(n.roles))
                     and (not only_nodes or n.name in only_nodes)]
            names = [n.name for n in nodes]
            self.progress.stage_started(stage.name, names)
            started = time.time()
            result = self._verify(stage, names, suffix="verify")
            failed = result.failed_nodes() | (set(names) if result.error else set())
            for name in names:
                status = "failed" if name in failed else "ok"
                self.progress.node_result(stage.name, name, status, started, time.time(),
                                        detail=result.error if result.error else "")
                self.progress.node_state(stage.name, name, status)
            status = "failed" if failed else "ok"
            all_ok &= not failed
            self.progress.stage_finished(stage.name, status)
        return all_ok

    def write_ssh_config(self) -> Path:
        return ssh.write_ssh_config(self.paths, self.inv.ssh.user, self.hooks.ssh_endpoints())

    # --------------------------------------------------------------- machines
    def _converge_machines(self, stage: Stage, nodes: list[Any], outcome: StageOutcome) -> None:
        started = time.time()
        for node in nodes:
            self.progress.node_state(stage.name, node.name, "running", "ensure machine")
        ssh.ensure_cluster_keypair(self.paths)
        changed: set[str] | None = None
        try:
            changed = self.hooks.ensure_machines(nodes)
        except Exception as exc:
            self._fail(stage, nodes[0].name, f"machine provider: {exc}", started)
        if changed is None:  # a provider that cannot tell: count everything as changed
            changed = {n.name for n in nodes}
        self.write_ssh_config()
        result = self._verify(stage, [n.name for n in nodes])
        self._gate(stage, [n.name for n in nodes], result, started)
        for node in nodes:
            status = "changed" if node.name in changed else "skipped"
            self.progress.node_result(stage.name, node.name, status, started, time.time(),
                                      detail="" if status == "changed" else "already running")
            self.progress.node_state(stage.name, node.name, status)
            (outcome.converged if status == "changed" else outcome.skipped).append(node.name)

    # ------------------------------------------------------------------ roles
    def _converge_roles(self, stage: Stage, nodes: list[Any], outcome: StageOutcome) -> None:
        started = time.time()
        self.write_ssh_config()
        gvars = self.global_vars()
        inventory = ansible.write_inventory(
            self.paths,
            {n.name: clustervars.host_vars(n) for n in self.inv.nodes},
            clustervars.groups(self.inv),
            gvars,
        )
        ansible.write_ansible_cfg(self.paths, self.roles_dir)
        # A run_once stage (cluster-wide work such as applying the CNI) converges on
        # its first node, which holds the marker, and is verified on every node.
        apply_to = nodes[:1] if stage.run_once else nodes
        names = [n.name for n in nodes]
        hashes = {n.name: self.stage_hash(stage, n, gvars) for n in apply_to}

        stored = self._stored_hashes(stage, list(hashes))
        candidates = [n for n in hashes if stored.get(n) == hashes[n]]
        if candidates:
            checked = names if stage.run_once else candidates
            for name in checked:
                self.progress.node_state(stage.name, name, "checking")
            precheck = self._verify(stage, checked, suffix="precheck")
            passed = precheck.passed_nodes(checked) if not precheck.error else set()
            if stage.run_once:
                passed = set(names) if passed == set(names) else set()
            for name in checked:
                if name in passed:
                    outcome.skipped.append(name)
                    self.progress.node_result(stage.name, name, "skipped", started, time.time(),
                                            detail="inputs unchanged and checks pass")
                    self.progress.node_state(stage.name, name, "skipped")

        todo = [n.name for n in apply_to if n.name not in outcome.skipped]
        if not todo:
            return
        verify_on = names if stage.run_once else todo
        playbook = ansible.write_stage_playbook(
            self.paths, stage.name, list(stage.roles), todo, stage.serial, hashes,
            self.marker_dir, prepare=list(stage.prepare))
        first_seen: dict[str, float] = {}
        last_seen: dict[str, float] = {}

        def on_event(event: dict[str, Any]) -> None:
            data = event.get("event_data") or {}
            host = data.get("host")
            now = time.time()
            self.record.event({"stage": stage.name, "event": event.get("event"),
                               "host": host, "task": data.get("task"),
                               "time": now, "uuid": event.get("uuid")})
            if host:
                first_seen.setdefault(host, now)
                last_seen[host] = now
                if event.get("event") == "runner_on_start":
                    self.progress.node_state(stage.name, host, "running", data.get("task"))

        self.record.log_line(f"[{stage.name}] converge {', '.join(todo)} "
                             f"(roles: {', '.join(stage.roles)})")
        work = self.record.stage_log(stage.name).parent / f"ansible-{stage.name}"
        result = ansible.run_playbook(self.paths, playbook, inventory, work, on_event)
        log = result.stdout_path or work
        for name in todo:
            host = result.hosts.get(name)
            status = host.status if host else ("failed" if result.rc else "ok")
            if status in ("failed", "unreachable") or host is None and result.rc:
                task = host.task if host else None
                what = f"task {task!r}: {host.message}" if host and task else \
                    f"ansible-playbook exit {result.rc} before this node got a result: " \
                    + ansible.output_tail(result)
                self.progress.node_result(stage.name, name, "failed", first_seen.get(name, started),
                                        last_seen.get(name, time.time()), detail=what, task=task)
                self.progress.node_state(stage.name, name, "failed", task)
                raise StageFailed(stage.name, name, what, str(log))
        verify = self._verify(stage, verify_on)
        self._gate(stage, verify_on, verify, started)
        for name in verify_on:
            host = result.hosts.get(name)
            status = "changed" if host and host.status == "changed" else "ok"
            self.progress.node_result(stage.name, name, status, first_seen.get(name, started),
                                    last_seen.get(name, time.time()))
            self.progress.node_state(stage.name, name, status)
        outcome.converged = todo

    # ---------------------------------------------------------------- helpers
    def global_vars(self, start_services: bool = True) -> dict[str, Any]:
        if self._services is None and start_services:
            self._services = dict(self.hooks.services())
        services = dict(self._services if self._services is not None
                        else self.hooks.service_addresses())
        services.setdefault("pki_dir", str(self.paths.pki_dir))
        return clustervars.global_vars(self.inv, services)

    def stage_hash(self, stage: Stage, node: Any, gvars: dict[str, Any]) -> str:
        """Everything that decides what converging this stage on this node does."""
        groups = clustervars.groups(self.inv)
        if stage.sees is not None:
            groups = {g: groups[g] for g in stage.sees}
            seen = {n for members in groups.values() for n in members} | {node.name}
            gvars = {**gvars, "provision_nodes": [n for n in gvars["provision_nodes"]
                                                  if n["name"] in seen]}
        inputs = {
            "stage": stage.name,
            "roles": {r: self._role_hash(r) for r in stage.role_names},
            "global": gvars,
            "host": clustervars.host_vars(node),
            "groups": groups,
            "artifacts": self.hooks.artifact_versions(),
        }
        blob = json.dumps(inputs, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def _role_hash(self, role: str) -> str:
        if role not in self._role_digest:
            root = self.roles_dir / role
            if not root.is_dir():
                raise BadInput(f"pipeline names role {role!r} but {root} does not exist")
            digest = hashlib.sha256()
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                digest.update(str(path.relative_to(root)).encode() + b"\0")
                digest.update(path.read_bytes())
            self._role_digest[role] = digest.hexdigest()
        return self._role_digest[role]

    def _stored_hashes(self, stage: Stage, names: list[str]) -> dict[str, str]:
        def read(name: str) -> tuple[str, str]:
            try:
                proc = ssh.run_on_node(self.paths, name,
                                       f"cat {self.marker_dir}/{stage.name} 2>/dev/null || true",
                                       timeout=30)
            except Exception:  # noqa: BLE001 - an unreadable marker just means "converge"
                return name, ""
            return name, proc.stdout.strip() if proc.returncode == 0 else ""

        with ThreadPoolExecutor(max_workers=min(16, len(names) or 1)) as pool:
            return dict(pool.map(read, names))

    def _verify(self, stage: Stage, names: list[str], suffix: str = "") -> VerifyResult:
        junit = self.record.junit_dir / (stage.name + (f"-{suffix}" if suffix else "") + ".xml")
        for name in names:
            self.progress.node_state(stage.name, name, "verifying")
        context = dict(self.global_vars(start_services=False))
        context.update(self.check_context)
        context["stage"] = stage.name
        result = run_checks(self.paths, stage.verify, names, context, junit,
                            checks_dir=self.checks_dir)
        for check in result.checks:
            self.progress.check_result(stage.name, check.node, check.name, check.outcome,
                                     check.duration, check.message)
        return result

    def _gate(self, stage: Stage, names: list[str], result: VerifyResult, started: float) -> None:
        if result.error:
            self._fail(stage, names[0], result.error, started, log=result.junit)
        for name in names:
            failure = result.first_failure(name)
            if failure:
                first_line = failure.message.splitlines()[0] if failure.message else ""
                self._fail(stage, name, f"check {failure.name} failed: {first_line}", started,
                           log=result.junit)

    def _fail(self, stage: Stage, node: str, what: str, started: float,
              log: Path | None = None) -> None:
        self.progress.node_result(stage.name, node, "failed", started, time.time(), detail=what)
        self.progress.node_state(stage.name, node, "failed")
        raise StageFailed(stage.name, node, what, str(log or self.record.stage_log(stage.name)))
