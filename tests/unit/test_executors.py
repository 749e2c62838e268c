import json
import stat
import sys

import yaml

from provision.executors import ansible, ssh
from provision.paths import ClusterPaths
from provision.run.verify import parse_junit


class AnsibleYamlLoader(yaml.SafeLoader):
    """Reads Ansible's !unsafe tag (variables that are data) as the string it marks."""


AnsibleYamlLoader.add_constructor(
    "!unsafe", lambda loader, node: loader.construct_scalar(node))


def load_ansible_yaml(text: str) -> object:
    return yaml.load(text, Loader=AnsibleYamlLoader)  # noqa: S506 - a SafeLoader


def test_keypair_is_private_and_stable(tmp_path):
    paths = ClusterPaths(tmp_path / "c")
    key = ssh.ensure_cluster_keypair(paths)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_bytes()
    ssh.ensure_cluster_keypair(paths)
    assert key.read_bytes() == first
    assert paths.ssh_public_key.read_text().startswith("ssh-ed25519 ")


def test_ssh_config_is_strict_and_shared(tmp_path):
    paths = ClusterPaths(tmp_path / "c")
    cfg = ssh.write_ssh_config(paths, "root", {
        "cp-1": ssh.SSHEndpoint("10.250.0.11", proxy_command="px %h %p"),
        "w-1": ssh.SSHEndpoint("192.168.1.5", port=2222),
    })
    text = cfg.read_text()
    assert "StrictHostKeyChecking yes" in text
    assert "StrictHostKeyChecking no" not in text
    assert f"UserKnownHostsFile {paths.known_hosts}" in text
    assert "Host cp-1\n  HostName 10.250.0.11" in text
    assert "ProxyCommand px %h %p" in text
    assert text.count("ProxyCommand") == 1
    assert "Port 2222" in text
    # control sockets live in the private state directory, one per endpoint
    paths_in_config = [line.split()[1] for line in text.splitlines()
                       if line.strip().startswith("ControlPath ")]
    assert len(set(paths_in_config)) == 2
    assert all(p.startswith(str(paths.root / "cm") + "/") for p in paths_in_config)
    assert stat.S_IMODE((paths.root / "cm").stat().st_mode) == 0o700


def test_stage_playbook_writes_marker_only_after_roles(tmp_path):
    paths = ClusterPaths(tmp_path / "c")
    pb = ansible.write_stage_playbook(paths, "os", ["os_baseline"], ["a", "b"], 1,
                                      {"a": "h1", "b": "h2"}, marker_dir="/m")
    play = load_ansible_yaml(pb.read_text())[0]
    assert play["hosts"] == "a,b"
    assert play["serial"] == 1
    assert play["roles"] == ["os_baseline"]
    assert play["post_tasks"][0]["ansible.builtin.copy"]["dest"] == "/m/os"
    assert play["vars"]["provision_stage_hashes"] == {"a": "h1", "b": "h2"}
    assert play["vars"]["provision_prepared"] is False
    assert play["gather_subset"] == ["!all"]  # Ansible's minimal facts


# What the minimal fact subset (gather_subset: ["!all"]) gathers, by variable prefix,
# and Ansible's magic and connection variables (not facts at all).
MINIMAL_FACTS = ("date_time", "distribution", "os_family", "pkg_mgr", "service_mgr",
                 "python", "user_", "env", "lsb", "selinux", "apparmor", "fips", "local",
                 "cmdline", "proc_cmdline", "system", "kernel", "architecture", "machine",
                 "hostname", "fqdn", "domain", "nodename", "dns", "ssh_host_key")
NOT_FACTS = ("version", "managed", "playbook_python", "check_mode", "host", "user",
             "port", "become", "play_", "loop", "run_tags", "skip_tags", "facts")


def test_the_roles_read_only_facts_of_the_minimal_subset():
    """A role reading a fact the stage no longer gathers (ansible_default_ipv4, say)
    would fail on a node, not here: every ``ansible_*`` the roles name is a minimal
    fact or not a fact."""
    import re

    roles = ansible.data_dir("roles")
    named = {m for f in roles.rglob("*") if f.is_file() and f.suffix in (".yml", ".j2")
             for m in re.findall(r"\bansible_([a-z0-9_]+)", f.read_text())}
    assert named, "the scan found no ansible_ variable at all"
    unknown = {n for n in named if not n.startswith(MINIMAL_FACTS + NOT_FACTS)}
    assert not unknown, f"facts outside the minimal subset: {sorted(unknown)}"


