"""etcd backup and restore (``provision backup`` / ``provision restore SNAPSHOT``).

backup: a healthy member saves a snapshot of its own data (``etcdctl snapshot save``
against its local endpoint), the snapshot is checked on the node (``snapshot
status``: hash, revision, keys) and copied into the run record (mode 0600); the
copy's sha256 must equal the node's.

restore follows etcd's disaster-recovery procedure, automated (roles/etcd_restore):
the control-plane static pods are parked so nothing writes, every member restores
the same snapshot into a new data directory (the old one is kept beside it) and all
start together as a new etcd cluster with the inventory's membership, the control
plane comes back, kubelets restart, and every stage's checks run.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from provision.errors import BadInput, ProvisionError
from provision.executors import ssh
from provision.observe_cluster import etcdctl

REMOTE_DIR = "/var/lib/provision/backup"
SNAPSHOT_NAME = "etcd-snapshot.db"

_ETCDCTL = etcdctl(["https://127.0.0.1:2379"], "60s")  # the member's own endpoint
# etcd >= 3.6 checks snapshots with etcdutl; 3.4 and 3.5 also with etcdctl.
_STATUS = ('if command -v etcdutl >/dev/null; then etcdutl -w json snapshot status "$f"; '
           'else ETCDCTL_API=3 etcdctl -w json snapshot status "$f"; fi')


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def take_snapshot(paths: Any, member: str, target: Path) -> dict[str, Any]:
    """Save on ``member``, check, copy to ``target`` (0600); the snapshot's facts."""
    remote = f"{REMOTE_DIR}/{SNAPSHOT_NAME}"
    script = (f"set -e; umask 077; mkdir -p {REMOTE_DIR}; f={remote}; rm -f \"$f\"; "
              f"{_ETCDCTL} snapshot save \"$f\" >/dev/null; "
              f"echo @@status; {_STATUS}; echo; echo @@sha256; sha256sum \"$f\" | cut -d' ' -f1")
    proc = ssh.run_on_node(paths, member, script, timeout=300)
    if proc.returncode != 0:
        raise ProvisionError(f"etcd snapshot on {member} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    status_text = proc.stdout.split("@@status", 1)[1].split("@@sha256", 1)[0].strip()
    remote_sha = proc.stdout.split("@@sha256", 1)[1].strip()
    try:
        status = json.loads(status_text)
    except ValueError as exc:
        raise ProvisionError(f"cannot read the snapshot status from {member}: "
                             f"{status_text[-300:]!r}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch(mode=0o600)
    target.chmod(0o600)
    with target.open("wb") as out:
        copy = subprocess.run(ssh.ssh_command(paths, member, f"cat {remote}"), stdout=out,
                              stderr=subprocess.PIPE, timeout=600, stdin=subprocess.DEVNULL)
    ssh.run_on_node(paths, member, f"rm -f {remote}", timeout=30)
    local_sha = _sha256(target)
    if copy.returncode != 0 or local_sha != remote_sha:
        target.unlink(missing_ok=True)
        raise ProvisionError(f"copying the snapshot from {member} failed (sha256 {local_sha} "
                             f"here, {remote_sha} on the node): "
                             f"{copy.stderr.decode(errors='replace').strip()[-300:]}")
    return {"snapshot": str(target), "member": member, "sha256": local_sha,
            "hash": status.get("hash"), "revision": status.get("revision"),
            "keys": status.get("totalKey"), "size": target.stat().st_size}


def backup(cluster: Any, engine: Any) -> dict[str, Any]:
    """Snapshot from the first etcd member whose local endpoint is healthy."""
    engine.write_ssh_config()
    problems = []
    for node in cluster.inv.etcd_members:
        health = ssh.run_on_node(cluster.paths, node.name, f"{_ETCDCTL} endpoint health",
                                 timeout=60)
        if health.returncode != 0:
            problems.append(f"{node.name}: {(health.stderr or health.stdout).strip()[-200:]}")
            continue
        engine.progress.message(f"backup: etcd snapshot from {node.name}")
        facts = take_snapshot(cluster.paths, node.name, engine.record.dir / SNAPSHOT_NAME)
        engine.record.write_json("backup.json", facts)
        engine.record.log_line(f"[backup] {json.dumps(facts, sort_keys=True)}")
        return facts
    raise ProvisionError("no healthy etcd member to take a snapshot from:\n  "
                         + "\n  ".join(problems))


def check_snapshot(snapshot: Path) -> str:
    """The snapshot's sha256, after the checks that need no host (bad input)."""
    if not snapshot.is_file():
        raise BadInput(f"{snapshot}: no such snapshot file (take one with `provision backup`; "
                       "it is written into the run record as etcd-snapshot.db)")
    with snapshot.open("rb") as f:
        head = f.read(4096)
    if len(head) < 4096:
        raise BadInput(f"{snapshot}: {snapshot.stat().st_size} bytes is not an etcd snapshot")
    facts = snapshot.with_name("backup.json")
    sha = _sha256(snapshot)
    if facts.is_file():
        recorded = json.loads(facts.read_text()).get("sha256")
        if recorded and recorded != sha:
            raise BadInput(f"{snapshot}: sha256 {sha} differs from the one recorded at backup "
                           f"({recorded}, {facts}): the file changed since")
    return sha


def restore(cluster: Any, engine: Any, snapshot: Path) -> None:
    sha = check_snapshot(snapshot)
    engine.progress.message(f"restore: {snapshot} (sha256 {sha[:12]}...)")
    role = "etcd_restore"

    def play(hosts: str, tasks: str, **extra: Any) -> dict[str, Any]:
        return {"name": f"restore: {tasks.replace('_', ' ')}", "hosts": hosts,
                "gather_facts": False, **extra,
                "tasks": [{"ansible.builtin.include_role": {"name": role,
                                                            "tasks_from": tasks}}],
                "vars": {"etcd_restore_snapshot": str(snapshot.resolve()),
                         "etcd_restore_snapshot_sha256": sha}}

    from provision.playbooks import run_plays

    started = time.time()
    run_plays(engine, "restore", [
        play("control_plane", "stop_control_plane"),
        play("etcd", "restore_member", any_errors_fatal=True),
        play("control_plane", "start_control_plane"),
        play("kube_nodes", "restart_kubelet"),
    ])
    engine.record.log_line(f"[restore] etcd rebuilt from {shlex.quote(str(snapshot))} in "
                           f"{time.time() - started:.1f}s")


__all__ = ["backup", "check_snapshot", "restore", "take_snapshot"]
