"""What each CLI command does, as plain functions (the CLI only parses and prints).

Every operation loads and validates the inventory first, so bad input fails before
any host is touched, then works through the providers, the engine and a run record.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from provision import mirror
from provision.engine import Engine, Hooks, StageOutcome
from provision.errors import BadInput, ProvisionError
from provision.executors import ssh
from provision.inventory import load_inventory
from provision.paths import ClusterPaths
from provision.pipeline import Pipeline, load_pipeline
from provision.planner import REMOVAL_KINDS
from provision.providers.base import get_provider
from provision.report import RunRecord, make_progress
from provision.report.progress import Tee


@dataclass
class RunSummary:
    command: str
    cluster: str
    status: str  # ok | failed
    record_dir: str
    report_html: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Cluster:
    """One inventory, its state directory and its providers."""

    def __init__(self, inventory_path: Path) -> None:
        self.inv = load_inventory(inventory_path)
        self.paths = ClusterPaths.for_cluster(self.inv.name)
        self._providers: dict[str, Any] = {}

    def provider(self, name: str) -> Any:
        if name not in self._providers:
            self._providers[name] = get_provider(name)
        return self._providers[name]

    def nodes_by_provider(self, nodes: Sequence[Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for node in nodes:
            out.setdefault(node.provider, []).append(node)
        return out

    def check_providers(self) -> None:
        """Provider-level validation (nothing touched); raises BadInput with every problem."""
        if self.inv.artifacts.source == "upstream":
            from provision.artifacts import upstream

            # Online mode downloads only pinned files: an unpinned lock is refused here
            # (NotPinned) rather than after machines were made.
            upstream.require_pins(self.inv.kubernetes.version)
        problems = [str(p) for name, nodes in self.nodes_by_provider(self.inv.nodes).items()
                    for p in self.provider(name).check(self.inv, nodes)
                    if getattr(p, "severity", "error") == "error"]
        if self.mirror_host() is None:
            problems.append(
                f"{self.inv.source_path}: no provider of this cluster can run the artifact "
                "mirror the nodes install from (with either artifacts.source); put one "
                "node of the local provider (or of a local libvirt) in the cluster")
        if problems:
            raise BadInput("\n".join(problems))

    def hooks(self, progress: Any) -> Hooks:
        def ensure_machines(nodes: list[Any]) -> set[str]:
            """Make machines run; returns the nodes that were not running before."""
            changed: set[str] = set()
            # Providers that need a host-side daemon (libvirtd in the lab namespace)
            # go after the local provider, which creates that namespace.
            groups = sorted(self.nodes_by_provider(nodes).items(), key=lambda g: g[0] != "local")
            for name, group in groups:
                before = self.provider(name).observe(self.inv, group)
                changed |= {n.name for n in group if str(before.get(n.name)) != "running"}
                self.provider(name).ensure(
                    self.inv, group,
                    lambda node, msg: progress.node_state("machines", node, "running", msg))
            return changed

        def endpoints() -> dict[str, ssh.SSHEndpoint]:
            from provision.membership import orphans

            out = {n.name: self.provider(n.provider).ssh_endpoint(self.inv, n)
                   for n in self.inv.nodes}
            # machines of removed nodes stay reachable until they are released
            for name, m in orphans(self).items():
                out[name] = self.provider(m.provider).ssh_endpoint(
                    self.inv, SimpleNamespace(name=name, address=m.address))
            return out

        def services() -> dict[str, str]:
            progress.message("artifact mirror: starting (or reusing) it beside the machines")
            return mirror.ensure_mirror(self.inv, self.mirror_host())

        return Hooks(ensure_machines=ensure_machines, ssh_endpoints=endpoints,
                     services=services,
                     service_addresses=lambda: mirror.addresses(self.inv),
                     artifact_versions=lambda: mirror.artifact_versions(self.inv))

    def mirror_host(self) -> Any:
        """The provider that runs the mirror: the first one able to host services."""
        for name in self.nodes_by_provider(self.inv.nodes):
            if hasattr(self.provider(name), "spawn_in_lab"):
                return self.provider(name)
        return None


def _open_run(cluster: Cluster, command: str, inventory_path: Path) -> tuple[Any, Any]:
    cluster.paths.ensure()
    record = RunRecord(cluster.paths.runs_dir, command=command,
                       inventory=str(inventory_path), cluster=cluster.inv.name)
    progress = Tee(record, make_progress(sys.stderr))
    return record, progress


def up(inventory_path: Path, until: str | None = None, only: str | None = None,
       nodes: Sequence[str] = (), pipeline_name: str = "cluster", force: bool = False,
       force_drain: bool = False) -> RunSummary:
    """Converge the cluster to the inventory: membership plan, stages, removals.

    A full run (no --until/--only/--nodes) first plans membership changes from what
    the cluster says (``provision plan`` shows the same plan) and refuses unsafe ones
    before touching anything; see provision/membership.py for the three phases.
    """
    cluster = Cluster(inventory_path)
    pipeline = load_pipeline(pipeline_name)
    stages = pipeline.narrowed(until=until, only=only)
    cluster.check_providers()
    record, progress = _open_run(cluster, "up", inventory_path)
    engine = Engine(cluster.inv, cluster.paths, record, progress, cluster.hooks(progress))
    reconcile = not (until or only or nodes) and pipeline_name == "cluster"
    started = time.time()
    outcomes: list[StageOutcome] = []
    error = ""
    try:
        if reconcile:
            outcomes = _reconcile(cluster, engine, stages, record, progress, force, force_drain)
        else:
            outcomes = engine.run(stages, nodes)
    except ProvisionError as exc:
        error = str(exc)
        if isinstance(exc, BadInput):
            record.finish("refused", error)
            progress.close()
            raise
    except KeyboardInterrupt:
        error = "interrupted; run `provision up` again to resume"
    finally:
        status = "failed" if error else "ok"
        if not record.finished:
            record.finish(status, error or None)
            progress.close()
    return RunSummary(
        command="up", cluster=cluster.inv.name, status=status,
        record_dir=str(record.dir), report_html=str(record.report_html),
        stages=[{"name": o.stage, "status": o.status, "converged": o.converged,
                 "skipped": o.skipped} for o in outcomes],
        error=error, duration=round(time.time() - started, 3),
    )


class PlanRefused(BadInput):
    """The inventory asks for a change that is unsafe (quorum, last control plane)."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        super().__init__("the plan is refused; nothing was changed:\n  "
                         + "\n  ".join(plan.refusals))


