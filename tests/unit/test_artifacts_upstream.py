"""Online mode: official files downloaded from a real HTTP server (127.0.0.1) into the
cache, checked against the lock; unpinned, tampered, cut or missing files rejected; the
artifact set of source upstream serves them instead of Go builds."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading

import pytest

from provision.artifacts import assemble, gobuild, locks, upstream, versions
from provision.artifacts.cache import Cache
from provision.artifacts.errors import ArtifactError, ChecksumMismatch, NotPinned
from provision.errors import EXIT_BAD_INPUT, BadInput

VERSION = "v1.37.2"
RELEASE = versions.release(VERSION)
PREFIX = f"/release/{VERSION}/bin/linux/amd64/"


class Files:
    """What the test server serves ({path: bytes}) and the paths it was asked for."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.short: set[str] = set()  # paths whose body is cut short


@pytest.fixture
def server():
    files = Files()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            files.requests.append(self.path)
            body = files.content.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10] if self.path in files.short else body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield files, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def lock_dir(tmp_path):
    d = tmp_path / "locks"
    d.mkdir()
    shutil.copy(locks.lock_path(VERSION), d)
    return d


@pytest.fixture
def store(tmp_path):
    return Cache(tmp_path / "cache")


def _publish(files: Files) -> dict[str, bytes]:
    """Official-looking files and their .sha256 companions, as dl.k8s.io has them."""
    bodies = {n: f"#!/bin/true {n} {VERSION}\n".encode() * 1000 for n in upstream.BINARIES}
    for name, body in bodies.items():
        files.content[PREFIX + name] = body
        files.content[PREFIX + name + ".sha256"] = hashlib.sha256(body).hexdigest().encode()
    return bodies


def test_committed_locks_leave_upstream_unpinned_rather_than_invent_checksums():
    for v in versions.supported_kubernetes_versions():
        lock = locks.load(v)
        assert lock is not None
        assert [e.name for e in lock.upstream] == list(upstream.BINARIES)
        for e in lock.upstream:
            assert e.source == f"https://dl.k8s.io/release/{v}/bin/linux/amd64/{e.name}"
            assert e.sha256 == ""  # null in the file: this box cannot reach dl.k8s.io


def test_unpinned_files_are_never_downloaded(server, lock_dir, store):
    files, base = server
    _publish(files)
    with pytest.raises(NotPinned) as err:
        upstream.fetch(VERSION, cache=store, lock_dir=lock_dir, base_url=base)
    msg = str(err.value)
    assert "kubeadm, kubelet, kubectl" in msg and "pin-upstream --version v1.37.2" in msg
    assert str(locks.lock_path(VERSION, lock_dir)) in msg and "source: offline" in msg
    assert err.value.exit_code == EXIT_BAD_INPUT  # nothing was touched
    assert files.requests == []


def test_pinned_files_are_fetched_verified_and_cached(server, lock_dir, store):
    files, base = server
    bodies = _publish(files)
    upstream.pin(VERSION, lock_dir=lock_dir, base_url=base)
    lock = locks.load(VERSION, lock_dir)
    assert {e.name: e.sha256 for e in lock.upstream} == {
        n: hashlib.sha256(b).hexdigest() for n, b in bodies.items()}
    assert "sha256: null" not in locks.lock_path(VERSION, lock_dir).read_text()
    got = upstream.fetch(VERSION, cache=store, lock_dir=lock_dir, base_url=base)
    for name, body in bodies.items():
        assert got[name].read_bytes() == body and got[name].stat().st_mode & 0o111
    assert list(store.tmp.iterdir()) == []
    asked = len(files.requests)
    upstream.fetch(VERSION, cache=store, lock_dir=lock_dir, base_url=base)
    assert len(files.requests) == asked  # warm: nothing downloaded again


def test_a_tampered_file_fails_loudly_and_leaves_nothing(server, lock_dir, store):
    files, base = server
    bodies = _publish(files)
    upstream.pin(VERSION, lock_dir=lock_dir, base_url=base)
    files.content[PREFIX + "kubeadm"] = bodies["kubeadm"].replace(b"true", b"evil")
    with pytest.raises(ChecksumMismatch) as err:
        upstream.fetch(VERSION, cache=store, lock_dir=lock_dir, base_url=base)
    msg = str(err.value)
    expected = hashlib.sha256(bodies["kubeadm"]).hexdigest()
    actual = hashlib.sha256(files.content[PREFIX + "kubeadm"]).hexdigest()
    assert f"checksum mismatch for kubeadm downloaded from {base}{PREFIX}kubeadm" in msg
    assert expected in msg and actual in msg and str(lock_dir) in msg
    assert not store.has_blob(expected) and not store.has_blob(actual)
    assert list(store.tmp.iterdir()) == []


def test_a_cut_download_leaves_nothing(server, lock_dir, store):
    files, base = server
    _publish(files)
    upstream.pin(VERSION, lock_dir=lock_dir, base_url=base)
    files.short.add(PREFIX + "kubeadm")
    with pytest.raises(ArtifactError, match=f"cannot download kubeadm from {base}"):
        upstream.fetch(VERSION, cache=store, lock_dir=lock_dir, base_url=base)
    assert list(store.blobs.iterdir()) == [] and list(store.tmp.iterdir()) == []


def test_a_missing_file_names_its_url(server, lock_dir, store):
    files, base = server
    _publish(files)
    upstream.pin(VERSION, lock_dir=lock_dir, base_url=base)
    del files.content[PREFIX + "kubelet"]
    with pytest.raises(ArtifactError, match=f"kubelet from {base}{PREFIX}kubelet: Not Found"):
        upstream.fetch(VERSION, cache=store, lock_dir=lock_dir, base_url=base)


