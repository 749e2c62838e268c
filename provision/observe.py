"""Observation for ``plan``: what the nodes say about themselves, gathered in parallel.

pyinfra connects to every node at once (same ssh config, same strict known_hosts as
every other tool) and reads facts; nothing is changed on any node. An unreachable
node is reported as such, never guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from provision.paths import ClusterPaths

# One command per node reads every stage marker at once: "<stage> <hash>" lines.
MARKERS_COMMAND = (
    "for f in {dir}/*; do [ -f \"$f\" ] && printf '%s %s\\n' \"${{f##*/}}\" \"$(cat \"$f\")\"; "
    "done; true"
)


@dataclass
class NodeFacts:
    reachable: bool = False
    error: str = ""
    stage_hashes: dict[str, str] = field(default_factory=dict)


def gather_stage_markers(paths: ClusterPaths, nodes: list[str],
                         marker_dir: str) -> dict[str, NodeFacts]:
    """Read every stage marker from every node, in parallel."""
    facts = {name: NodeFacts() for name in nodes}
    if not nodes or not paths.ssh_config.exists():
        for f in facts.values():
            f.error = "no SSH configuration yet (machines never created)"
        return facts

    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.facts import get_facts
    from pyinfra.facts.server import Command

    logging.getLogger("pyinfra").setLevel(logging.CRITICAL)
    inventory = Inventory((nodes, {
        "ssh_config_file": str(paths.ssh_config),
        "ssh_known_hosts_file": str(paths.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_key": str(paths.ssh_private_key),
    }))
    state = State(inventory, Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=100))
    try:
        connect_all(state)
        active = {host.name for host in state.activated_hosts}
        for name in nodes:
            if name not in active:
                facts[name].error = "unreachable over SSH"
        if active:
            results = get_facts(state, Command, args=(MARKERS_COMMAND.format(dir=marker_dir),))
            for host, output in results.items():
                node = facts[host.name]
                node.reachable = True
                for line in (output or "").splitlines() if isinstance(output, str) else output:
                    stage, _, digest = line.partition(" ")
                    if digest:
                        node.stage_hashes[stage] = digest.strip()
    finally:
        disconnect_all(state)
    return facts
