"""Static tests of roles/: layout, namespacing, secrets never logged, templates render."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_NAMES = ["os_baseline", "hosts_file", "container_runtime", "etcd", "api_lb",
              "kubelet", "control_plane", "worker", "cni", "reset", "etcd_restore"]
# common is a library role: node facts (defaults) and shared task files, no main.yml
LIBRARY_ROLES = ["common"]
PREFIX = {"os_baseline": "os_", "hosts_file": "hosts_file_",
          "container_runtime": "containerd_", "etcd": "etcd_",
          "api_lb": "apilb_", "kubelet": "kubelet_", "control_plane": "cp_",
          "worker": "worker_", "cni": "cni_", "reset": "reset_",
          "etcd_restore": "etcd_restore_", "common": "common_"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def all_tasks(role: str):
    def walk(tasks):
        for t in tasks or []:
            yield t
            yield from walk(t.get("block"))
            yield from walk(t.get("rescue"))
            yield from walk(t.get("always"))
    for f in (ROLES / role / "tasks").glob("*.yml"):
        yield from walk(load(f))
    handlers = ROLES / role / "handlers" / "main.yml"
    if handlers.exists():
        yield from walk(load(handlers))


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_role_layout(role):
    for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml"):
        assert (ROLES / role / part).is_file(), f"{role}/{part}"
    meta = load(ROLES / role / "meta" / "main.yml")
    assert meta["galaxy_info"]["role_name"] == role


def test_common_is_a_library_role():
    """Depending on common runs nothing: it has defaults and task files to include,
    no tasks/main.yml."""
    common = ROLES / "common"
    assert (common / "defaults/main.yml").is_file() and (common / "meta/main.yml").is_file()
    assert not (common / "tasks/main.yml").exists()
    assert load(common / "meta/main.yml")["galaxy_info"]["role_name"] == "common"


def dependencies(role: str) -> list[str]:
    return [d if isinstance(d, str) else d["role"]
            for d in load(ROLES / role / "meta" / "main.yml").get("dependencies") or []]


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_roles_using_the_node_facts_depend_on_common(role):
    """A role that reads a common_ variable or includes common's tasks names common in
    meta/dependencies: Ansible then loads the facts (plain ansible-playbook too), and
    the stage hash covers the shared files."""
    text = "\n".join(p.read_text() for p in (ROLES / role).rglob("*") if p.is_file())
    uses = "common_" in text or "name: common" in text
    assert uses == ("common" in dependencies(role)), f"{role}: {dependencies(role)}"


@pytest.mark.parametrize("role", ROLE_NAMES + LIBRARY_ROLES)
def test_defaults_are_namespaced(role):
    defaults = load(ROLES / role / "defaults" / "main.yml") or {}
    bad = [k for k in defaults if not k.startswith(PREFIX[role])]
    assert not bad, f"{role} defaults outside its namespace: {bad}"


@pytest.mark.parametrize("role", ROLE_NAMES + LIBRARY_ROLES)
def test_every_task_is_named_and_fully_qualified(role):
    for task in all_tasks(role):
        assert task.get("name"), task
        modules = [k for k in task if "." in k and k.startswith("ansible.")]
        if "block" not in task:
            assert modules, f"{role}: {task['name']} uses a short module name"


@pytest.mark.parametrize("role", ROLE_NAMES + LIBRARY_ROLES)
def test_private_keys_and_tokens_never_logged(role):
    for task in all_tasks(role):
        if "block" in task or "ansible.builtin.stat" in task:  # stat shows no content
            continue
        text = json.dumps(task)
        secret = (".key" in text and ("copy" in text or "slurp" in text)) or \
            "token create" in text or "certificate-key" in text or "certs-uploaded" in text
        if secret and ".crt" not in text.replace(".key", ""):
            assert task.get("no_log") is True, f"{role}: {task['name']} may log a secret"


def test_commands_report_changes_honestly():
    """command/shell tasks say when they change something (idempotent re-runs)."""
    for role in ROLE_NAMES + LIBRARY_ROLES:
        for task in all_tasks(role):
            if any(k in task for k in ("ansible.builtin.command", "ansible.builtin.shell")):
                assert "changed_when" in task or task.get("when"), \
                    f"{role}: {task['name']} has no changed_when"


def test_every_download_is_checked_against_a_digest_from_the_provisioner():
    """A file fetched from the mirror is checked against the lock's sha256, handed to
    the node in ``provision_file_sha256`` (over SSH), never against anything the mirror
    serves: a file replaced there is refused on the node."""
    downloads = [(role, t) for role in ROLE_NAMES for t in all_tasks(role)
                 if "ansible.builtin.get_url" in t]
    assert len(downloads) == 3, [t["name"] for _, t in downloads]
    for role, task in downloads:
        checksum = str(task["ansible.builtin.get_url"].get("checksum", ""))
        assert checksum.startswith("sha256:{{ ") and "_file_sha256[" in checksum, \
            f"{role}: {task['name']} downloads without the pinned digest: {checksum!r}"
        variable = checksum.split("{{ ", 1)[1].split("[", 1)[0]
        defaults = load(ROLES / role / "defaults" / "main.yml")
        assert defaults[variable] == "{{ provision_file_sha256 }}", (role, variable)


def test_kubeadm_reset_never_touches_etcd():
    """etcd is external (ours): kubeadm reset's remove-etcd-member phase would empty
    kubeadm's default /var/lib/etcd, where a co-located member keeps its data."""
    resets = [(role, task["name"], str(task.get(module)))
              for role in ROLE_NAMES + LIBRARY_ROLES for task in all_tasks(role)
              for module in ("ansible.builtin.command", "ansible.builtin.shell")
              if "kubeadm reset" in str(task.get(module, ""))]
    assert {role for role, _, _ in resets} == {"common", "reset"}
    for role, name, command in resets:
        assert "--skip-phases=remove-etcd-member" in command, f"{role}: {name}"