def test_a_prepared_serial_stage_prepares_every_host_at_once_first(tmp_path):
    paths = ClusterPaths(tmp_path / "c")
    pb = ansible.write_stage_playbook(paths, "cp", ["control_plane"], ["a", "b"], 1,
                                      {"a": "h1", "b": "h2"}, marker_dir="/m",
                                      prepare=["kubelet", "control_plane:prepare"])
    prepare, stage = load_ansible_yaml(pb.read_text())
    assert prepare["hosts"] == "a,b" and "serial" not in prepare
    assert [t["ansible.builtin.import_role"] for t in prepare["tasks"]] == [
        {"name": "kubelet"}, {"name": "control_plane", "tasks_from": "prepare"}]
    assert stage["serial"] == 1 and stage["roles"] == ["control_plane"]
    assert stage["vars"]["provision_prepared"] is True


def test_inventory_groups(tmp_path):
    paths = ClusterPaths(tmp_path / "c")
    inv = ansible.write_inventory(paths, {"a": {"node_address": "10.0.0.1"}},
                                  {"workers": ["a"]}, {"provision_cluster_name": "x"})
    text = inv.read_text()
    assert "provision_cluster_name: !unsafe 'x'" in text  # data, never a template
    data = load_ansible_yaml(text)
    assert data["all"]["children"]["workers"]["hosts"] == {"a": {}}
    assert data["all"]["vars"]["provision_cluster_name"] == "x"
    assert data["all"]["hosts"]["a"]["node_address"] == "10.0.0.1"


def test_parse_junit_maps_checks_to_nodes(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="os" name="test_swap_off[ssh://cp-1]" time="0.5"/>'
        '<testcase classname="os" name="test_swap_off[ssh://cp-10]" time="0.2">'
        '<failure message="swap is on">trace</failure></testcase>'
        '<testcase classname="os" name="test_ntp[ssh://cp-1]" time="0.1">'
        '<skipped message="no ntp"/></testcase>'
        '</testsuite></testsuites>'
    )
    result = parse_junit(junit, ["cp-1", "cp-10"])
    by = {(c.node, c.name): c for c in result.checks}
    assert by[("cp-1", "test_swap_off")].outcome == "passed"
    assert by[("cp-10", "test_swap_off")].outcome == "failed"
    assert by[("cp-10", "test_swap_off")].message == "swap is on"
    assert by[("cp-1", "test_ntp")].outcome == "skipped"
    assert result.failed_nodes() == {"cp-10"}
    assert result.passed_nodes(["cp-1", "cp-10"]) == {"cp-1"}


def test_provisions_environment_never_reaches_ansible_or_its_run_record(tmp_path, monkeypatch):
    """A secret an inventory names as env:VAR lives in provision's environment; ansible
    (a real ansible-playbook on localhost) neither sees it nor records it: ansible-runner
    copies the environment into its artifacts/<id>/command, which the run record keeps."""
    secret = "bmc-password-4f1c9e"
    monkeypatch.setenv("PV_TEST_BMC_PASSWORD", secret)
    paths = ClusterPaths(tmp_path / "c")
    ansible.write_ansible_cfg(paths)
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("all: {hosts: {localhost: {ansible_connection: local, "
                         "ansible_python_interpreter: " + sys.executable + "}}}\n")
    playbook = tmp_path / "play.yaml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.command: printenv PV_TEST_BMC_PASSWORD\n"
        "      register: seen\n      changed_when: false\n"
        "      failed_when: seen.rc not in [0, 1]\n"
        "    - ansible.builtin.assert: {that: [seen.rc == 1, seen.stdout == '']}\n")
    result = ansible.run_playbook(paths, playbook, inventory, tmp_path / "run", lambda e: None)
    assert result.rc == 0 and result.hosts["localhost"].status == "ok", \
        result.stdout_path.read_text() if result.stdout_path else result
    records = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "command" for p in records)  # the file that used to hold it
    assert [p for p in records if secret.encode() in p.read_bytes()] == []
    # ...while what ansible needs still reaches it
    command = next(p for p in records if p.name == "command")
    assert "ANSIBLE_CONFIG" in json.loads(command.read_text())["env"]


def test_play_vars_are_data_but_tasks_may_template(tmp_path):
    """A restore's snapshot path named '{{ lookup(...) }}' reaches Ansible as a string."""
    paths = ClusterPaths(tmp_path / "c")
    path = "/backups/{{ lookup('pipe', 'id') }}.db"
    pb = ansible.write_playbook(paths, "restore", [
        {"hosts": "etcd", "vars": {"etcd_restore_snapshot": path},
         "tasks": [{"ansible.builtin.debug": {"msg": "{{ etcd_restore_snapshot }}"}}]}])
    text = pb.read_text()
    assert "etcd_restore_snapshot: !unsafe" in text
    assert "msg: '{{ etcd_restore_snapshot }}'" in text  # the task's template stays one
    assert load_ansible_yaml(text)[0]["vars"]["etcd_restore_snapshot"] == path
