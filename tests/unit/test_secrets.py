"""No secret in any run record or log, also for a run killed at any moment (issue 16).

The redactor's registry masks what any component learnt, at the moment each line is
written; ansible-runner's own record of a run is redacted and gets only the
environment Ansible needs; the state directory is private; secret files are never
written through a planted symlink; SSH control sockets live in the private state.
"""

from __future__ import annotations

import json
import os
import secrets as random
import stat
import sys
from pathlib import Path

import pytest

from provision import secrets
from provision.errors import ProvisionError
from provision.executors import ansible, ssh
from provision.inventory.credentials import resolve_credential
from provision.paths import ClusterPaths, write_secret
from provision.report import RunRecord
from provision.report.redact import MASK, Redactor, register

KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDk1rGmT0qNl3LdY1vDq0cN7u5bX4oZ4x6S8xB1cXr0AAAAJhX6vHAV+rx
-----END OPENSSH PRIVATE KEY-----
"""
KEY_LINE = KEY.splitlines()[2]


def _token() -> str:
    """A fresh kubeadm-shaped bootstrap token."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pick = "".join(random.choice(alphabet) for _ in range(22))
    return f"{pick[:6]}.{pick[6:]}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- the registry and the redactor ------------------------------------------------------

def test_a_registered_secret_is_masked_in_events_and_log_lines_as_they_are_written(
        tmp_path: Path) -> None:
    secret = f"join-{random.token_hex(8)}"
    rec = RunRecord(tmp_path, "up")
    register(secret)  # learnt after the record was made: masked from now on all the same
    rec.log_line(f"joining with {secret}")
    rec.event({"event": "runner_on_ok", "res": {"stdout": f"token {secret}"}, secret: 1})
    # no finish(): what a SIGKILL leaves on disk is already clean
    for path in (rec.log, rec.events):
        text = path.read_text()
        assert secret not in text and MASK in text, path
    json.loads(rec.events.read_text())


def test_pieces_of_a_registered_file_are_masked_alone() -> None:
    register(KEY)
    redact = Redactor()
    # a key line quoted alone, and the key inside JSON (escaped newlines)
    assert KEY_LINE not in redact(f"diff: +{KEY_LINE}")
    assert KEY_LINE not in redact(json.dumps({"content": KEY}))
    # words and paths of a secret file are not masked everywhere else
    register("path: /var/lib/kubelet/config\nname: worker\n" + "x" * 40)
    assert redact("/var/lib/kubelet/config worker") == "/var/lib/kubelet/config worker"


def test_short_values_are_not_registered() -> None:
    register("root")
    assert Redactor()("root ran it") == "root ran it"


def test_bootstrap_tokens_and_certificate_keys_are_masked_by_shape() -> None:
    token, key = _token(), random.token_hex(32)
    redact = Redactor()
    out = redact(f"[bootstrap-token] Using token: {token}\n"
                 f"kubeadm join 10.0.0.1:6443 --token {token} --certificate-key {key}\n"
                 f'{{"common_join_certificate_key": "{key}"}}')
    assert token not in out and key not in out
    # names that merely look alike stay
    assert redact("cp-1.example.internal abcdef.ghij") == "cp-1.example.internal abcdef.ghij"