# Stages whose checks prove membership; re-run after removals.
MEMBERSHIP_CHECKS = ("etcd", "api-lb", "control-plane", "workers")


def _reconcile(cluster: Cluster, engine: Engine, stages: Sequence[Any], record: Any,
               progress: Any, force: bool, force_drain: bool) -> list[StageOutcome]:
    from provision import membership

    before, obs = membership.plan(cluster, engine.write_ssh_config, force)
    record.write_json("plan.json", {"observed": obs.to_json(), "plan": before.to_json()})
    known = obs.k8s_known and obs.etcd_known
    if known and not before.ok:
        raise PlanRefused(before)
    for warning in before.warnings:
        progress.message(f"plan: {warning}")
    leaving = {a.node for a in before.actions if a.kind in REMOVAL_KINDS}
    engine.check_context["provision_leaving_nodes"] = sorted(
        leaving | set(membership.orphans(cluster)))
    members = membership.Membership(cluster, engine, force_drain=force_drain)
    if known:
        members.before_pipeline(before)
    outcomes = engine.run(stages)
    # Removals follow a fresh observation: after a crash, or when the first look could
    # not see the membership, this is what is really left to do.
    after, obs = membership.plan(cluster, engine.write_ssh_config, force)
    record.write_json("plan-after-stages.json", {"observed": obs.to_json(),
                                                 "plan": after.to_json()})
    if not after.ok:
        raise PlanRefused(after)
    left = [a for a in after.changes if a.kind not in REMOVAL_KINDS]
    if left:
        raise ProvisionError("the stages finished but the cluster still differs from the "
                             "inventory: " + "; ".join(f"{a.kind} {a.node} ({a.reason})"
                                                      for a in left)
                             + f"\n  observation and plan: {record.dir / 'plan-after-stages.json'}")
    removed = members.after_pipeline(after)
    if removed:
        checks = [s for s in stages if s.name in MEMBERSHIP_CHECKS]
        engine.check_context["provision_leaving_nodes"] = []
        if not engine.verify_only(checks):
            raise ProvisionError(f"removed {', '.join(removed)}, but the membership checks "
                                 f"failed; see {record.report_html}")
    return outcomes


