"""What each CLI command does, as plain functions (the CLI only parses and prints).

Every command loads and validates the inventory first, so bad input fails before any
host is touched, then builds the cluster's context (provision/run/context.py), runs
steps (provision/run/) and keeps a run record. A command that changes the cluster
(``up``, ``destroy``, ``restore``, ``backup``) holds its run lock (provision/run/lock.py)
throughout: a second one is refused while it runs, and so is ``verify``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from provision.errors import BadInput, ProvisionError
from provision.executors import ssh
from provision.inventory import Inventory, InventoryInvalid, load_inventory
from provision.observe.transport import Json
from provision.paths import ClusterPaths, write_secret
from provision.pipeline import load_pipeline
from provision.providers.base import Capability
from provision.providers.registry import Providers
from provision.report import RunRecord, Tee, make_view
from provision.run import lock, mirror
from provision.run.context import ClusterContext, Options, RunContext
from provision.run.step import StepOutcome, run_step, run_steps
from provision.run.steps.etcd import Backup, Restore, Snapshot, check_snapshot
from provision.run.steps.reset import ResetNodes
from provision.run.steps.verify import CheckStage
from provision.run.up import UpPlan, plan_up, reconcile, run_stages


@dataclass
class RunSummary:
    command: str
    cluster: str
    status: str  # ok | failed
    record_dir: str
    report_html: str
    stages: list[Json] = field(default_factory=list)
    error: str = ""
    duration: float = 0.0

    def to_json(self) -> Json:
        return {"command": self.command, "cluster": self.cluster, "status": self.status,
                "record_dir": self.record_dir, "report_html": self.report_html,
                "stages": self.stages, "error": self.error, "duration": self.duration}


@dataclass
class NodeStatus:
    name: str
    roles: list[str]
    provider: str
    address: str
    machine: str  # running | stopped | missing


@dataclass
class LastRun:
    run: str
    command: str
    status: str
    error: str | None
    report: str


@dataclass
class ClusterStatus:
    cluster: str
    state_dir: str
    nodes: list[NodeStatus]
    last_run: LastRun | None
    running: lock.Holder | None = None  # the run changing the cluster now

    def to_json(self) -> Json:
        return {"cluster": self.cluster, "state_dir": self.state_dir,
                "nodes": [n.__dict__ for n in self.nodes],
                "last_run": self.last_run.__dict__ if self.last_run else None,
                "running": self.running.to_json() if self.running else None}


@dataclass
class Destroyed:
    cluster: str
    destroyed: list[str]

    def to_json(self) -> Json:
        return {"cluster": self.cluster, "destroyed": self.destroyed}


@dataclass
class Reset:
    cluster: str
    reset: list[str]
    record: str

    def to_json(self) -> Json:
        return {"cluster": self.cluster, "reset": self.reset, "record": self.record}


@dataclass
class Kubeconfig:
    cluster: str
    kubeconfig: str
    server: str

    def to_json(self) -> Json:
        return {"cluster": self.cluster, "kubeconfig": self.kubeconfig, "server": self.server}


def validate(inventory_path: Path) -> Inventory:
    """The inventory, checked by its own rules and by its providers' rules that need
    nothing of this host (``provision validate``); raises InventoryInvalid with every
    problem."""
    inv = load_inventory(inventory_path)
    problems = Providers(inv).problems(host=False)
    if any(p.severity == "error" for p in problems):
        raise InventoryInvalid([*inv.warnings, *problems])
    inv.warnings.extend(problems)
    return inv


def validate_providers(ctx: ClusterContext) -> None:
    """Provider-level validation (nothing touched); raises BadInput with every problem."""
    if ctx.inventory.artifacts.source == "upstream":
        from provision.artifacts import upstream

        # Online mode downloads only pinned files: an unpinned lock is refused here
        # (NotPinned) rather than after machines were made.
        upstream.require_pins(ctx.inventory.kubernetes.version)
    problems = ctx.providers.validate()
    if ctx.providers.service_host() is None:
        problems.append(mirror.no_service_host(ctx.inventory))
    if problems:
        raise BadInput("\n".join(problems))


@contextmanager
def _running(cluster: ClusterContext, command: str, inventory_path: Path
             ) -> Iterator[RunContext]:
    """A RunContext with a new run record and the progress view; the record is
    finished by the caller, providers' connections are closed here."""
    cluster.paths.ensure()
    record = RunRecord(cluster.paths.runs_dir, command=command,
                       inventory=str(inventory_path), cluster=cluster.inventory.name)
    ctx = RunContext.start(cluster, record, Tee(record, make_view(sys.stderr)))
    try:
        yield ctx
    finally:
        cluster.providers.close()


