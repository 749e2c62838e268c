"""Serving, without starting anything: mirror layout, containerd hosts.toml, configs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from provision.artifacts.assemble import Artifact, ArtifactSet
from provision.artifacts.cache import Cache
from provision.artifacts.serve import NGINX_CONF, REGISTRY_CONF, ArtifactServer, hosts_toml


def _aset(tmp_path) -> ArtifactSet:
    cache = Cache(tmp_path / "cache")
    arts = [Artifact(n, "binary", "v1.37.2", "go:x", d * 64, tmp_path / (d * 64))
            for n, d in (("kubeadm", "a"), ("kubelet", "b"), ("flannel", "c"), ("crictl", "d"),
                         ("coredns", "e"))]
    return ArtifactSet("v1.37.2", arts, {}, {}, cache)


def test_files_tree_and_sums(tmp_path):
    aset = _aset(tmp_path)
    tree = aset.files_tree()
    assert set(tree) == {"v1.37.2/bin/kubeadm", "v1.37.2/bin/kubelet", "v1.37.2/bin/crictl",
                         "v1.37.2/cni/flannel"}  # coredns only ships as an image
    assert f"{'a' * 64}  bin/kubeadm" in aset.sha256sums()


def test_server_addresses(tmp_path):
    srv = ArtifactServer(_aset(tmp_path), "10.250.0.1", netns="pv-x")
    assert srv.mirror_url == "http://10.250.0.1:8080"
    assert srv.registry == "10.250.0.1:5000"
    assert srv.apt_source == "deb [trusted=yes] http://10.250.0.1:8080/apt ./"
    assert srv.run_dir == tmp_path / "cache" / "serve" / "pv-x-10.250.0.1-8080"
    assert srv._prefix() == ["ip", "netns", "exec", "pv-x"]


def test_hosts_toml_points_at_the_namespaced_mirror():
    for upstream, server in (("registry.k8s.io", "https://registry.k8s.io"),
                             ("docker.io", "https://registry-1.docker.io"),
                             ("ghcr.io", "https://ghcr.io")):
        doc = tomllib.loads(hosts_toml(upstream, "10.250.0.1:5000"))
        assert doc["server"] == server
        host = doc["host"][f"http://10.250.0.1:5000/v2/{upstream}"]
        assert host == {"capabilities": ["pull", "resolve"], "override_path": True}


def test_generated_configs_keep_everything_in_the_run_dir():
    run = Path("/r")
    nginx = NGINX_CONF.format(run=run, user="", address="10.0.0.1", port=8080, site=run / "site")
    assert "listen 10.0.0.1:8080;" in nginx and "daemon off;" in nginx
    for line in nginx.splitlines():
        for word in line.split():
            if word.startswith("/") and not word.startswith("/healthz") \
                    and not word.startswith("/apt/") and not word.startswith("/files/"):
                assert word.startswith("/r"), line
    reg = REGISTRY_CONF.format(run=run, address="10.0.0.1", port=5000, secret="s",
                               readonly="true")
    assert "rootdirectory: /r/registry" in reg and "addr: 10.0.0.1:5000" in reg
    assert yaml.safe_load(reg)["storage"]["maintenance"]["readonly"] == {"enabled": True}
    assert yaml.safe_load(reg)["storage"]["delete"] == {"enabled": False}
