"""Ansible plays against the cluster's nodes, as every step runs them.

Stages, reset, restore and etcd member removal all run plays through here, so a role
behaves the same whichever step runs it: the same generated inventory (groups, the
``provision_*`` variables, ``node_*`` per host), ``ansible.cfg`` and SSH
configuration, events into the run record and the progress view, and a failure
that names the node, the task and the log file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provision import clustervars
from provision.errors import StageFailed
from provision.executors import ansible
from provision.run.context import RunContext

Play = dict[str, object]


@dataclass
class PlayRun:
    """A finished ansible-playbook run: per-host outcome, when each host was busy."""

    name: str
    result: ansible.PlaybookResult
    log: Path
    first_seen: dict[str, float] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)

    def failure(self, node: str) -> tuple[str, str | None] | None:
        """(what failed, task) for ``node``, or None when it did not fail."""
        host = self.result.hosts.get(node)
        if host is not None and host.status in ("failed", "unreachable"):
            what = (f"task {host.task!r}: {host.message}" if host.task
                    else host.message or host.status)
            return what, host.task
        if host is None and self.result.rc:
            return (f"ansible-playbook exit {self.result.rc} before this node got a result: "
                    + ansible.output_tail(self.result)), None
        return None

    def raise_for(self, nodes: Sequence[str]) -> None:
        """StageFailed for the first of ``nodes`` that failed, or for the run itself."""
        for node in nodes:
            failed = self.failure(node)
            if failed:
                raise StageFailed(self.name, node, failed[0], str(self.log))
        others = [h for h, o in self.result.hosts.items()
                  if o.status in ("failed", "unreachable")]
        if others or self.result.rc:
            node = others[0] if others else "-"
            failed = self.failure(node) if others else None
            what = failed[0] if failed else (f"ansible-playbook exit {self.result.rc}: "
                                             + ansible.output_tail(self.result))
            raise StageFailed(self.name, node, what, str(self.log))


def write_inventory(ctx: RunContext, extra_hosts: Mapping[str, str] | None = None,
                    name: str = "inventory.yaml") -> Path:
    """The generated Ansible inventory, ``ansible.cfg`` and SSH configuration.
    ``extra_hosts``: machines of nodes the inventory dropped (name -> address)."""
    ctx.ssh.write_config()
    inv = ctx.inventory
    hosts = {n.name: clustervars.host_vars(n.name, n.address, n.roles) for n in inv.nodes}
    for host, address in (extra_hosts or {}).items():
        hosts.setdefault(host, clustervars.host_vars(host, address, ()))
    path = ansible.write_inventory(ctx.paths, hosts, clustervars.groups(inv),
                                   ctx.cluster_vars(), name=name)
    ansible.write_ansible_cfg(ctx.paths, ctx.roles_dir)
    return path


def run_playbook(ctx: RunContext, name: str, playbook: Path, inventory: Path) -> PlayRun:
    """Run it; every event reaches the run record, task starts the progress view."""
    run = PlayRun(name, ansible.PlaybookResult(rc=0), log=Path())

    def on_event(event: ansible.Event) -> None:
        data = ansible.event_data(event)
        host = data.get("host")
        task = data.get("task")
        kind = event.get("event")
        now = time.time()
        ctx.record.event({"stage": name, "event": kind, "host": host, "task": task,
                          "time": now, "uuid": event.get("uuid")})
        if isinstance(host, str):
            run.first_seen.setdefault(host, now)
            run.last_seen[host] = now
            if kind == "runner_on_start":
                ctx.progress.node_state(name, host, "running",
                                        task if isinstance(task, str) else None)

    work = ctx.record.stage_log(name).parent / f"ansible-{name}"
    ctx.record.log_line(f"[{name}] playbook {playbook}")
    run.result = ansible.run_playbook(ctx.paths, playbook, inventory, work, on_event)
    run.log = run.result.stdout_path or work
    return run


def run_plays(ctx: RunContext, name: str, plays: list[Play],
              extra_hosts: Mapping[str, str] | None = None) -> PlayRun:
    """Write ``plays`` as a playbook beside the stages' and run it; raises StageFailed
    naming the first node that failed."""
    inventory = write_inventory(ctx, extra_hosts, name=f"{name}-inventory.yaml")
    playbook = ansible.write_playbook(ctx.paths, name, plays)
    run = run_playbook(ctx, name, playbook, inventory)
    run.raise_for([])
    return run


__all__ = ["Play", "PlayRun", "run_playbook", "run_plays", "write_inventory"]
