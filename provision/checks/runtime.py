"""runtime stage: containerd, runc, CNI plugins, crictl, registry mirrors."""

import json
import time

import pytest


def test_containerd_active(host):
    assert host.service("containerd").is_running
    assert host.service("containerd").is_enabled


def test_cri_healthy(host):
    out = host.run("crictl info")
    assert out.rc == 0, out.stderr
    conditions = {c["type"]: c["status"] for c in json.loads(out.stdout)["status"]["conditions"]}
    assert conditions.get("RuntimeReady") is True, conditions


def test_runc_and_cni_plugins(host):
    assert host.run("runc --version").rc == 0
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        assert host.file(f"/opt/cni/bin/{plugin}").exists, plugin


def test_cgroup_driver_matches_the_host(host):
    v2 = host.file("/sys/fs/cgroup/cgroup.controllers").exists
    config = host.file("/etc/containerd/config.toml").content_string
    want = "SystemdCgroup = true" if v2 else "SystemdCgroup = false"
    assert want in config


def test_registry_mirrors(host, cluster):
    registry = cluster.get("provision_registry")
    if not registry:
        pytest.skip("no local registry")
    for upstream in ("registry.k8s.io", "docker.io", "ghcr.io"):
        hosts = host.file(f"/etc/containerd/certs.d/{upstream}/hosts.toml")
        assert hosts.exists and f"http://{registry}" in hosts.content_string, upstream


def test_a_pod_sandbox_starts(host):
    """The sandbox (pause) image comes through the mirror and runc runs it."""
    name = f"provision-check-{int(time.time())}"
    spec = json.dumps({
        "metadata": {"name": name, "namespace": "provision-check", "uid": name, "attempt": 0},
        "linux": {"security_context": {"namespace_options": {"network": 2}}},  # host network
        "log_directory": "/tmp",
    })
    path = f"/tmp/{name}.json"
    host.run(f"cat > {path} <<'EOF'\n{spec}\nEOF")
    out = host.run(f"timeout 120 crictl runp {path}")
    try:
        assert out.rc == 0, out.stderr or out.stdout
        pod = out.stdout.strip()
        state = host.run(f"crictl inspectp -o json {pod}")
        assert json.loads(state.stdout)["status"]["state"] == "SANDBOX_READY"
    finally:
        host.run(f"crictl pods --name {name} -q | xargs -r crictl stopp; "
                 f"crictl pods --name {name} -q | xargs -r crictl rmp; rm -f {path}")
