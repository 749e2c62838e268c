"""etcd: built from the Go module proxy, packaged as etcd-server/etcd-client .debs."""

from __future__ import annotations

import subprocess

import pytest

from provision.artifacts import etcdpkg, gobuild, locks, versions
from provision.artifacts.assemble import _deb_pins
from provision.artifacts.cache import Cache


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.lstrip("v").split("-")[0].split("."))


def test_exec_name_follows_go_for_major_version_suffixes():
    assert gobuild.exec_name("go.etcd.io/etcd/etcdctl/v3") == "etcdctl"
    assert gobuild.exec_name("go.etcd.io/etcd/server/v3") == "server"
    assert gobuild.exec_name("k8s.io/kubernetes/cmd/kubeadm") == "kubeadm"
    assert gobuild.exec_name("example.com/tools/v1") == "v1"  # v1 is no suffix for Go


@pytest.mark.parametrize("version", versions.supported_kubernetes_versions())
def test_every_release_builds_an_etcd_kubeadm_accepts(version):
    rel = versions.release(version)
    assert _version(rel.etcd) >= _version(rel.min_external_etcd)
    prog = next(p for p in gobuild.programs(rel) if p.step == "etcd")
    assert prog.version == rel.etcd
    assert {b for b, _ in prog.packages} == {"etcd", "etcdctl", "etcdutl"}
    # the wrapper module pins the same release of all three modules
    gomod = (gobuild.GOMOD_DIR / prog.wrapper / "go.mod").read_text()
    for mod in ("server", "etcdctl", "etcdutl"):
        assert f"go.etcd.io/etcd/{mod}/v3 {rel.etcd}\n" in gomod


@pytest.mark.parametrize("version", versions.supported_kubernetes_versions())
def test_committed_lock_pins_our_etcd_packages_not_debians(version):
    lock = locks.load(version)
    assert lock is not None
    rel = versions.release(version)
    by = lock.by_name()
    for name in ("etcd", "etcdctl", "etcdutl"):
        assert by[name].version == rel.etcd and by[name].kind == "binary"
    for name in ("deb/etcd-server", "deb/etcd-client"):
        assert by[name].version == etcdpkg.deb_version(rel.etcd)
        assert by[name].source == etcdpkg.lock_source(rel.etcd)
    # and the Debian download list (what apt-get download fetches) leaves them out
    pins, _image = _deb_pins(rel, lock, False, lambda _m: None)
    assert "etcd-server" not in pins and "etcd-client" not in pins and "containerd" in pins


def test_deb_version_sorts_above_debians_etcd():
    ours = etcdpkg.deb_version("v3.6.16")
    r = subprocess.run(["dpkg", "--compare-versions", ours, "gt", "3.4.23-4+b4"])
    assert r.returncode == 0, ours


def _fake_binaries(cache: Cache, tmp_path) -> dict[str, str]:
    out = {}
    for name in ("etcd", "etcdctl", "etcdutl"):
        f = tmp_path / name
        f.write_text(f"#!/bin/sh\necho {name}\n")
        out[name] = cache.put_file(f)
    return out


def test_packages_are_reproducible_and_complete(tmp_path):
    recs = []
    for i in (1, 2):
        cache = Cache(tmp_path / f"cache{i}")
        recs.append(etcdpkg.build_debs("v3.7.3", _fake_binaries(cache, tmp_path), cache,
                                       lambda _m: None))
        assert list(cache.tmp.iterdir()) == []  # the work directory is gone
    assert recs[0] == recs[1]  # same inputs, same .deb bytes (the lock pins them)
    server = recs[0]["files"]["etcd-server"]
    assert server["filename"] == "etcd-server_3.7.3-0provision1_amd64.deb"
    deb = Cache(tmp_path / "cache1").blob_path(server["sha256"])
    info = subprocess.run(["dpkg-deb", "--field", deb, "Package", "Version"],
                          capture_output=True, text=True, check=True).stdout
    assert info == "Package: etcd-server\nVersion: 3.7.3-0provision1\n"
    contents = subprocess.run(["dpkg-deb", "--contents", deb], capture_output=True,
                              text=True, check=True).stdout
    assert "root/root" in contents and "./usr/bin/etcd\n" in contents
    assert "./usr/bin/etcdutl\n" in contents and "systemd" not in contents
    postinst = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], capture_output=True,
                              check=True).stdout
    assert b"useradd --system" in postinst
    client = Cache(tmp_path / "cache1").blob_path(recs[0]["files"]["etcd-client"]["sha256"])
    contents = subprocess.run(["dpkg-deb", "--contents", client], capture_output=True,
                              text=True, check=True).stdout
    assert "./usr/bin/etcdctl\n" in contents and "./usr/bin/etcd\n" not in contents
