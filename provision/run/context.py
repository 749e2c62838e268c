"""What every step works with: the typed context of one command on one cluster.

``ClusterContext`` is everything needed to observe a cluster and plan: the inventory,
the state directory, the providers and the SSH access to the nodes. ``RunContext``
adds what acting needs: the run record, the progress view and the artifact mirror.
A step's ``plan`` takes a ClusterContext and its ``apply`` a RunContext, so a plan
cannot change anything: the types say so.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from provision import clustervars, nodefacts
from provision.executors import ssh
from provision.inventory import Inventory, load_inventory
from provision.observe.transport import Runner
from provision.paths import ClusterPaths, data_dir
from provision.providers.base import Machine
from provision.providers.registry import Providers
from provision.report import Progress, RunRecord
from provision.run import mirror


@dataclass(frozen=True)
class Options:
    """What the command line says about how far ``up`` may go."""

    force: bool = False  # accept a plan refused only for safety margins
    force_drain: bool = False  # delete pods a PodDisruptionBudget protects
    drain_timeout: int = 300  # seconds


class NodeAccess:
    """How provision reaches the nodes: one SSH configuration that Ansible, testinfra,
    observation and ``provision ssh`` all use (provision/executors/ssh.py), for every
    machine the cluster has, including the machines of nodes the inventory dropped."""

    def __init__(self, inv: Inventory, paths: ClusterPaths, providers: Providers) -> None:
        self.inv = inv
        self.paths = paths
        self.providers = providers

    def machines(self) -> dict[str, Machine]:
        return self.providers.machines()

    def write_config(self) -> Path:
        endpoints = self.providers.endpoints(self.machines())
        return ssh.write_ssh_config(self.paths, self.inv.ssh.user, endpoints)

    def run(self, node: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return ssh.run_on_node(self.paths, node, script, timeout=timeout)

    def runner(self, timeout: float = 30) -> Runner:
        """``run`` with a fixed timeout, for observation."""
        def run(node: str, script: str) -> subprocess.CompletedProcess[str]:
            return self.run(node, script, timeout=timeout)
        return run

    def reachable(self, node: str, timeout: float = 20) -> bool:
        try:
            return self.run(node, "true", timeout=timeout).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def close(self, names: list[str]) -> None:
        """End multiplexed connections (before a node's machine goes away)."""
        ssh.close_masters(self.paths, names)


@dataclass(kw_only=True)
class ClusterContext:
    """One inventory and everything provision knows how to reach of its cluster."""

    inventory: Inventory
    paths: ClusterPaths
    providers: Providers
    ssh: NodeAccess
    options: Options = field(default_factory=Options)
    # where the stages' roles, checks and markers are (tests point them elsewhere)
    roles_dir: Path = field(default_factory=lambda: data_dir("roles"))
    checks_dir: Path | None = None
    marker_dir: str = nodefacts.STAGE_MARKER_DIR
    # nodes that leave the cluster in this run: checks tolerate them until they are gone
    leaving: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, inventory_path: Path, options: Options | None = None) -> ClusterContext:
        inv = load_inventory(inventory_path)
        return cls.of(inv, options)

    @classmethod
    def of(cls, inv: Inventory, options: Options | None = None) -> ClusterContext:
        paths = ClusterPaths.for_cluster(inv.name)
        providers = Providers(inv)
        return cls(inventory=inv, paths=paths, providers=providers,
                   ssh=NodeAccess(inv, paths, providers), options=options or Options())

    def cluster_vars(self) -> dict[str, object]:
        """The variables every role and check sees (provision/clustervars.py), with the
        mirror's addresses; starts nothing."""
        services = {**mirror.addresses(self.inventory), "pki_dir": str(self.paths.pki_dir)}
        return clustervars.global_vars(self.inventory, services,
                                       mirror.file_digests(self.inventory))

    def artifact_versions(self) -> dict[str, str]:
        return mirror.artifact_versions(self.inventory)


@dataclass(kw_only=True)
class RunContext(ClusterContext):
    """A ClusterContext that acts: it records and shows what it does."""

    record: RunRecord
    progress: Progress
    _mirror_ready: bool = False

    @classmethod
    def start(cls, cluster: ClusterContext, record: RunRecord,
              progress: Progress) -> RunContext:
        return cls(inventory=cluster.inventory, paths=cluster.paths,
                   providers=cluster.providers, ssh=cluster.ssh, options=cluster.options,
                   roles_dir=cluster.roles_dir, checks_dir=cluster.checks_dir,
                   marker_dir=cluster.marker_dir, leaving=cluster.leaving,
                   record=record, progress=progress)

    def ensure_mirror(self) -> None:
        """The artifact mirror serves the nodes (started, or found running) before the
        first stage that installs anything; once per run."""
        if self._mirror_ready:
            return
        self.progress.message("artifact mirror: starting (or reusing) it beside the machines")
        mirror.ensure(self.inventory, self.paths, self.providers)
        self._mirror_ready = True


__all__ = ["ClusterContext", "NodeAccess", "Options", "RunContext"]
