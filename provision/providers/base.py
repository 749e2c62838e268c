"""The interface every IaaS provider implements, and the registry of providers.

A provider makes machines exist and reachable over SSH; everything after that is the
job of Ansible roles. The ``machines`` stage calls ``ensure``, ``plan`` calls
``observe``, ``destroy`` calls ``destroy``. When a provider creates a machine it writes
the machine's host keys into the cluster's ``known_hosts``, so SSH is strict from the
first connection.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from provision.errors import BadInput, ProviderError
from provision.executors.ssh import SSHEndpoint

try:  # one Problem type for every static check
    from provision.inventory.problems import Problem
except ImportError:  # pragma: no cover - only while the inventory package is missing
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Problem:  # type: ignore[no-redef]
        file: str
        line: int
        column: int
        path: str
        message: str
        hint: str | None = None
        severity: str = "error"


__all__ = [
    "MachineState", "Problem", "Progress", "Provider", "ProvidersInvalid", "SSHEndpoint",
    "get_provider", "problem", "quiet_if_none", "raise_if_invalid", "register",
    "registered_providers", "wait_all",
]

# progress(node_name, message): what the provider is doing, for the progress view.
Progress = Callable[[str, str], None]


class MachineState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # exists (its disk is kept), not running
    MISSING = "missing"

    def __str__(self) -> str:
        return self.value


@runtime_checkable
class Provider(Protocol):
    name: str

    def check(self, inv: Any, nodes: Sequence[Any]) -> list[Problem]:
        """Static validation: touches nothing."""

    def ensure(self, inv: Any, nodes: Sequence[Any], progress: Progress | None = None) -> None:
        """Each node exists, runs and answers SSH (host key already in known_hosts)."""

    def observe(self, inv: Any, nodes: Sequence[Any]) -> dict[str, MachineState]:
        """Node name -> running | stopped | missing."""

    def start(self, inv: Any, node: Any) -> None: ...

    def stop(self, inv: Any, node: Any) -> None: ...

    def destroy(self, inv: Any, nodes: Sequence[Any]) -> None:
        """Remove everything the provider made for these nodes. Idempotent."""

    def ssh_endpoint(self, inv: Any, node: Any) -> SSHEndpoint: ...


class ProvidersInvalid(BadInput):
    """A provider's check found errors: nothing was created."""

    def __init__(self, provider: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"provider {provider!r} cannot create these machines:\n{lines}")


def problem(inv: Any, path: str, message: str, hint: str | None = None,
            severity: str = "error") -> Problem:
    """A Problem about a provider setting; points at the inventory file."""
    src = getattr(inv, "source_path", None)
    return Problem(file=str(src) if src else "<inventory>", line=0, column=0, path=path,
                   message=message, hint=hint, severity=severity)  # type: ignore[arg-type]


def raise_if_invalid(provider: Provider, inv: Any, nodes: Sequence[Any]) -> None:
    """The preamble of ``ensure``: the provider's own check, whose errors raise
    ProvidersInvalid before anything is created."""
    problems = [p for p in provider.check(inv, nodes) if p.severity == "error"]
    if problems:
        raise ProvidersInvalid(provider.name, problems)


def quiet_if_none(progress: Progress | None) -> Progress:
    """``progress`` as a callable that always exists: without one, messages go nowhere."""
    def say(node: str, message: str) -> None:
        if progress is not None:
            progress(node, message)
    return say


def wait_all(nodes: Sequence[Any], wait: Callable[[Any], str | None], what: str) -> None:
    """Run ``wait`` for every node at once; the errors it returns (one line a node) raise
    ProviderError ``<what> not reachable``."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        errors = [e for e in pool.map(wait, nodes) if e]
    if errors:
        raise ProviderError(f"{what} not reachable:\n  " + "\n  ".join(errors))


_REGISTRY: dict[str, str] = {
    "local": "provision.providers.local:LocalProvider",
    "static": "provision.providers.static:StaticProvider",
    "libvirt": "provision.providers.libvirt:LibvirtProvider",
}
_INSTANCES: dict[str, Provider] = {}


def register(name: str, target: str) -> None:
    """Add a provider: ``target`` is ``module:Class`` (imported on first use)."""
    _REGISTRY[name] = target
    _INSTANCES.pop(name, None)


def registered_providers() -> list[str]:
    return sorted(_REGISTRY)


def get_provider(name: str) -> Provider:
    if name not in _INSTANCES:
        if name not in _REGISTRY:
            raise BadInput(f"unknown provider {name!r} (known: {', '.join(sorted(_REGISTRY))})")
        module, cls = _REGISTRY[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), cls)()
    return _INSTANCES[name]