def test_a_resolved_credential_is_registered(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    password = f"bmc-{random.token_hex(6)}"
    monkeypatch.setenv("PV_TEST_BMC", password)
    assert resolve_credential("env:PV_TEST_BMC") == password
    other = f"file-{random.token_hex(6)}"
    (tmp_path / "pw").write_text(other + "\n")
    assert resolve_credential(f"file:{tmp_path / 'pw'}") == other
    assert {password, other} <= set(secrets.known())
    assert Redactor()(f"{password} {other}") == f"{MASK} {MASK}"


def test_the_checks_files_are_redacted_as_soon_as_their_results_arrive(
        tmp_path: Path) -> None:
    """verify's pytest writes JUnit and output without the redactor: the record redacts
    them at the next result, not only when the run finishes (a killed run never does)."""
    secret = f"check-{random.token_hex(8)}"
    register(secret)
    rec = RunRecord(tmp_path, "up")
    junit = rec.junit_dir / "etcd.xml"
    junit.write_text(f"<testsuite><failure>{secret}</failure></testsuite>")
    rec.junit_dir.joinpath("etcd.out").write_text(f"E   assert '{secret}' == ''\n")
    rec.check_result("etcd", "cp-1", "test_x", "failed", 0.1, message="see the output")
    for path in rec.junit_dir.iterdir():
        assert secret not in path.read_text() and _mode(path) == 0o600, path


# -- files and modes ----------------------------------------------------------------------

def test_write_secret_replaces_a_planted_symlink_instead_of_writing_through_it(
        tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    path = tmp_path / "ssh" / "id_ed25519"
    path.parent.mkdir()
    path.symlink_to(target)
    # the temporary name the old code used is planted too
    path.with_name(path.name + ".tmp").symlink_to(target)
    write_secret(path, KEY)
    assert target.read_text() == "untouched"
    assert not path.is_symlink() and path.read_text() == KEY
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == \
        ["id_ed25519.tmp"]  # the planted one, left alone; no temporary of ours remains


def test_state_root_cluster_and_run_files_are_private(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    paths = ClusterPaths.for_cluster("c")
    paths.ensure()
    for d in (tmp_path / "state", paths.root, paths.ssh_dir, paths.pki_dir, paths.runs_dir):
        assert _mode(d) == 0o700, d
    rec = RunRecord(paths.runs_dir, "up")
    rec.write_json("plan.json", {"a": 1})
    rec.stage_log("os").write_text("x")
    # the checks' pytest writes JUnit with its own umask: tightened at the next state change
    (rec.junit_dir / "os.xml").write_text("<testsuite/>")
    os.chmod(rec.junit_dir / "os.xml", 0o644)
    rec.node_state("os", "cp-1", "running")
    assert _mode(rec.dir) == 0o700
    assert _mode(rec.junit_dir / "os.xml") == 0o600
    for name in ("run.log", "events.jsonl", "plan.json"):
        assert _mode(rec.dir / name) == 0o600, name
    rec.finish("ok")
    for path in rec.dir.rglob("*"):
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_control_sockets_live_in_the_private_state(tmp_path: Path) -> None:
    paths = ClusterPaths(tmp_path / "c")
    ep = ssh.SSHEndpoint("10.250.0.11")
    cp = ssh.control_path(paths, "root", ep)
    assert cp.startswith(str(paths.root / "cm") + "/")
    assert ssh.control_path(paths, "root", ssh.SSHEndpoint("10.250.0.12")) != cp
    # ssh binds "<path>.<16 characters>" first: that must fit a unix socket path
    assert len(os.fsencode(cp)) + 17 <= 107


def test_a_state_dir_too_deep_for_sockets_gets_a_private_dir_of_its_own(
        tmp_path: Path) -> None:
    paths = ClusterPaths(tmp_path / ("d" * 90) / "c")
    paths.ensure()
    d = ssh.control_dir(paths)
    assert d.parent == Path("/tmp") and str(os.geteuid()) in d.name
    try:
        assert ssh.ensure_control_dir(paths) == d and _mode(d) == 0o700
        assert len(os.fsencode(ssh.control_path(paths, "root", ssh.SSHEndpoint("h")))) \
            + 17 <= 107
        # someone else's (here: a planted symlink) is refused, not used
        d.rmdir()
        d.symlink_to(tmp_path)
        with pytest.raises(ProvisionError, match="not a directory of this user's"):
            ssh.ensure_control_dir(paths)
    finally:
        if d.is_symlink():
            d.unlink()
        elif d.is_dir():
            d.rmdir()


# -- ansible-runner ---------------------------------------------------------------------

def test_ansible_env_keeps_only_what_ansible_needs() -> None:
    inherited = {"PATH": "/bin", "HOME": "/root", "BMC_PASSWORD": "s3cret-value",
                 "ANSIBLE_NET_PASSWORD": "s3cret-too", "ANSIBLE_CONFIG": "/theirs.cfg",
                 "LC_ALL": "C.UTF-8", "SSH_AUTH_SOCK": "/tmp/agent"}
    runner = {**inherited, "ANSIBLE_CONFIG": "/ours.cfg", "AWX_ISOLATED_DATA_DIR": "/a",
              "ANSIBLE_STDOUT_CALLBACK": "awx_display"}
    assert ansible.ansible_env(runner, inherited) == {
        "PATH": "/bin", "HOME": "/root", "LC_ALL": "C.UTF-8", "SSH_AUTH_SOCK": "/tmp/agent",
        "ANSIBLE_CONFIG": "/ours.cfg", "AWX_ISOLATED_DATA_DIR": "/a",
        "ANSIBLE_STDOUT_CALLBACK": "awx_display"}


def test_a_real_playbook_leaves_no_secret_in_runners_artifacts_or_the_run_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-playbook on localhost (connection local: loopback only): the provisioner's
    BMC password in the environment, a registered secret and a bootstrap token in task
    output reach neither ansible-runner's artifacts nor the run record; every file of
    both is 0600."""
    sentinel = f"sentinel-{random.token_hex(8)}"
    monkeypatch.setenv("BMC_PASSWORD", sentinel)
    learnt, token = f"learnt-{random.token_hex(8)}", _token()
    register(learnt)
    paths = ClusterPaths(tmp_path / "c")
    paths.ensure()
    ansible.write_ansible_cfg(paths)
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("all: {hosts: {localhost: {ansible_connection: local, "
                         "ansible_python_interpreter: " + sys.executable + "}}}\n")
    playbook = tmp_path / "play.yaml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: true\n  gather_subset: [min]\n  tasks:\n"
        "    - ansible.builtin.command: printenv BMC_PASSWORD\n"
        "      register: seen\n      changed_when: false\n"
        "      failed_when: seen.rc not in [0, 1]\n"
        "    - ansible.builtin.assert: {that: [seen.rc == 1, seen.stdout == '']}\n"
        f"    - ansible.builtin.command: echo kubeadm join --token {token} {learnt}\n"
        "      changed_when: false\n"
        f"    - ansible.builtin.debug: {{msg: 'Using token: {token} and {learnt}'}}\n"
        f"    - ansible.builtin.fail: {{msg: 'failed with {learnt}'}}\n"
        "      ignore_errors: true\n")
    rec = RunRecord(paths.runs_dir, "up")
    work = rec.stage_log("play").parent / "ansible-play"
    seen: list[dict[str, object]] = []

    def on_event(event: ansible.Event) -> None:
        seen.append(event)
        rec.event(event)  # the whole event, not just the fields plays.py keeps
        rec.log_line(str(event.get("stdout", "")))

    result = ansible.run_playbook(paths, playbook, inventory, work, on_event)
    assert result.rc == 0 and result.hosts["localhost"].status == "ok", \
        result.stdout_path.read_text() if result.stdout_path else result
    assert result.stdout_path and MASK in result.stdout_path.read_text()
    assert any(MASK in json.dumps(e) for e in seen)
    files = [p for p in rec.dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"command", "stdout", "rc", "status", "run.log", "events.jsonl"} <= names
    assert any(p.parent.name == "job_events" for p in files)
    assert not any("fact_cache" in p.parts for p in files)  # facts stay in memory
    for path in files:  # no finish() yet: what a run killed now would leave
        raw = path.read_bytes()
        for needle in (sentinel, learnt, token):
            assert needle.encode() not in raw, f"{needle} in {path}"
        assert _mode(path) == 0o600, path
    # host keys are checked: ansible-runner's default (False) would beat the ssh config
    command = json.loads(next(p for p in files if p.name == "command").read_text())
    assert command["env"]["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    rec.finish("ok")