def includes_of(role: str) -> list[dict]:
    return [t["ansible.builtin.include_role"] for t in all_tasks(role)
            if "ansible.builtin.include_role" in t]


@pytest.mark.parametrize("role", ["control_plane", "worker"])
def test_both_joins_share_one_undo_token_and_template(role):
    """control_plane and worker undo a stopped join, get their token and write their
    JoinConfiguration with common's task files and template; neither has its own."""
    included = {i["tasks_from"] for i in includes_of(role) if i["name"] == "common"}
    assert {"join_undo", "join_config"} <= included
    assert included - {"join_undo", "join_config"} <= {"provisioner_pki"}
    assert not (ROLES / role / "templates" / "kubeadm-join.yaml.j2").exists()
    commands = json.dumps([t.get(m) for t in all_tasks(role)
                           for m in ("ansible.builtin.command", "ansible.builtin.shell")])
    assert "token create" not in commands and "kubeadm reset" not in commands


@pytest.mark.parametrize("role,join_task", [("control_plane", "kubeadm join --control-plane"),
                                            ("worker", "kubeadm join")])
def test_join_task_names_and_the_join_file_removed_after(role, join_task):
    """tests/lab/test_cluster.py stops runs at these task names; the join file (it
    holds a token) goes in an `always:`, so a failed join does not leave it behind."""
    blocks = [t for t in all_tasks(role) if "always" in t
              and any(b.get("name") == join_task for b in t["block"])]
    assert len(blocks) == 1, f"{role}: no block runs {join_task!r}"
    removal = blocks[0]["always"][0]["ansible.builtin.file"]
    assert removal == {"path": "{{ common_kubeadm_config_dir }}/kubeadm-join.yaml",
                       "state": "absent"}
    join = next(b for b in blocks[0]["block"] if b.get("name") == join_task)
    assert "{{ common_kubeadm_config_dir }}/kubeadm-join.yaml" in join["ansible.builtin.command"]