def verify(inventory_path: Path, only: str | None = None,
           nodes: Sequence[str] = ()) -> RunSummary:
    cluster = Cluster(inventory_path)
    pipeline = load_pipeline()
    stages = pipeline.narrowed(only=only)
    record, progress = _open_run(cluster, "verify", inventory_path)
    engine = Engine(cluster.inv, cluster.paths, record, progress, cluster.hooks(progress))
    started = time.time()
    try:
        ok = engine.verify_only(stages, nodes)
        error = "" if ok else "some checks failed; see the report"
    except ProvisionError as exc:
        ok, error = False, str(exc)
    finally:
        record.finish("ok" if not error else "failed", error or None)
        progress.close()
    return RunSummary(command="verify", cluster=cluster.inv.name,
                      status="ok" if ok else "failed", record_dir=str(record.dir),
                      report_html=str(record.report_html), error=error,
                      duration=round(time.time() - started, 3))


@dataclass
class PlanAction:
    action: str  # create-machine | start-machine | converge | nothing
    node: str
    stage: str
    reason: str


@dataclass
class PlanReport:
    """``provision plan``: membership changes (ordered, with refusals) and the stages
    each node would converge."""

    membership: Any  # planner.Plan
    observed: Any  # observe_cluster.Observed
    converge: list[PlanAction]

    @property
    def ok(self) -> bool:
        return bool(self.membership.ok)

    def to_json(self) -> dict[str, Any]:
        return {**self.membership.to_json(), "observed": self.observed.to_json(),
                "converge": [a.__dict__ for a in self.converge]}


def plan(inventory_path: Path, pipeline_name: str = "cluster", force: bool = False
         ) -> PlanReport:
    """What ``up`` would do now, from what the providers, the nodes and the cluster
    report. Changes nothing."""
    from provision import membership

    cluster = Cluster(inventory_path)
    cluster.check_providers()
    engine = Engine(cluster.inv, cluster.paths, _NullRecord(), _NullProgress(),
                    cluster.hooks(_NullProgress()))
    changes, observed = membership.plan(cluster, engine.write_ssh_config, force)
    return PlanReport(changes, observed, plan_actions(cluster, load_pipeline(pipeline_name),
                                                      engine))


def plan_actions(cluster: Cluster, pipeline: Pipeline, engine: Engine) -> list[PlanAction]:
    from provision.membership import cluster_machines, machine_states
    from provision.observe import gather_stage_markers

    actions: list[PlanAction] = []
    states = machine_states(cluster, cluster_machines(cluster))
    reachable = [n.name for n in cluster.inv.nodes if states.get(n.name) == "running"]
    facts = gather_stage_markers(cluster.paths, reachable, engine.marker_dir) if reachable else {}
    gvars = _plan_vars(engine)
    for node in cluster.inv.nodes:
        state = states.get(node.name, "missing")
        if state == "missing":
            actions.append(PlanAction("create-machine", node.name, "machines",
                                      "no machine exists for this node"))
        elif state == "stopped":
            actions.append(PlanAction("start-machine", node.name, "machines",
                                      "the machine exists but is stopped"))
        node_facts = facts.get(node.name)
        for stage in pipeline.stages:
            if stage.provider_action or not stage.targets_node(set(node.roles)):
                continue
            if stage.run_once and node is not first_target(cluster.inv, stage):
                continue  # the stage's marker lives on its first node only
            stored = node_facts.stage_hashes.get(stage.name) if node_facts else None
            wanted = engine.stage_hash(stage, node, gvars)
            if node_facts and not node_facts.reachable and state == "running":
                reason = f"node unreachable ({node_facts.error}); converge to find out"
            elif stored is None:
                reason = "never converged on this node"
            elif stored != wanted:
                reason = "inputs changed since the last converge (roles, variables or artifacts)"
            else:
                continue
            actions.append(PlanAction("converge", node.name, stage.name, reason))
    if not actions:
        actions.append(PlanAction("nothing", "-", "-", "every node is converged; "
                                  "`provision verify` re-checks them"))
    return actions


