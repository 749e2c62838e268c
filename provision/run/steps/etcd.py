"""etcd backup and restore as steps (``provision backup`` / ``provision restore SNAPSHOT``).

backup: a healthy member saves a snapshot of its own data (``etcdctl snapshot save``
against its local endpoint), the snapshot is checked on the node (``snapshot
status``: hash, revision, keys) and copied into the run record (mode 0600); the
copy's sha256 must equal the node's.

restore follows etcd's disaster-recovery procedure, automated (roles/etcd_restore):
the control-plane static pods are parked so nothing writes, every member restores
the same snapshot into a new data directory (the old one is kept beside it) and all
start together as a new etcd cluster with the inventory's membership, the control
plane comes back, kubelets restart; the caller then runs every stage's checks.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provision import nodefacts
from provision.errors import BadInput, ProvisionError
from provision.executors import ssh
from provision.observe.transport import Json
from provision.run import plays
from provision.run.context import ClusterContext, RunContext
from provision.run.step import Change, Step, StepOutcome

REMOTE_DIR = "/var/lib/provision/backup"
SNAPSHOT_NAME = "etcd-snapshot.db"

# the member's own endpoint: a snapshot is of one member's data
_ETCDCTL = nodefacts.etcdctl([nodefacts.etcd_client_url("127.0.0.1")], "60s")
# etcd >= 3.6 checks snapshots with etcdutl; 3.4 and 3.5 also with etcdctl.
_STATUS = ('if command -v etcdutl >/dev/null; then etcdutl -w json snapshot status "$f"; '
           'else ETCDCTL_API=3 etcdctl -w json snapshot status "$f"; fi')


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    sha = sha256_of(snapshot)
    if facts.is_file():
        recorded = json.loads(facts.read_text()).get("sha256")
        if recorded and recorded != sha:
            raise BadInput(f"{snapshot}: sha256 {sha} differs from the one recorded at backup "
                           f"({recorded}, {facts}): the file changed since")
    return sha


@dataclass(frozen=True)
class Snapshot:
    """A checked etcd snapshot in a run record, and what etcd says of it."""

    snapshot: str  # path
    member: str
    sha256: str
    hash: int
    revision: int
    keys: int
    size: int

    def to_json(self) -> Json:
        return dict(self.__dict__)


def take_snapshot(ctx: RunContext, member: str, target: Path) -> Snapshot:
    """Save on ``member``, check, copy to ``target`` (0600); the snapshot's facts."""
    remote = f"{REMOTE_DIR}/{SNAPSHOT_NAME}"
    script = (f"set -e; umask 077; mkdir -p {REMOTE_DIR}; f={remote}; rm -f \"$f\"; "
              f"{_ETCDCTL} snapshot save \"$f\" >/dev/null; "
              f"echo @@status; {_STATUS}; echo; echo @@sha256; sha256sum \"$f\" | cut -d' ' -f1")
    proc = ctx.ssh.run(member, script, timeout=300)
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
        copy = subprocess.run(ssh.ssh_command(ctx.paths, member, f"cat {remote}"), stdout=out,
                              stderr=subprocess.PIPE, timeout=600, stdin=subprocess.DEVNULL)
    ctx.ssh.run(member, f"rm -f {remote}", timeout=30)
    local_sha = sha256_of(target)
    if copy.returncode != 0 or local_sha != remote_sha:
        target.unlink(missing_ok=True)
        raise ProvisionError(f"copying the snapshot from {member} failed (sha256 {local_sha} "
                             f"here, {remote_sha} on the node): "
                             f"{copy.stderr.decode(errors='replace').strip()[-300:]}")
    return Snapshot(snapshot=str(target), member=member, sha256=local_sha,
                    hash=int(status.get("hash", 0)), revision=int(status.get("revision", 0)),
                    keys=int(status.get("totalKey", 0)), size=target.stat().st_size)