def test_every_etcdctl_with_endpoints_uses_the_shared_tls_arguments():
    """etcdctl talks TLS with the operator certificate through one argument list
    (common_etcdctl_tls_args, also provision.nodefacts.etcdctl's): never spelled out."""
    found = []
    for role in ROLE_NAMES + LIBRARY_ROLES:
        for task in all_tasks(role):
            for module in ("ansible.builtin.command", "ansible.builtin.shell"):
                text = json.dumps(task.get(module, ""))
                if "etcdctl" in text and "snapshot restore" not in text:  # restore: offline
                    found.append((role, task["name"]))
                    assert "--cacert" not in text and "operator." not in text, (role, task)
                    assert any(v in text for v in ("etcd_etcdctl", "etcd_remove_etcdctl",
                                                   "common_etcdctl_tls_args")), (role, task["name"])
    assert ("etcd", "add this member to the running cluster") in found
    assert ("etcd", "etcd member remove") in found
    assert ("etcd_restore", "the restored cluster is healthy") in found
    defaults = load(ROLES / "etcd" / "defaults" / "main.yml")
    assert "common_etcdctl_tls_args" in defaults["etcd_etcdctl"]


def test_remove_member_checks_health_then_removes_only_a_present_member():
    """roles/etcd/tasks/remove_member.yml, run by provision on a remaining member: the
    remaining members' health first (a failure stops it), then the member list, then
    `member remove` only when the ID is in that list (an earlier, interrupted run may
    have removed it: success, changed=false)."""
    tasks = load(ROLES / "etcd" / "tasks" / "remove_member.yml")
    assert "ansible.builtin.assert" in tasks[0]  # the ID and the endpoints are given
    block = next(t for t in tasks if "block" in t)
    assert "etcd_remove_endpoints" in block["vars"]["etcd_remove_etcdctl"]
    health, listing, remove = block["block"]
    for task, words in ((health, "'endpoint', 'health'"), (listing, "'member', 'list'"),
                        (remove, "'member', 'remove'")):
        argv = task["ansible.builtin.command"]["argv"]
        assert argv.startswith("{{ etcd_remove_etcdctl + [") and words in argv, task["name"]
    assert health["changed_when"] is False and "failed_when" not in health
    assert "ignore_errors" not in health
    assert listing["changed_when"] is False and listing["register"] == "etcd_remove_members"
    assert "etcd_remove_members" in remove["when"] and "etcd_remove_member_id" in remove["when"]
    assert remove["changed_when"] is True and "failed_when" not in remove


