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
              "kubelet", "control_plane", "worker", "cni", "reset"]
PREFIX = {"os_baseline": "os_", "hosts_file": "hosts_file_",
          "container_runtime": "containerd_", "etcd": "etcd_",
          "api_lb": "apilb_", "kubelet": "kubelet_", "control_plane": "cp_",
          "worker": "worker_", "cni": "cni_", "reset": "reset_"}


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


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_defaults_are_namespaced(role):
    defaults = load(ROLES / role / "defaults" / "main.yml") or {}
    bad = [k for k in defaults if not k.startswith(PREFIX[role])]
    assert not bad, f"{role} defaults outside its namespace: {bad}"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_task_is_named_and_fully_qualified(role):
    for task in all_tasks(role):
        assert task.get("name"), task
        modules = [k for k in task if "." in k and k.startswith("ansible.")]
        if "block" not in task:
            assert modules, f"{role}: {task['name']} uses a short module name"


@pytest.mark.parametrize("role", ROLE_NAMES)
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
    for role in ROLE_NAMES:
        for task in all_tasks(role):
            if any(k in task for k in ("ansible.builtin.command", "ansible.builtin.shell")):
                assert "changed_when" in task or task.get("when"), \
                    f"{role}: {task['name']} has no changed_when"


def test_kubeadm_reset_never_touches_etcd():
    """etcd is external (ours): kubeadm reset's remove-etcd-member phase would empty
    kubeadm's default /var/lib/etcd, where a co-located member keeps its data."""
    resets = [(role, task["name"], str(task.get(module)))
              for role in ROLE_NAMES for task in all_tasks(role)
              for module in ("ansible.builtin.command", "ansible.builtin.shell")
              if "kubeadm reset" in str(task.get(module, ""))]
    assert {role for role, _, _ in resets} == {"control_plane", "worker", "reset"}
    for role, name, command in resets:
        assert "--skip-phases=remove-etcd-member" in command, f"{role}: {name}"


@pytest.mark.skipif(shutil.which("ansible-playbook") is None
                    and not (Path(sys.executable).parent / "ansible-playbook").exists(),
                    reason="ansible-core not installed")
def test_syntax_check(tmp_path):
    play = [{"hosts": "all", "gather_facts": False, "roles": ROLE_NAMES}]
    (tmp_path / "site.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "hosts").write_text("localhost ansible_connection=local\n")
    exe = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(exe if exe.exists() else "ansible-playbook"), "-i",
                           str(tmp_path / "hosts"), "--syntax-check", str(tmp_path / "site.yml")],
                          capture_output=True, text=True, env={"ANSIBLE_ROLES_PATH": str(ROLES),
                                                               "PATH": "/usr/bin:/bin",
                                                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ templates
NODES = [("cp-1", "10.250.0.11", ["control-plane"]), ("cp-2", "10.250.0.12", ["control-plane"]),
         ("cp-3", "10.250.0.13", ["control-plane"]), ("worker-1", "10.250.0.21", ["worker"])]


def render(role: str, template: str, **vars_):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLES / role / "templates")),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    hostvars = {n: {"node_name": n, "node_address": a, "node_roles": r} for n, a, r in NODES}
    groups = {"control_plane": ["cp-1", "cp-2", "cp-3"], "etcd": ["cp-1", "cp-2", "cp-3"],
              "workers": ["worker-1"]}
    base = {"hostvars": hostvars, "groups": groups, "inventory_hostname": "cp-1",
            "node_name": "cp-1", "node_address": "10.250.0.11"}
    return env.get_template(template).render(**{**base, **vars_})


def test_haproxy_balances_every_api_server():
    out = render("api_lb", "haproxy.cfg.j2", apilb_vip="10.250.0.10", apilb_port=6443,
                 apilb_backend_port=6443, apilb_group="control_plane",
                 apilb_haproxy_stats_port=8404)
    assert "bind 10.250.0.10:6443" in out
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
        cp_apiserver_port=6443, cp_cri_socket="unix:///run/containerd/containerd.sock",
        cp_preflight_ignored=["SystemVerification"],
        kubelet_kubeadm_patches_dir="/etc/kubernetes/provision/patches",
        cp_cluster_name="local", cp_version="v1.37.2", cp_endpoint="10.250.0.10:6443",
        cp_image_repository="registry.k8s.io", cp_pod_cidr="10.244.0.0/16",
        cp_service_cidr="10.96.0.0/12", cp_cluster_domain="cluster.local",
        cp_etcd_group="etcd", cp_etcd_client_port=2379,
        cp_cert_sans=["10.250.0.10", "127.0.0.1", "cp-1", "cp-2", "cp-3"],
        kubelet_in_container=container)
    docs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.250.0.11", "bindPort": 6443}
    assert init["patches"]["directory"] == "/etc/kubernetes/provision/patches"
    assert cluster["controlPlaneEndpoint"] == "10.250.0.10:6443"
    assert cluster["etcd"]["external"]["endpoints"] == [
        "https://10.250.0.11:2379", "https://10.250.0.12:2379", "https://10.250.0.13:2379"]
    assert {"10.250.0.10", "127.0.0.1", "cp-2"} <= set(cluster["apiServer"]["certSANs"])
    # node-dependent kubelet settings are per-node patches, never cluster-wide
    assert "KubeletConfiguration" not in docs
    proxy = docs["KubeProxyConfiguration"]
    assert (proxy.get("conntrack", {}).get("maxPerCore") == 0) == container


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


@pytest.mark.parametrize("template,role,extra", [
    ("kubeadm-join.yaml.j2", "worker", dict(
        worker_endpoint="10.250.0.10:6443", worker_join_token="abcdef.0123456789abcdef",
        worker_join_ca_hash="sha256:00", worker_cri_socket="unix:///x",
        worker_preflight_ignored=[])),
    ("kubeadm-join.yaml.j2", "control_plane", dict(
        cp_endpoint="10.250.0.10:6443", cp_join_token="abcdef.0123456789abcdef",
        cp_join_ca_hash="sha256:00", cp_cri_socket="unix:///x", cp_preflight_ignored=[],
        cp_apiserver_port=6443, cp_join_certificate_key="00")),
])
def test_every_join_reads_the_nodes_patches(template, role, extra):
    out = render(role, template, kubelet_kubeadm_patches_dir="/etc/kubernetes/provision/patches",
                 **extra)
    assert yaml.safe_load(out)["patches"] == {"directory": "/etc/kubernetes/provision/patches"}


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
                 etcd_data_dir="/var/lib/etcd/data", etcd_conf_dir="/etc/etcd",
                 etcd_client_port=2379, etcd_peer_port=2380,
                 etcd_initial_cluster="cp-1=https://10.250.0.11:2380",
                 etcd_initial_cluster_state="new", etcd_cluster_token="t",
                 etcd_heartbeat_interval=250, etcd_election_timeout=2500)
    conf = yaml.safe_load(out)
    assert all(u.startswith("https://") for u in conf["listen-client-urls"].split(","))
    assert conf["client-transport-security"]["client-cert-auth"] is True
    assert conf["peer-transport-security"]["client-cert-auth"] is True