def test_pin_rejects_a_checksum_file_without_a_checksum(server, lock_dir):
    files, base = server
    _publish(files)
    files.content[PREFIX + "kubectl.sha256"] = b"<html>maintenance</html>"
    before = locks.lock_path(VERSION, lock_dir).read_text()
    with pytest.raises(ArtifactError, match="holds no sha256"):
        upstream.pin(VERSION, lock_dir=lock_dir, base_url=base)
    assert locks.lock_path(VERSION, lock_dir).read_text() == before


def test_mirror_url_from_the_environment_keeps_the_path(monkeypatch):
    official = upstream.official_url(versions.release(VERSION), "kubeadm")
    assert upstream.download_url(official) == official
    monkeypatch.setenv(upstream.MIRROR_ENV, "http://mirror.internal:8080/k8s/")
    assert upstream.download_url(official) == \
        f"http://mirror.internal:8080/k8s{PREFIX}kubeadm"


def test_lock_update_keeps_upstream_pins(lock_dir):
    lock = locks.load(VERSION, lock_dir)
    lock.upstream = [locks.LockEntry(e.name, e.kind, e.version, e.source, "ab" * 32)
                     for e in lock.upstream]
    kept = upstream.lock_entries(versions.release(VERSION), lock)
    assert [e.sha256 for e in kept] == ["ab" * 32] * 3
    # a pin for another URL (another release) is not carried over
    other = upstream.lock_entries(versions.release("v1.36.3"), lock)
    assert [e.sha256 for e in other] == [""] * 3


# --- the artifact set of source upstream (assemble.py) ----------------------------------


@pytest.fixture
def pinned(server, lock_dir, monkeypatch):
    """Official files published and pinned; downloads go to the test server."""
    files, base = server
    bodies = _publish(files)
    upstream.pin(VERSION, lock_dir=lock_dir, base_url=base)
    monkeypatch.setenv(upstream.MIRROR_ENV, base)
    return files, bodies


def _records(store: Cache) -> list:
    return list(store.steps.rglob("*.json"))


def test_an_online_set_serves_the_official_files_not_go_builds(pinned, lock_dir, store):
    files, bodies = pinned
    official = assemble.official_binaries(RELEASE, store, lambda _m: None, lock_dir)
    aset = assemble.ArtifactSet(VERSION, official, {}, {}, store)
    tree, sums = aset.files_tree(), aset.sha256sums()
    for name, body in bodies.items():
        assert tree[f"{VERSION}/bin/{name}"].read_bytes() == body
        assert f"{hashlib.sha256(body).hexdigest()}  bin/{name}" in sums
    # the lock's identity of each file is the official URL, whichever server sent it
    assert {a.source for a in official} == {
        f"https://dl.k8s.io{PREFIX}{n}" for n in upstream.BINARIES}
    # and no Go build of the same names competes with them
    built = {b for p in assemble.programs(RELEASE, "upstream") for b, _pkg in p.packages}
    assert not built & set(gobuild.KUBERNETES_BINARIES)
    built_offline = {b for p in assemble.programs(RELEASE, "offline") for b, _pkg in p.packages}
    assert set(gobuild.KUBERNETES_BINARIES) <= built_offline


def test_online_mode_serves_only_images_no_upstream_registry_has():
    assert {d.ref for d in assemble.image_defs(RELEASE, "upstream")} == {
        f"ghcr.io/flannel-io/flannel-cni-plugin:{versions.FLANNEL_CNI_IMAGE_TAG}"}
    assert len(assemble.image_defs(RELEASE, "offline")) == 8


def test_an_online_build_without_pins_stops_before_any_work(server, lock_dir, store):
    files, base = server
    _publish(files)
    with pytest.raises(NotPinned, match="pins no sha256 for kubeadm, kubelet, kubectl"):
        assemble.build(VERSION, source="upstream", cache=store, lock_dir=lock_dir)
    assert files.requests == []
    assert _records(store) == [] and list(store.blobs.glob("*")) == []


def test_an_online_build_refuses_a_tampered_file(pinned, lock_dir, store):
    files, bodies = pinned
    files.content[PREFIX + "kubelet"] = bodies["kubelet"] + b"x"
    with pytest.raises(ChecksumMismatch, match="checksum mismatch for kubelet downloaded"):
        assemble.build(VERSION, source="upstream", cache=store, lock_dir=lock_dir)
    assert _records(store) == []  # nothing built after it


def test_an_online_build_does_not_rewrite_the_lock(lock_dir, store):
    before = locks.lock_path(VERSION, lock_dir).read_text()
    with pytest.raises(BadInput, match="--update-lock records a whole offline set"):
        assemble.build(VERSION, source="upstream", update_lock=True, cache=store,
                       lock_dir=lock_dir)
    assert locks.lock_path(VERSION, lock_dir).read_text() == before


def test_status_of_an_online_set(pinned, lock_dir, store):
    def rows() -> dict[str, assemble.ArtifactStatus]:
        return {r.name: r for r in assemble.status(VERSION, source="upstream", cache=store,
                                                   lock_dir=lock_dir)}

    before = rows()
    assert {n for n in upstream.BINARIES if not before[n].present} == set(upstream.BINARIES)
    assert before["kubeadm"].source == f"https://dl.k8s.io{PREFIX}kubeadm"
    assert {"etcd", "crictl", "flannel", "ghcr.io/provision/netcheck:v0.1.0"} <= set(before)
    assert "deb/containerd" in before
    assert not {"kube-apiserver", "coredns", "pause", "registry.k8s.io/pause:3.10.2"} & set(before)
    upstream.fetch(VERSION, cache=store, lock_dir=lock_dir)
    assert all(rows()[n].present for n in upstream.BINARIES)