def _finish(ctx: RunContext, error: str | None) -> None:
    if not ctx.record.finished:
        ctx.record.finish("failed" if error else "ok", error or None)
        ctx.progress.close()


def up(inventory_path: Path, until: str | None = None, only: str | None = None,
       nodes: Sequence[str] = (), pipeline_name: str = "cluster", force: bool = False,
       force_drain: bool = False) -> RunSummary:
    """Converge the cluster to the inventory (provision/run/up.py): a full run plans
    membership changes from what the cluster says and refuses unsafe ones before
    touching anything; --until/--only/--nodes converge stages alone."""
    cluster = ClusterContext.open(inventory_path, Options(force=force, force_drain=force_drain))
    stages = load_pipeline(pipeline_name).narrowed(until=until, only=only)
    validate_providers(cluster)
    full = not (until or only or nodes) and pipeline_name == "cluster"

    def work(ctx: RunContext) -> tuple[list[StepOutcome], str]:
        return (reconcile(ctx, stages) if full else run_stages(ctx, stages, nodes)), ""

    with _changing(cluster, "up"):
        return _summarised(cluster, "up", inventory_path, work)


def _changing(cluster: ClusterContext, command: str) -> AbstractContextManager[lock.Holder]:
    """The cluster's run lock, held while ``command`` changes it (ClusterBusy, exit 2,
    names the run that holds it). Taken once the inventory is loaded (and, for ``up``,
    the providers' rules checked), so bad input is reported as such while another run
    goes on, and before anything is touched or a run record is made."""
    return lock.exclusive(cluster.paths, cluster.inventory.name, command)


def _summarised(cluster: ClusterContext, command: str, inventory_path: Path,
                work: Callable[[RunContext], tuple[list[StepOutcome], str]]) -> RunSummary:
    """Run ``work`` in a new run record: it returns the outcomes to report and an error
    (empty when all went well). A failure of provision's ends the run as failed; bad
    input (a refused plan) ends it as refused and is raised; Ctrl-C leaves a run that
    the next one resumes."""
    started = time.time()
    error = ""
    outcomes: list[StepOutcome] = []
    with _running(cluster, command, inventory_path) as ctx:
        try:
            outcomes, error = work(ctx)
        except BadInput as exc:
            ctx.record.finish("refused", str(exc))
            ctx.progress.close()
            raise
        except ProvisionError as exc:
            error = str(exc)
        except KeyboardInterrupt:
            error = f"interrupted; run `provision {command}` again to resume"
        finally:
            _finish(ctx, error)
    return RunSummary(
        command=command, cluster=cluster.inventory.name, status="failed" if error else "ok",
        record_dir=str(ctx.record.dir), report_html=str(ctx.record.report_html),
        stages=[o.to_json() for o in outcomes], error=error,
        duration=round(time.time() - started, 3))


def plan(inventory_path: Path, pipeline_name: str = "cluster", force: bool = False) -> UpPlan:
    """What ``up`` would do now, from what the providers, the nodes and the cluster
    report. Changes nothing."""
    ctx = ClusterContext.open(inventory_path, Options(force=force))
    validate_providers(ctx)
    try:
        return plan_up(ctx, load_pipeline(pipeline_name).stages)
    finally:
        ctx.providers.close()