# ansible-core is a dependency of provision: beside the interpreter, or the suite fails
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def ansible_playbook(tmp_path: Path, plays: list, *args: str, roles: Path = ROLES,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run plays on localhost (local connection) with ``roles`` as the roles path."""
    (tmp_path / "site.yml").write_text(yaml.safe_dump(plays))
    (tmp_path / "hosts").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    exe = ANSIBLE_PLAYBOOK if ANSIBLE_PLAYBOOK.exists() else "ansible-playbook"
    return subprocess.run([str(exe), "-i", str(tmp_path / "hosts"), *args,
                           str(tmp_path / "site.yml")],
                          capture_output=True, text=True, timeout=120,
                          env={"ANSIBLE_ROLES_PATH": str(roles), "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1", **(env or {})})


def test_syntax_check(tmp_path):
    """Every role, and every task file the engine or provision includes on its own
    (tasks_from: control_plane prepare, etcd remove_member, etcd_restore's phases,
    common's join steps), imported statically so that syntax-check reads them."""
    play = [{"hosts": "all", "gather_facts": False, "roles": ROLE_NAMES + LIBRARY_ROLES}]
    task_files = [(role, f.stem) for role in ROLE_NAMES + LIBRARY_ROLES
                  for f in sorted((ROLES / role / "tasks").glob("*.yml")) if f.stem != "main"]
    assert ("etcd", "remove_member") in task_files and ("common", "join_config") in task_files
    play.append({"hosts": "all", "gather_facts": False, "tasks": [
        {"name": f"{role}:{stem}",
         "ansible.builtin.import_role": {"name": role, "tasks_from": stem}}
        for role, stem in task_files]})
    proc = ansible_playbook(tmp_path, play, "--syntax-check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ templates
NODES = [("cp-1", "10.250.0.11", ["control-plane"]), ("cp-2", "10.250.0.12", ["control-plane"]),
         ("cp-3", "10.250.0.13", ["control-plane"]), ("worker-1", "10.250.0.21", ["worker"])]


# every role that renders these depends on common: its facts are always there
COMMON = load(ROLES / "common" / "defaults" / "main.yml")


def render(role: str, template: str, **vars_):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLES / role / "templates")),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    hostvars = {n: {"node_name": n, "node_address": a, "node_roles": r} for n, a, r in NODES}
    groups = {"control_plane": ["cp-1", "cp-2", "cp-3"], "etcd": ["cp-1", "cp-2", "cp-3"],
              "workers": ["worker-1"]}
    base = {**COMMON, "hostvars": hostvars, "groups": groups, "inventory_hostname": "cp-1",
            "node_name": "cp-1", "node_address": "10.250.0.11"}
    return env.get_template(template).render(**{**base, **vars_})


def test_haproxy_balances_every_api_server():
    out = render("api_lb", "haproxy.cfg.j2", apilb_vip="10.250.0.10", apilb_port=6443,
                 apilb_backend_port=6443, apilb_group="control_plane")
    assert "bind 10.250.0.10:6443" in out
    # the backend's name is the one the membership observation and the api-lb checks read
    assert "backend kube-apiserver\n" in out and "default_backend kube-apiserver\n" in out
    for _, address, roles in NODES:
        assert (f"{address}:6443" in out) == ("control-plane" in roles)
    assert "bind 127.0.0.1:8404" in out
    # a stopped backend costs a client one second, not its whole request timeout
    assert "timeout connect 1s" in out and "option redispatch 1" in out


def test_keepalived_unicast_peers_are_the_others():
    out = render("api_lb", "keepalived.conf.j2", apilb_vip="10.250.0.10", apilb_prefix=24,
                 apilb_interface_effective="eth0", apilb_router_id=42, apilb_priority=150,
                 apilb_auth_pass="x", apilb_group="control_plane", apilb_check_interval=2,
                 apilb_check_fall=2, apilb_check_rise=2, apilb_check_weight=-50)
    peers = out.split("unicast_peer {", 1)[1].split("}", 1)[0].split()
    assert peers == ["10.250.0.12", "10.250.0.13"]
    assert "10.250.0.10/24 dev eth0" in out and "weight -50" in out


@pytest.mark.parametrize("container", [True, False])
def test_kubeadm_init_config(container):
    out = render(
        "control_plane", "kubeadm-init.yaml.j2",
        cp_apiserver_port=6443, cp_preflight_ignored=["SystemVerification"],
        cp_etcd_ca_file="/etc/kubernetes/pki/etcd/ca.crt",
        cp_etcd_cert_file="/etc/kubernetes/pki/apiserver-etcd-client.crt",
        cp_etcd_key_file="/etc/kubernetes/pki/apiserver-etcd-client.key",
        kubelet_kubeadm_patches_dir="/etc/kubernetes/provision/patches",
        cp_cluster_name="local", cp_version="v1.37.2", cp_endpoint="10.250.0.10:6443",
        cp_image_repository="registry.k8s.io", cp_pod_cidr="10.244.0.0/16",
        cp_service_cidr="10.96.0.0/12", cp_cluster_domain="cluster.local",
        cp_etcd_group="etcd", cp_etcd_client_port=2379,
        cp_cert_sans=["10.250.0.10", "127.0.0.1", "cp-1", "cp-2", "cp-3"],
        cp_encryption_dir="/etc/kubernetes/encryption",
        cp_encryption_config="/etc/kubernetes/encryption/config.yaml",
        cp_audit_dir="/etc/kubernetes/audit", cp_audit_log_dir="/var/log/kubernetes/audit",
        common_api_audit_log="/var/log/kubernetes/audit/audit.log",
        cp_audit_log_maxage=30, cp_audit_log_maxbackup=10, cp_audit_log_maxsize=100,
        kubelet_in_container=container)
    docs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.250.0.11", "bindPort": 6443}
    assert init["patches"]["directory"] == "/etc/kubernetes/provision/patches"
    assert cluster["controlPlaneEndpoint"] == "10.250.0.10:6443"
    assert cluster["etcd"]["external"]["endpoints"] == [
        "https://10.250.0.11:2379", "https://10.250.0.12:2379", "https://10.250.0.13:2379"]
    assert cluster["etcd"]["external"]["caFile"] == "/etc/kubernetes/pki/etcd/ca.crt"
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert {"10.250.0.10", "127.0.0.1", "cp-2"} <= set(cluster["apiServer"]["certSANs"])
    # node-dependent kubelet settings are per-node patches, never cluster-wide
    assert "KubeletConfiguration" not in docs
    proxy = docs["KubeProxyConfiguration"]
    assert (proxy.get("conntrack", {}).get("maxPerCore") == 0) == container
    # hardening: Secrets encrypted at rest (its directory mounted read-only), no profiling
    api = cluster["apiServer"]
    flags = {a["name"]: a["value"] for a in api["extraArgs"]}
    assert flags == {"encryption-provider-config": "/etc/kubernetes/encryption/config.yaml",
                     "profiling": "false", "audit-policy-file": "/etc/kubernetes/audit/policy.yaml",
                     "audit-log-path": "/var/log/kubernetes/audit/audit.log",
                     "audit-log-maxage": "30", "audit-log-maxbackup": "10",
                     "audit-log-maxsize": "100", "service-account-extend-token-expiration": "false"}
    mounts = {v["name"]: (v["hostPath"], v["mountPath"], v["readOnly"])
              for v in api["extraVolumes"]}
    assert mounts == {
        "encryption": ("/etc/kubernetes/encryption", "/etc/kubernetes/encryption", True),
        "audit-policy": ("/etc/kubernetes/audit", "/etc/kubernetes/audit", True),
        "audit-log": ("/var/log/kubernetes/audit", "/var/log/kubernetes/audit", False)}
    for component in ("controllerManager", "scheduler"):
        assert {"name": "profiling", "value": "false"} in cluster[component]["extraArgs"]


@pytest.mark.parametrize("container,v1", [(True, True), (False, False)])
def test_kubelet_patch_carries_this_nodes_settings(container, v1):
    out = render("kubelet", "kubeletconfiguration+merge.yaml.j2",
                 kubelet_cgroup_driver_effective="cgroupfs" if v1 else "systemd",
                 kubelet_resolv_conf="/etc/resolv.conf", kubelet_cgroup_v1=v1,
                 kubelet_in_container=container, kubelet_container_cgroup_root="/kubelet",
                 kubelet_container_eviction_hard={"nodefs.available": "0%"})
    patch = yaml.safe_load(out)
    assert patch["cgroupDriver"] == ("cgroupfs" if v1 else "systemd")
    assert ("failCgroupV1" in patch) == v1 and patch.get("failCgroupV1", False) is False
    assert (patch.get("cgroupRoot") == "/kubelet") == container
    assert ("evictionHard" in patch) == container


JOIN = dict(common_join_endpoint="10.250.0.10:6443", common_join_token="abcdef.0123456789abcdef",
            common_join_ca_hash="sha256:00", common_join_preflight_ignored=["SystemVerification"],
            kubelet_kubeadm_patches_dir="/etc/kubernetes/provision/patches")


@pytest.mark.parametrize("control_plane", [False, True])
def test_one_join_configuration_for_workers_and_control_plane_nodes(control_plane):
    """common's JoinConfiguration: the same discovery, registration and kubelet patches
    for both; the controlPlane section (this node's API endpoint, the certificate key)
    only in a control-plane join."""
    extra = dict(common_join_api_port=6443, common_join_certificate_key="00" * 32) \
        if control_plane else {}
    join = yaml.safe_load(render("common", "kubeadm-join.yaml.j2",
                                 common_join_control_plane=control_plane, **JOIN, **extra))
    assert (join["apiVersion"], join["kind"]) == ("kubeadm.k8s.io/v1beta4", "JoinConfiguration")
    assert join["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.250.0.10:6443", "token": "abcdef.0123456789abcdef",
        "caCertHashes": ["sha256:00"]}
    registration = join["nodeRegistration"]
    assert registration["name"] == "cp-1"
    assert registration["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert registration["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.250.0.11"}]
    assert registration["ignorePreflightErrors"] == ["SystemVerification"]
    # every join reads this node's kubelet settings (roles/kubelet)
    assert join["patches"] == {"directory": "/etc/kubernetes/provision/patches"}
    if control_plane:
        assert join["controlPlane"] == {
            "localAPIEndpoint": {"advertiseAddress": "10.250.0.11", "bindPort": 6443},
            "certificateKey": "00" * 32}
    else:
        assert "controlPlane" not in join


def test_apiserver_patch_binds_node_address():
    out = render("control_plane", "kube-apiserver0+json.json.j2")
    assert json.loads(out) == [{"op": "add", "path": "/spec/containers/0/command/-",
                                "value": "--bind-address=10.250.0.11"}]


def test_registry_mirror_keeps_upstream_path():
    out = render("container_runtime", "hosts.toml.j2", item="registry.k8s.io",
                 containerd_registry="10.250.0.1:5000")
    assert 'server = "https://registry.k8s.io"' in out
    assert '[host."http://10.250.0.1:5000/v2/registry.k8s.io"]' in out
    assert "override_path = true" in out


def test_etcd_config_is_tls_everywhere():
    out = render("etcd", "etcd.conf.yml.j2", etcd_name="cp-1", etcd_address="10.250.0.11",
                 etcd_data_dir="/var/lib/etcd/data", etcd_client_port=2379, etcd_peer_port=2380,
                 etcd_initial_cluster="cp-1=https://10.250.0.11:2380",
                 etcd_initial_cluster_state="new", etcd_cluster_token="t",
                 etcd_heartbeat_interval=250, etcd_election_timeout=2500)
    conf = yaml.safe_load(out)
    assert all(u.startswith("https://") for u in conf["listen-client-urls"].split(","))
    assert conf["client-transport-security"]["client-cert-auth"] is True
    assert conf["peer-transport-security"]["client-cert-auth"] is True
    assert conf["client-transport-security"]["trusted-ca-file"] == "/etc/etcd/pki/ca.crt"


# ------------------------------------------------------------------ run on localhost
FAKE_ETCDCTL = """#!{python}
# etcdctl stand-in: records each call, answers from files in $FAKE_ETCD
import json, os, sys
d = os.environ["FAKE_ETCD"]
args = sys.argv[1:]
with open(os.path.join(d, "calls"), "a") as f:
    f.write(json.dumps(args) + "\\n")
words = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "-w"]
def answer(name, default=""):
    p = os.path.join(d, name)
    return open(p).read() if os.path.exists(p) else default
error = {"endpoint health": answer("unhealthy"), "member remove": answer("remove_error")}
if error.get(" ".join(words[:2])):
    print(error[" ".join(words[:2])], file=sys.stderr)
    sys.exit(1)
if words == ["member", "list"]:
    print(answer("members.json"))
"""

LEAVING = "8e9e05c52164694d"
MEMBERS = {"header": {"cluster_id": 1}, "members": [
    {"ID": int(LEAVING, 16), "name": "cp-3", "peerURLs": ["https://10.250.0.13:2380"]},
    {"ID": 1234, "name": "cp-1", "peerURLs": ["https://10.250.0.11:2380"]}]}
REMAINING = ["https://10.250.0.11:2379", "https://10.250.0.12:2379"]


def remove_member(tmp_path: Path, member_id: str = LEAVING, members: dict | None = None,
                  unhealthy: str = "", remove_error: str = ""):
    """Run roles/etcd remove_member as provision does (a play on a remaining member)
    against a stand-in etcdctl; returns the run and etcdctl's calls."""
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    etcdctl = fake / "bin" / "etcdctl"
    etcdctl.write_text(FAKE_ETCDCTL.replace("{python}", sys.executable))
    etcdctl.chmod(0o755)
    (fake / "members.json").write_text(json.dumps(MEMBERS if members is None else members))
    for name, text in (("unhealthy", unhealthy), ("remove_error", remove_error)):
        if text:
            (fake / name).write_text(text)
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars": {"etcd_remove_member_id": member_id, "etcd_remove_endpoints": REMAINING},
             "tasks": [{"name": "the leaving member out of etcd",
                        "ansible.builtin.include_role": {"name": "etcd",
                                                         "tasks_from": "remove_member"}}]}]
    proc = ansible_playbook(tmp_path, play, env={"PATH": f"{fake / 'bin'}:/usr/bin:/bin",
                                                 "FAKE_ETCD": str(fake)})
    calls = [json.loads(line) for line in (fake / "calls").read_text().splitlines()] \
        if (fake / "calls").exists() else []
    return proc, calls