def first_target(inv: Any, stage: Any) -> Any:
    return next(n for n in inv.nodes if stage.targets_node(set(n.roles)))


def _plan_vars(engine: Engine) -> dict[str, Any]:
    # Plan must not start services: it assumes they are where `up` puts them.
    return engine.global_vars(start_services=False)


def status(inventory_path: Path) -> dict[str, Any]:
    from provision.membership import cluster_machines, machine_states

    cluster = Cluster(inventory_path)
    machines = machine_states(cluster, cluster_machines(cluster))
    last = latest_report(cluster.paths)
    return {
        "cluster": cluster.inv.name,
        "state_dir": str(cluster.paths.root),
        "nodes": [{"name": n.name, "roles": sorted(n.roles), "provider": n.provider,
                   "address": str(n.address), "machine": machines.get(n.name, "missing")}
                  for n in cluster.inv.nodes],
        "last_run": last,
    }


def latest_report(paths: ClusterPaths) -> dict[str, Any] | None:
    if not paths.runs_dir.is_dir():
        return None
    for run in sorted(paths.runs_dir.iterdir(), reverse=True):
        report = run / "report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            return {"run": run.name, "command": data.get("command"),
                    "status": data.get("status"), "error": data.get("error"),
                    "report": str(run / "report.html")}
    return None


def destroy(inventory_path: Path) -> dict[str, Any]:
    """Every machine of the cluster, including those of nodes removed from the
    inventory since they were made, and the lab networks."""
    from provision.membership import orphans

    cluster = Cluster(inventory_path)
    nodes: list[Any] = list(cluster.inv.nodes)
    nodes += [SimpleNamespace(name=m.name, address=m.address, provider=m.provider, roles=[])
              for m in orphans(cluster).values()]
    names = [n.name for n in nodes]
    ssh.close_masters(cluster.paths, names)
    # The local provider's lab teardown ends every process in the lab namespace (the
    # mirror, a lab libvirtd), so other providers release their machines first.
    groups = sorted(cluster.nodes_by_provider(nodes).items(), key=lambda g: g[0] == "local")
    for name, group in groups:
        cluster.provider(name).destroy(cluster.inv, group)
    # Local state goes too (keys, PKI, kubeconfig, generated Ansible files); run records
    # stay: they hold the reports and the etcd backups. Named one by one: never a
    # recursive delete of a directory a provider may still have mounts under.
    paths = cluster.paths
    for entry in (paths.ssh_dir, paths.pki_dir, paths.root / "ansible"):
        shutil.rmtree(entry, ignore_errors=True)
    paths.kubeconfig.unlink(missing_ok=True)
    return {"cluster": cluster.inv.name, "destroyed": names}


