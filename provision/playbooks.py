"""Playbooks outside the stage pipeline: reset (removal, destroy --keep-machines) and
etcd restore. They use the same generated Ansible configuration, SSH settings and
variables as the stages, so a role behaves the same in both.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from provision import clustervars
from provision.errors import StageFailed
from provision.executors import ansible


def run_plays(engine: Any, name: str, plays: list[dict[str, Any]],
              extra_hosts: dict[str, str] | None = None) -> None:
    """Run ``plays`` against the cluster's inventory (plus ``extra_hosts``: machines
    the inventory no longer names, name -> address). Raises StageFailed naming the
    node, the task and the log."""
    inv, paths, record = engine.inv, engine.paths, engine.record
    engine.write_ssh_config()
    hosts = {n.name: clustervars.host_vars(n) for n in inv.nodes}
    for host, address in (extra_hosts or {}).items():
        hosts.setdefault(host, clustervars.host_vars(
            SimpleNamespace(name=host, address=address, roles=[])))
    inventory = ansible.write_inventory(paths, hosts, clustervars.groups(inv),
                                        engine.global_vars(start_services=False),
                                        name=f"{name}-inventory.yaml")
    ansible.write_ansible_cfg(paths, engine.roles_dir)
    playbook = ansible.write_playbook(paths, name, plays)
    work = record.stage_log(name).parent / f"ansible-{name}"

    def on_event(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        record.event({"stage": name, "event": event.get("event"), "host": data.get("host"),
                      "task": data.get("task"), "time": time.time()})
        if data.get("host") and event.get("event") == "runner_on_start":
            engine.progress.node_state(name, data["host"], "running", data.get("task"))

    record.log_line(f"[{name}] playbook {playbook}")
    result = ansible.run_playbook(paths, playbook, inventory, work, on_event)
    failed = [h for h, o in result.hosts.items() if o.status in ("failed", "unreachable")]
    if result.rc or failed:
        node = failed[0] if failed else "-"
        outcome = result.hosts.get(node)
        what = (f"task {outcome.task!r}: {outcome.message}" if outcome and outcome.task
                else f"ansible-playbook exit {result.rc}: {ansible.output_tail(result)}")
        raise StageFailed(name, node, what, str(result.stdout_path or work))


def reset_hosts(engine: Any, names: list[str], extra_hosts: dict[str, str] | None = None
                ) -> None:
    """Kubernetes, etcd, their data and interfaces go; the OS, its packages and the
    firewall rules that keep SSH reachable stay (roles/reset)."""
    if names:
        run_plays(engine, "reset", [{"name": "reset to a clean OS", "hosts": ",".join(names),
                                     "gather_facts": False, "roles": ["reset"]}], extra_hosts)


__all__ = ["reset_hosts", "run_plays"]