class Backup(Step):
    """A snapshot from the first etcd member whose local endpoint is healthy."""

    name = "backup"
    title = "etcd snapshot, checked, into the run record (0600)"

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def nodes(self, ctx: ClusterContext) -> list[str]:
        return [n.name for n in ctx.inventory.etcd_members]

    def plan(self, ctx: ClusterContext) -> list[Change]:
        ctx.ssh.write_config()
        problems = []
        for node in ctx.inventory.etcd_members:
            health = ctx.ssh.run(node.name, f"{_ETCDCTL} endpoint health", timeout=60)
            if health.returncode == 0:
                return [Change(node.name, "etcdctl snapshot save; snapshot status; copy",
                               "the first etcd member whose endpoint is healthy")]
            problems.append(f"{node.name}: {(health.stderr or health.stdout).strip()[-200:]}")
        raise ProvisionError("no healthy etcd member to take a snapshot from:\n  "
                             + "\n  ".join(problems))

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        member = changes[0].node
        ctx.progress.message(f"backup: etcd snapshot from {member}")
        self.snapshot = take_snapshot(ctx, member, ctx.record.dir / SNAPSHOT_NAME)
        ctx.record.write_json("backup.json", self.snapshot.to_json())
        ctx.record.log_line(f"[backup] {json.dumps(self.snapshot.to_json(), sort_keys=True)}")
        return StepOutcome(self.name, status="changed", changed=[member])


class Restore(Step):
    """Every etcd member rebuilt from one snapshot; the control plane back on it."""

    name = "restore"
    title = "rebuild etcd from a snapshot (etcd's disaster recovery)"
    role = "etcd_restore"
    # (hosts, tasks file of roles/etcd_restore, what it does), in order
    phases = (("control_plane", "stop_control_plane", "control-plane static pods parked"),
              ("etcd", "restore_member", "snapshot restored into a new data directory"),
              ("control_plane", "start_control_plane", "control-plane static pods back"),
              ("kube_nodes", "restart_kubelet", "kubelet restarted"))

    def __init__(self, snapshot: Path) -> None:
        self.snapshot = snapshot

    def nodes(self, ctx: ClusterContext) -> list[str]:
        return [n.name for n in ctx.inventory.nodes]

    def plan(self, ctx: ClusterContext) -> list[Change]:
        sha = check_snapshot(self.snapshot)
        members = {"control_plane": ctx.inventory.control_plane_nodes,
                   "etcd": ctx.inventory.etcd_members,
                   "kube_nodes": [n for n in ctx.inventory.nodes
                                  if {"control-plane", "worker"} & set(n.roles)]}
        return [Change(node.name, what, f"snapshot {self.snapshot.name} sha256 {sha[:12]}")
                for group, _, what in self.phases for node in members[group]]

    def apply(self, ctx: RunContext, changes: list[Change]) -> StepOutcome:
        sha = check_snapshot(self.snapshot)
        ctx.progress.message(f"restore: {self.snapshot} (sha256 {sha[:12]}...)")
        started = time.time()
        snapshot_vars = {"etcd_restore_snapshot": str(self.snapshot.resolve()),
                         "etcd_restore_snapshot_sha256": sha}
        plays.run_plays(ctx, "restore", [
            {"name": f"restore: {tasks.replace('_', ' ')}", "hosts": hosts,
             "gather_facts": False,
             **({"any_errors_fatal": True} if tasks == "restore_member" else {}),
             "tasks": [{"ansible.builtin.include_role": {"name": self.role,
                                                         "tasks_from": tasks}}],
             "vars": snapshot_vars}
            for hosts, tasks, _ in self.phases])
        ctx.record.log_line(f"[restore] etcd rebuilt from {shlex.quote(str(self.snapshot))} "
                            f"in {time.time() - started:.1f}s")
        return StepOutcome(self.name, status="changed",
                           changed=sorted({c.node for c in changes}))


__all__ = ["SNAPSHOT_NAME", "Backup", "Restore", "Snapshot", "check_snapshot", "take_snapshot"]
