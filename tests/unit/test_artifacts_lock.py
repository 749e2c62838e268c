"""Lock files: pinned checksums, loud mismatches, supported versions."""

from __future__ import annotations

import pytest

from provision.artifacts import build, locks, versions
from provision.artifacts.errors import ArtifactError, ChecksumMismatch, UnsupportedVersion
from provision.artifacts.locks import Lock, LockEntry
from provision.errors import EXIT_BAD_INPUT

A = "a" * 64
B = "b" * 64


def _lock(tmp_path, sha=A):
    return Lock("v1.37.2", "go1.26.8",
                [LockEntry("kubeadm", "binary", "v1.37.2",
                           "go:k8s.io/kubernetes/cmd/kubeadm@v1.37.2", sha)],
                tmp_path / "v1.37.2.yaml")


def test_roundtrip(tmp_path):
    lock = _lock(tmp_path)
    lock.entries.append(LockEntry("deb/iptables", "deb", "1.8.9-2",
                                  "debian:bookworm/iptables=1.8.9-2", B, image=True))
    locks.save(lock)
    again = locks.load("v1.37.2", tmp_path)
    assert again.entries == lock.entries
    assert again.go == "go1.26.8"
    assert "image: true" in lock.path.read_text()


def test_mismatch_fails_with_both_values(tmp_path):
    lock = _lock(tmp_path)
    produced = [LockEntry("kubeadm", "binary", "v1.37.2", "go:...", B)]
    with pytest.raises(ChecksumMismatch) as err:
        locks.verify(lock, produced, update=False)
    msg = str(err.value)
    assert A in msg and B in msg and "--update-lock" in msg and "kubeadm" in msg


def test_update_lock_accepts_new_values(tmp_path):
    locks.verify(_lock(tmp_path), [LockEntry("kubeadm", "binary", "v", "s", B)], update=True)


def test_unpinned_artifact_fails(tmp_path):
    with pytest.raises(ArtifactError, match="does not pin kubelet"):
        locks.verify(_lock(tmp_path), [LockEntry("kubelet", "binary", "v", "s", A)], update=False)


def test_no_lock_fails_with_how_to():
    with pytest.raises(ArtifactError, match="--update-lock"):
        locks.verify(None, [], update=False)


def test_lock_for_another_version_is_rejected(tmp_path):
    locks.save(_lock(tmp_path))
    (tmp_path / "v1.36.3.yaml").write_text((tmp_path / "v1.37.2.yaml").read_text())
    with pytest.raises(ArtifactError, match="not v1.36.3"):
        locks.load("v1.36.3", tmp_path)


def test_supported_versions_newest_first():
    vs = versions.supported_kubernetes_versions()
    assert vs[0] == versions.DEFAULT_KUBERNETES_VERSION == "v1.37.2"
    assert "v1.36.3" in vs


def test_unsupported_version_is_bad_input(tmp_path):
    with pytest.raises(UnsupportedVersion) as err:
        build("v1.20.0", lock_dir=tmp_path)
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert "v1.37.2" in str(err.value)


def test_committed_locks_pin_every_artifact():
    for v in versions.supported_kubernetes_versions():
        lock = locks.load(v)
        assert lock is not None, f"no lock committed for {v}"
        names = {e.name for e in lock.entries}
        for b in ("kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-proxy", "coredns",
                  "flanneld", "flannel", "pause", "crictl", "etcd", "etcdctl"):
            assert b in names
        assert f"registry.k8s.io/kube-apiserver:{v}" in names
        assert "deb/containerd" in names and "deb/etcd-server" in names
        for e in lock.entries:
            assert len(e.sha256) == 64 and e.version and e.source


def test_file_digests_are_the_locks_pins_of_what_the_mirror_serves():
    """What a node checks its downloads against: read from the lock, built nothing."""
    from provision.artifacts.assemble import file_digests

    for v in versions.supported_kubernetes_versions():
        pins = {e.name: e.sha256 for e in locks.load(v).entries if e.kind == "binary"}
        digests = file_digests(v)
        assert digests["cni/flannel"] == pins["flannel"]
        for name in ("kubelet", "kubeadm", "kubectl", "crictl", "kube-apiserver"):
            assert digests[f"bin/{name}"] == pins[name], (v, name)
        assert "bin/etcd" not in digests and "bin/flanneld" not in digests  # not served
        assert all(len(d) == 64 for d in digests.values())