def recap(proc) -> dict[str, int]:
    line = next(x for x in proc.stdout.splitlines() if x.startswith("localhost ") and "ok=" in x)
    return {k: int(v) for k, v in (w.split("=") for w in line.split()[2:])}


def test_remove_member_removes_a_present_member(tmp_path):
    proc, calls = remove_member(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] == 1
    tls = COMMON["common_etcdctl_tls_args"]
    for call in calls:  # every call: the shared TLS arguments, the remaining members
        assert call[:len(tls)] == tls and f"--endpoints={','.join(REMAINING)}" in call
    assert [c[-2:] for c in calls] == [["endpoint", "health"], ["member", "list"],
                                       ["remove", LEAVING]]


def test_remove_member_already_gone_is_success_unchanged(tmp_path):
    """An earlier run was interrupted after the removal: nothing to do, no change."""
    gone = {"members": [m for m in MEMBERS["members"] if m["name"] != "cp-3"]}
    proc, calls = remove_member(tmp_path, member_id=LEAVING.upper(), members=gone)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] == 0
    assert not any("remove" in c for c in calls)


def test_remove_member_refuses_while_a_remaining_member_is_unhealthy(tmp_path):
    """Removing a member from a sick cluster can lose quorum: nothing is removed."""
    sick = "https://10.250.0.12:2379 is unhealthy: failed to commit proposal"
    proc, calls = remove_member(tmp_path, unhealthy=sick)
    assert proc.returncode != 0 and sick in proc.stdout
    assert "the remaining members are healthy" in proc.stdout
    assert [c[-2:] for c in calls] == [["endpoint", "health"]]