def verify(inventory_path: Path, only: str | None = None,
           nodes: Sequence[str] = ()) -> RunSummary:
    """Every stage's checks, converging nothing."""
    cluster = ClusterContext.open(inventory_path)
    stages = load_pipeline().narrowed(only=only)

    def work(ctx: RunContext) -> tuple[list[StepOutcome], str]:
        ctx.ssh.write_config()
        outcomes = run_steps(ctx, [CheckStage(s, nodes) for s in stages])
        failed = any(o.status == "failed" for o in outcomes)
        return outcomes, "some checks failed; see the report" if failed else ""

    # A change in progress fails checks by design and rewrites the SSH configuration
    # verify writes too: verify waits for it to end. It holds no lock itself, so it
    # never keeps a change from starting.
    lock.refuse_while_changing(cluster.paths, cluster.inventory.name, "verify")
    return _summarised(cluster, "verify", inventory_path, work)


def status(inventory_path: Path) -> ClusterStatus:
    ctx = ClusterContext.open(inventory_path)
    states = ctx.providers.states(ctx.ssh.machines())
    ctx.providers.close()
    return ClusterStatus(
        cluster=ctx.inventory.name, state_dir=str(ctx.paths.root),
        nodes=[NodeStatus(n.name, sorted(n.roles), n.provider, n.address,
                          str(states.get(n.name, "missing"))) for n in ctx.inventory.nodes],
        last_run=latest_run(ctx.paths), running=lock.changing(ctx.paths))


def latest_run(paths: ClusterPaths) -> LastRun | None:
    if not paths.runs_dir.is_dir():
        return None
    for run in sorted(paths.runs_dir.iterdir(), reverse=True):
        report = run / "report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            return LastRun(run=run.name, command=str(data.get("command")),
                           status=str(data.get("status")), error=data.get("error"),
                           report=str(run / "report.html"))
    return None


def destroy(inventory_path: Path, wipe: bool = False) -> Destroyed:
    """Every machine of the cluster, including those of nodes removed from the
    inventory since they were made, and the lab networks. ``wipe``: bare-metal disks
    are erased too (Provider.destroy)."""
    ctx = ClusterContext.open(inventory_path)
    # The lock file stays: it is in the cluster's directory, which destroy keeps.
    with _changing(ctx, "destroy"):
        return _destroy(ctx, wipe)


def _destroy(ctx: ClusterContext, wipe: bool) -> Destroyed:
    machines = ctx.ssh.machines()
    names = list(machines)
    ctx.ssh.close(names)
    # The local provider's lab teardown ends every process in the lab namespace (the
    # mirror, a lab libvirtd), so other providers release their machines first.
    by_provider: dict[str, list[str]] = {}
    for m in machines.values():
        by_provider.setdefault(m.provider, []).append(m.name)
    for name, group in sorted(by_provider.items(), key=lambda g: g[0] == "local"):
        ctx.providers.get(name).destroy(ctx.inventory, group, wipe=wipe)
    ctx.providers.close()
    # Local state goes too (keys, PKI, kubeconfig, generated Ansible files); run records
    # stay: they hold the reports and the etcd backups. Named one by one: never a
    # recursive delete of a directory a provider may still have mounts under.
    paths = ctx.paths
    for entry in (paths.ssh_dir, paths.pki_dir, paths.root / "ansible"):
        shutil.rmtree(entry, ignore_errors=True)
    paths.kubeconfig.unlink(missing_ok=True)
    return Destroyed(ctx.inventory.name, names)


def reset(inventory_path: Path) -> Reset:
    """``destroy --keep-machines``: every node back to a clean OS (roles/reset), the
    machines kept; Kubernetes, etcd and their data gone, SSH access untouched."""
    cluster = ClusterContext.open(inventory_path)
    error: str | None = None
    with _changing(cluster, "destroy --keep-machines"):
        with _running(cluster, "destroy", inventory_path) as ctx:
            try:
                outcome = run_step(ctx, ResetNodes())
            except ProvisionError as exc:
                error = str(exc)
                raise
            finally:
                _finish(ctx, error)
        for path in (cluster.paths.kubeconfig, cluster.paths.pki_dir):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return Reset(cluster.inventory.name, outcome.changed, str(ctx.record.dir))


