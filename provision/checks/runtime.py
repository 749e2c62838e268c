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
    conditions = {c["type"]: c.get("status", False)
                  for c in json.loads(out.stdout)["status"]["conditions"]}
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


def test_the_sandbox_image_runs(host):
    """The sandbox (pause) image comes through the registry mirror (CRI pull) and
    runc runs it under containerd, in the kubelet's namespace."""
    config = host.file("/etc/containerd/config.toml").content_string
    image = config.split('sandbox_image = "', 1)[1].split('"', 1)[0]
    out = host.run(f"timeout 120 crictl pull {image}")
    assert out.rc == 0, out.stderr or out.stdout
    name = f"provision-check-{int(time.time())}"
    try:
        out = host.run(f"timeout 60 ctr -n k8s.io run -d {image} {name}")
        assert out.rc == 0, out.stderr or out.stdout
        for _ in range(20):
            awk = f"awk '$1 == \"{name}\" {{print $3}}'"
            status = host.run(f"ctr -n k8s.io task ls | {awk}").stdout.strip()
            if status:
                break
            time.sleep(0.5)
        assert status == "RUNNING", status
    finally:
        host.run(f"ctr -n k8s.io task kill -s KILL {name}; sleep 1; "
                 f"ctr -n k8s.io task delete {name}; ctr -n k8s.io container delete {name}")


def test_downloaded_tools_are_the_pinned_files(host, cluster, files_not_as_pinned):
    """crictl and the flannel CNI plugin are byte for byte what the lock pins (the
    download is checked on the node; this proves nothing replaced them since)."""
    files = ["bin/crictl"] + (["cni/flannel"] if cluster.get("provision_cni") == "flannel"
                              else [])
    wrong = files_not_as_pinned(host, files)
    assert not wrong, "; ".join(wrong)