def test_remove_member_fails_with_etcdctls_message(tmp_path):
    proc, _ = remove_member(tmp_path, remove_error="Error: etcdserver: re-configuration failed")
    assert proc.returncode != 0
    assert "Error: etcdserver: re-configuration failed" in proc.stdout


@pytest.mark.parametrize("member_id", ["", "cp-3", "0x8e9e05c52164694d"])
def test_remove_member_wants_a_hex_id(tmp_path, member_id):
    proc, calls = remove_member(tmp_path, member_id=member_id)
    assert proc.returncode != 0 and "etcd_remove_member_id" in proc.stdout
    assert calls == []


@pytest.mark.parametrize("layout", ["checkout", "wheel"])
def test_pki_runs_with_the_package_the_roles_belong_to(tmp_path, layout):
    """common's provisioner_pki runs `python -m provision.pki` from the checkout that
    holds roles/, or from the site-packages directory of an installed wheel, whose
    roles are provision/data/roles; once per play, on the provisioner."""
    top = tmp_path / layout
    package = top / "provision"
    roles = top / "roles" if layout == "checkout" else package / "data" / "roles"
    shutil.copytree(ROLES, roles)
    package.mkdir(exist_ok=True)
    (package / "pki.py").write_text(  # stands in for provision.pki: says where it is
        "import json, sys\n"
        "print(json.dumps({'changed': True, 'file': __file__, 'args': sys.argv[1:]}))\n")
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "pki", "ansible.builtin.include_role": {"name": "common",
                                                         "tasks_from": "provisioner_pki"},
         "vars": {"common_pki_args": ["encryption", str(tmp_path / "pki")]}},
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ common_pki.stdout }}",
                                                  "dest": str(tmp_path / "said.json")}}]}]
    proc = ansible_playbook(tmp_path, play, roles=roles)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "said.json").read_text()) == {
        "changed": True, "file": str(package / "pki.py"),
        "args": ["encryption", str(tmp_path / "pki")]}


