"""Which provider implements which ``provider:`` of the inventory, and the providers of
one inventory taken together (``Providers``): validation, the machines they hold,
their states, and who can host the cluster's services.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence

from provision.errors import BadInput
from provision.inventory import Inventory, Node, Problem
from provision.providers.base import Capability, Machine, MachineState, Provider, SSHEndpoint

# name -> "module:Class", imported on first use (libvirt-python is optional)
_REGISTRY: dict[str, str] = {
    "local": "provision.providers.local:LocalProvider",
    "static": "provision.providers.static:StaticProvider",
    "libvirt": "provision.providers.libvirt:LibvirtProvider",
    "pxe": "provision.providers.pxe:PxeProvider",
}


def register(name: str, target: str) -> None:
    """Add a provider: ``target`` is ``module:Class``."""
    _REGISTRY[name] = target


def registered() -> list[str]:
    return sorted(_REGISTRY)


def load(name: str) -> Provider:
    """A new instance of the provider called ``name``."""
    if name not in _REGISTRY:
        raise BadInput(f"unknown provider {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    module, cls = _REGISTRY[name].split(":")
    provider: Provider = getattr(importlib.import_module(module), cls)()
    return provider


class Providers:
    """The providers one inventory uses, each loaded once."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        self._loaded: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        if name not in self._loaded:
            self._loaded[name] = load(name)
        return self._loaded[name]

    def of(self, node: Node) -> Provider:
        return self.get(node.provider)

    def by_provider(self, nodes: Iterable[Node]) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in nodes:
            out.setdefault(node.provider, []).append(node)
        return out

    # --- machines ----------------------------------------------------------------------

    def machines(self) -> dict[str, Machine]:
        """The inventory's nodes plus every machine a provider still holds for a node
        the inventory dropped (to be drained, reset and released)."""
        out = {n.name: Machine(n.name, n.address, n.provider) for n in self.inv.nodes}
        for name in self.inv.providers.configured():
            if name not in _REGISTRY:
                continue
            provider = self.get(name)
            if provider.can(Capability.CREATE):
                for machine in provider.machines(self.inv).values():
                    out.setdefault(machine.name, machine)
        return out

    def orphans(self) -> dict[str, Machine]:
        """Machines of nodes no longer in the inventory."""
        names = {n.name for n in self.inv.nodes}
        return {k: m for k, m in self.machines().items() if k not in names}

    def states(self, machines: Mapping[str, Machine]) -> dict[str, MachineState]:
        by_provider: dict[str, list[str]] = {}
        for m in machines.values():
            by_provider.setdefault(m.provider, []).append(m.name)
        out: dict[str, MachineState] = {}
        for provider, names in by_provider.items():
            out.update(self.get(provider).observe(self.inv, names))
        return out

    def endpoints(self, machines: Mapping[str, Machine]) -> dict[str, SSHEndpoint]:
        return {m.name: self.get(m.provider).ssh_endpoint(self.inv, m.name, m.address)
                for m in machines.values()}

    def release(self, machine: Machine) -> None:
        self.get(machine.provider).destroy(self.inv, [machine.name])

    # --- what the cluster needs of its providers ----------------------------------------

    def problems(self, nodes: Sequence[Node] | None = None, *,
                 host: bool = True) -> list[Problem]:
        """Every provider's problems with its nodes (see Provider.validate)."""
        groups = self.by_provider(self.inv.nodes if nodes is None else nodes)
        return [p for name, group in groups.items()
                for p in self.get(name).validate(self.inv, group, host=host)]

    def validate(self, nodes: Sequence[Node] | None = None, *, host: bool = True) -> list[str]:
        """The errors of ``problems``, as lines."""
        return [str(p) for p in self.problems(nodes, host=host) if p.severity == "error"]

    def service_host(self) -> Provider | None:
        """The provider that runs the artifact mirror: the first able to host services,
        in inventory order."""
        for name in self.by_provider(self.inv.nodes):
            if self.get(name).can(Capability.SERVICES):
                return self.get(name)
        return None

    def close(self) -> None:
        for provider in self._loaded.values():
            provider.close()


__all__ = ["Providers", "load", "register", "registered"]