def reset(inventory_path: Path) -> dict[str, Any]:
    """``destroy --keep-machines``: every node back to a clean OS (roles/reset), the
    machines kept; Kubernetes, etcd and their data gone, SSH access untouched."""
    from provision.membership import orphans
    from provision.playbooks import reset_hosts

    run = _session(inventory_path, "destroy")
    cluster = run.cluster
    extra = {m.name: m.address for m in orphans(cluster).values()}
    names = [n.name for n in cluster.inv.nodes] + sorted(extra)
    error = None
    try:
        reset_hosts(run.engine, names, extra)
    except ProvisionError as exc:
        error = str(exc)
        raise
    finally:
        run.finish(error)
    for path in (cluster.paths.kubeconfig, cluster.paths.pki_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return {"cluster": cluster.inv.name, "reset": names, "record": str(run.record.dir)}


def backup(inventory_path: Path) -> dict[str, Any]:
    """An etcd snapshot, checked, in a new run record (0600)."""
    from provision import backup as etcd_backup

    run = _session(inventory_path, "backup")
    error = None
    try:
        return etcd_backup.backup(run.cluster, run.engine)
    except ProvisionError as exc:
        error = str(exc)
        raise
    finally:
        run.finish(error)


def restore(inventory_path: Path, snapshot: Path) -> RunSummary:
    """Rebuild etcd from ``snapshot``, bring the control plane back, verify everything."""
    from provision import backup as etcd_backup

    etcd_backup.check_snapshot(snapshot)  # bad input before anything is touched
    run = _session(inventory_path, "restore")
    started = time.time()
    error = ""
    try:
        etcd_backup.restore(run.cluster, run.engine, snapshot)
        if not run.engine.verify_only(load_pipeline().stages):
            error = "restored, but some checks failed; see the report"
    except ProvisionError as exc:
        error = str(exc)
    finally:
        run.finish(error)
    return RunSummary(command="restore", cluster=run.cluster.inv.name,
                      status="failed" if error else "ok", record_dir=str(run.record.dir),
                      report_html=str(run.record.report_html), error=error,
                      duration=round(time.time() - started, 3))


@dataclass
class _Session:
    """One command's cluster, run record, progress view and engine."""

    cluster: Cluster
    record: Any  # RunRecord
    progress: Any  # Tee
    engine: Engine

    def finish(self, error: str | None) -> None:
        self.record.finish("failed" if error else "ok", error or None)
        self.progress.close()


def _session(inventory_path: Path, command: str) -> _Session:
    cluster = Cluster(inventory_path)
    record, progress = _open_run(cluster, command, inventory_path)
    return _Session(cluster, record, progress,
                    Engine(cluster.inv, cluster.paths, record, progress, cluster.hooks(progress)))


def kubeconfig(inventory_path: Path, output: Path | None = None) -> dict[str, Any]:
    """Write an admin kubeconfig (0600) that works from this box.

    The API is reached through the provider's path to the virtual IP (for lab
    machines: a loopback forward into the lab namespace). ``tls-server-name`` keeps
    certificate verification against the VIP, which every API server cert carries.
    """
    import yaml

    from provision.paths import write_secret

    cluster = Cluster(inventory_path)
    inv = cluster.inv
    first = inv.nodes_with_role("control-plane")[0]
    proc = ssh.run_on_node(cluster.paths, first.name, "cat /etc/kubernetes/admin.conf")
    if proc.returncode != 0:
        raise ProvisionError(f"cannot read /etc/kubernetes/admin.conf on {first.name}: "
                             f"{proc.stderr.strip() or 'is the control-plane stage done?'}")
    config = yaml.safe_load(proc.stdout)
    server = f"https://{inv.control_plane.virtual_ip}:{inv.control_plane.port}"
    forward = getattr(cluster.provider(first.provider), "forward_api", None)
    if forward:
        server = f"https://127.0.0.1:{forward(inv)}"
    for entry in config.get("clusters", []):
        entry["cluster"]["server"] = server
        entry["cluster"]["tls-server-name"] = str(inv.control_plane.virtual_ip)
    target = output or cluster.paths.kubeconfig
    write_secret(target, yaml.safe_dump(config, sort_keys=False))
    return {"cluster": inv.name, "kubeconfig": str(target), "server": server}


def ssh_argv(inventory_path: Path, node: str, command: Sequence[str]) -> list[str]:
    cluster = Cluster(inventory_path)
    cluster.inv.node(node)  # raises BadInput for an unknown node
    if not cluster.paths.ssh_config.exists():
        raise BadInput(f"no SSH configuration for cluster {cluster.inv.name!r} yet: "
                       "run `provision up --until machines` first")
    return ssh.ssh_command(cluster.paths, node, *command)


class _NullRecord:
    junit_dir = Path("/nonexistent")

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class _NullProgress(_NullRecord):
    pass


__all__ = ["Pipeline", "RunSummary", "backup", "destroy", "plan", "reset", "restore",
           "status", "up", "verify"]