FAKE_KUBEADM = """#!/bin/sh
# kubeadm stand-in: `token create --print-join-command` as kubeadm prints it
echo "kubeadm join 10.250.0.10:6443 --token abcdef.0123456789abcdef \\
--discovery-token-ca-cert-hash sha256:$(printf '%064d' 7) "
"""


@pytest.mark.parametrize("control_plane", [False, True])
def test_join_config_writes_a_private_join_file_and_logs_no_token(tmp_path, control_plane):
    """common's join_config as control_plane and worker include it: the token and CA
    hash from the helper's `kubeadm token create`, the JoinConfiguration 0600."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubeadm").write_text(FAKE_KUBEADM)
    (bin_dir / "kubeadm").chmod(0o755)
    config_dir = tmp_path / "kubeadm"
    config_dir.mkdir()
    params = {"common_join_helper": "localhost", "common_join_token_ttl": "10m",
              "common_join_endpoint": "10.250.0.10:6443", "common_join_preflight_ignored": [],
              "common_join_control_plane": control_plane}
    if control_plane:
        params |= {"common_join_api_port": 6443, "common_join_certificate_key": "12" * 32}
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars": {"node_name": "n1", "node_address": "10.250.0.21",
                      "kubelet_kubeadm_patches_dir": "/etc/kubernetes/provision/patches",
                      "common_kubeadm_config_dir": str(config_dir)},
             "tasks": [{"name": "join configuration",
                        "ansible.builtin.include_role": {"name": "common",
                                                         "tasks_from": "join_config"},
                        "vars": params}]}]
    proc = ansible_playbook(tmp_path, play, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0123456789abcdef" not in proc.stdout + proc.stderr  # no_log
    written = config_dir / "kubeadm-join.yaml"
    assert written.stat().st_mode & 0o777 == 0o600
    join = yaml.safe_load(written.read_text())
    assert join["discovery"]["bootstrapToken"]["token"] == "abcdef.0123456789abcdef"
    assert join["discovery"]["bootstrapToken"]["caCertHashes"] == [f"sha256:{'0' * 63}7"]
    assert ("controlPlane" in join) == control_plane
    if control_plane:
        assert join["controlPlane"]["certificateKey"] == "12" * 32


def test_the_audit_policy_never_records_a_secrets_body():
    """The first matching rule decides: every rule that could record request bodies
    (Request, RequestResponse) comes after the rule that keeps Secrets, ConfigMaps and
    token requests at Metadata."""
    policy = load(ROLES / "control_plane" / "files" / "audit-policy.yaml")
    assert policy["kind"] == "Policy" and policy["omitStages"] == ["RequestReceived"]
    levels = [rule["level"] for rule in policy["rules"]]
    keep = next(i for i, rule in enumerate(policy["rules"])
                if any("secrets" in r.get("resources", []) for r in rule.get("resources", [])))
    assert levels[keep] == "Metadata"
    assert all(level in ("None", "Metadata") for level in levels[:keep])
    assert policy["rules"][-1] == {"level": "Metadata"}  # anything else: who, not what
