"""The interface every provider implements.

A provider makes machines exist and answer SSH; everything after that is the job of
the stages (Ansible roles). What a provider can do beyond the core is declared in
``capabilities``, never discovered with ``hasattr``:

=================  ==========================================================
capability         means the provider implements
=================  ==========================================================
``CREATE``         it makes and releases machines; ``machines()`` lists every
                   machine it holds for the cluster, in the inventory or not
                   any more (a removed node's machine is drained, reset and
                   released, and only the provider still knows where it is)
``POWER``          ``start`` / ``stop`` a machine it made
``SERVICES``       ``spawn_service``: a provisioner-side process (the artifact
                   mirror) where its machines reach the gateway
``API_FORWARD``    ``forward_api``: the API virtual IP is reached from this host
                   through a loopback forward (it lives in a lab namespace)
=================  ==========================================================

Methods take node *names* where a machine may have outlived its inventory entry
(``observe``, ``destroy``, ``ssh_endpoint``) and ``Node`` objects where the
inventory's settings are needed (``validate``, ``ensure``, ``start``).

When a provider creates a machine it writes the machine's host key into the
cluster's ``known_hosts`` (provision/providers/machine.py), so SSH is strict from
the first connection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from provision.errors import BadInput, ProviderError
from provision.executors.ssh import SSHEndpoint
from provision.inventory import Inventory, Node, Problem
from provision.inventory.problems import Severity
from provision.report.progress import NodeSay, say_nothing


class MachineState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # exists (its disk is kept), not running
    MISSING = "missing"

    def __str__(self) -> str:
        return self.value


class Capability(StrEnum):
    CREATE = "create"
    POWER = "power"
    SERVICES = "services"
    API_FORWARD = "api-forward"


@dataclass(frozen=True)
class Machine:
    """A machine a provider holds for a node: the inventory's, or a removed node's."""

    name: str
    address: str
    provider: str


class Provider(ABC):
    """One kind of machine (lab machine, libvirt VM, bare metal, existing host)."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    # --- every provider ------------------------------------------------------------

    @abstractmethod
    def validate(self, inv: Inventory, nodes: Sequence[Node], *,
                 host: bool = True) -> list[Problem]:
        """What stops this provider from making these machines; touches nothing.
        ``host=False`` (``provision validate``): only what the inventory itself says
        (recipes, sizes); True: also this host (root, tools, namespaces, connections,
        credentials that must resolve)."""

    @abstractmethod
    def ensure(self, inv: Inventory, nodes: Sequence[Node], say: NodeSay) -> set[str]:
        """Each node exists, runs and answers SSH (host key already in known_hosts).
        Returns the names of the nodes that were not running before."""

    @abstractmethod
    def observe(self, inv: Inventory, names: Sequence[str]) -> dict[str, MachineState]:
        """Node name -> running | stopped | missing; changes nothing."""

    @abstractmethod
    def destroy(self, inv: Inventory, names: Sequence[str], *, wipe: bool = False) -> None:
        """Remove everything the provider made for these nodes. Idempotent. ``wipe``:
        also erase what would outlive the destroy (a bare-metal machine's disk keeps
        its system); a provider that deletes its disks anyway ignores it."""

    @abstractmethod
    def ssh_endpoint(self, inv: Inventory, name: str, address: str) -> SSHEndpoint:
        """How to open a TCP connection to the node's sshd."""

    # --- capabilities (the default says the provider lacks it) ----------------------

    def machines(self, inv: Inventory) -> dict[str, Machine]:
        """CREATE: every machine this provider holds for the cluster, by node name."""
        return {}

    def start(self, inv: Inventory, node: Node) -> None:
        """POWER: start a stopped machine and wait for SSH."""
        raise self._lacks(Capability.POWER)

    def stop(self, inv: Inventory, node: Node) -> None:
        """POWER: a clean shutdown, then a hard one after a timeout."""
        raise self._lacks(Capability.POWER)

    def spawn_service(self, inv: Inventory, name: str, argv: list[str]) -> int:
        """SERVICES: run ``argv`` detached where the machines reach the gateway;
        reused while its arguments stay the same. Returns its pid."""
        raise self._lacks(Capability.SERVICES)

    def service_netns(self, inv: Inventory) -> str | None:
        """SERVICES: the network namespace the services run in (None: this host's)."""
        raise self._lacks(Capability.SERVICES)

    def forward_api(self, inv: Inventory) -> int:
        """API_FORWARD: a loopback port on this host forwarded to the API virtual IP."""
        raise self._lacks(Capability.API_FORWARD)

    def close(self) -> None:  # noqa: B027 - a hook: most providers hold nothing
        """Release connections (libvirt) at the end of a command."""
        return None

    def _lacks(self, capability: Capability) -> ProviderError:
        return ProviderError(f"provider {self.name!r} cannot {capability.value}")


class ProvidersInvalid(BadInput):
    """A provider's validation found errors: nothing was created."""

    def __init__(self, provider: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"provider {provider!r} cannot create these machines:\n{lines}")


def problem(inv: Inventory, path: str, message: str, hint: str | None = None,
            severity: Severity = "error") -> Problem:
    """A Problem about a provider setting; points at the inventory file."""
    src = inv.source_path
    return Problem(file=str(src) if src else "<inventory>", line=0, column=0, path=path,
                   message=message, hint=hint, severity=severity)


def raise_if_invalid(provider: Provider, inv: Inventory, nodes: Sequence[Node]) -> None:
    """The preamble of ``ensure``: the provider's own validation, whose errors raise
    ProvidersInvalid before anything is created."""
    problems = [p for p in provider.validate(inv, nodes) if p.severity == "error"]
    if problems:
        raise ProvidersInvalid(provider.name, problems)


__all__ = [
    "Capability", "Machine", "MachineState", "NodeSay", "Provider", "ProvidersInvalid",
    "SSHEndpoint", "problem", "raise_if_invalid", "say_nothing",
]