def backup(inventory_path: Path) -> Snapshot:
    """An etcd snapshot, checked, in a new run record (0600)."""
    cluster = ClusterContext.open(inventory_path)
    step = Backup()
    error: str | None = None
    # Exclusive although it changes nothing on the nodes: a snapshot taken while `up`
    # moves etcd members or `restore` rewrites etcd is one nobody should restore.
    with _changing(cluster, "backup"), _running(cluster, "backup", inventory_path) as ctx:
        try:
            run_step(ctx, step)
        except ProvisionError as exc:
            error = str(exc)
            raise
        finally:
            _finish(ctx, error)
    if step.snapshot is None:
        raise ProvisionError("the backup step ended without a snapshot")
    return step.snapshot


def restore(inventory_path: Path, snapshot: Path) -> RunSummary:
    """Rebuild etcd from ``snapshot``, bring the control plane back, verify everything."""
    check_snapshot(snapshot)  # bad input before anything is touched
    cluster = ClusterContext.open(inventory_path)

    def work(ctx: RunContext) -> tuple[list[StepOutcome], str]:
        restored = run_step(ctx, Restore(snapshot))
        checks = run_steps(ctx, [CheckStage(s) for s in load_pipeline().stages])
        failed = any(o.status == "failed" for o in checks)
        return [restored, *checks], ("restored, but some checks failed; see the report"
                                     if failed else "")

    with _changing(cluster, "restore"):
        return _summarised(cluster, "restore", inventory_path, work)


def kubeconfig(inventory_path: Path, output: Path | None = None) -> Kubeconfig:
    """Write an admin kubeconfig (0600) that works from this box.

    The API is reached through the provider's path to the virtual IP (for lab
    machines: a loopback forward into the lab namespace). ``tls-server-name`` keeps
    certificate verification against the VIP, which every API server cert carries.
    """
    from provision import nodefacts

    ctx = ClusterContext.open(inventory_path)
    inv = ctx.inventory
    first = inv.control_plane_nodes[0]
    proc = ctx.ssh.run(first.name, f"cat {nodefacts.ADMIN_KUBECONFIG}")
    if proc.returncode != 0:
        raise ProvisionError(f"cannot read {nodefacts.ADMIN_KUBECONFIG} on {first.name}: "
                             f"{proc.stderr.strip() or 'is the control-plane stage done?'}")
    config = yaml.safe_load(proc.stdout)
    server = f"https://{inv.control_plane.virtual_ip}:{inv.control_plane.port}"
    provider = ctx.providers.of(first)
    if provider.can(Capability.API_FORWARD):
        server = f"https://127.0.0.1:{provider.forward_api(inv)}"
    for entry in config.get("clusters", []):
        entry["cluster"]["server"] = server
        entry["cluster"]["tls-server-name"] = str(inv.control_plane.virtual_ip)
    target = output or ctx.paths.kubeconfig
    write_secret(target, yaml.safe_dump(config, sort_keys=False))
    return Kubeconfig(inv.name, str(target), server)


def ssh_argv(inventory_path: Path, node: str, command: Sequence[str]) -> list[str]:
    ctx = ClusterContext.open(inventory_path)
    if node not in {n.name for n in ctx.inventory.nodes}:
        known = ", ".join(n.name for n in ctx.inventory.nodes)
        raise BadInput(f"no node named {node!r} in inventory {ctx.inventory.name!r} "
                       f"(nodes: {known})")
    if not ctx.paths.ssh_config.exists():
        raise BadInput(f"no SSH configuration for cluster {ctx.inventory.name!r} yet: "
                       "run `provision up --until machines` first")
    return ssh.ssh_command(ctx.paths, node, *command)


__all__ = ["ClusterStatus", "Destroyed", "Kubeconfig", "Reset", "RunSummary", "backup",
           "destroy", "kubeconfig", "plan", "reset", "restore", "ssh_argv", "status", "up",
           "validate", "validate_providers", "verify"]
