"""The artifact cache: blobs by content, records only over complete blobs, atomic writes."""

from __future__ import annotations

import errno
import os

import pytest

from provision.artifacts import cache as cache_mod
from provision.artifacts import gobuild
from provision.artifacts.cache import Cache, sha256_file
from provision.artifacts.errors import DiskFull, ToolchainMissing


@pytest.fixture
def store(tmp_path):
    c = Cache(tmp_path / "cache")
    c.ensure()
    return c


def test_default_root_follows_provision_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "pc"))
    assert Cache().root == tmp_path / "pc" / "artifacts"
    assert cache_mod.go_root() == tmp_path / "pc" / "go"


def test_put_file_is_content_addressed_and_keeps_exec_bit(tmp_path, store):
    f = tmp_path / "bin"
    f.write_bytes(b"hello")
    f.chmod(0o755)
    d = store.put_file(f)
    assert d == sha256_file(f)
    assert store.blob_path(d).read_bytes() == b"hello"
    assert os.access(store.blob_path(d), os.X_OK)
    assert store.put_file(f) == d  # idempotent
    assert list(store.tmp.iterdir()) == []


def test_full_disk_leaves_no_blob_and_no_tmp(tmp_path, store, monkeypatch):
    f = tmp_path / "data"
    f.write_bytes(b"x" * 1000)

    def enospc(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.shutil, "copyfile", enospc)
    with pytest.raises(DiskFull, match="no space left"):
        store.put_file(f)
    assert list(store.blobs.iterdir()) == []
    assert list(store.tmp.iterdir()) == []


def test_interrupted_rename_leaves_no_half_written_blob(tmp_path, store, monkeypatch):
    f = tmp_path / "data"
    f.write_bytes(b"y" * 1000)
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).startswith(str(store.blobs)):
            raise KeyboardInterrupt  # Ctrl-C between copy and rename
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put_file(f)
    assert list(store.blobs.iterdir()) == []
    # A leftover temp file is possible; the next build sweeps it.
    store.sweep_tmp()
    assert list(store.tmp.iterdir()) == []


def test_record_needs_its_blobs(store):
    d = store.put_bytes(b"abc")
    store.put_record("go-x", "k1", {"files": {"x": {"sha256": d}}})
    assert store.get_record("go-x", "k1")["files"]["x"]["sha256"] == d
    with pytest.raises(ValueError):
        store.put_record("go-x", "k2", {"files": {"y": {"sha256": "0" * 64}}})
    store.blob_path(d).unlink()  # someone pruned a blob: the record no longer counts
    assert store.get_record("go-x", "k1") is None


def test_workdir_is_removed(store):
    with store.workdir("step") as w:
        (w / "f").write_text("x")
    assert not w.exists()


def test_check_space(store, monkeypatch):
    class Usage:
        free = 10 * 2**20

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _p: Usage)
    with pytest.raises(DiskFull, match="only 10 MiB free"):
        store.check_space()


def test_recipe_key_is_order_independent():
    key = cache_mod.recipe_key
    assert key({"a": 1, "b": [1, 2]}) == key({"b": [1, 2], "a": 1})
    assert cache_mod.recipe_key({"a": 1}) != cache_mod.recipe_key({"a": 2})


def test_missing_go_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(gobuild, "find_go", lambda: None)
    with pytest.raises(ToolchainMissing, match="Go toolchain"):
        gobuild.go_version()


def test_old_go_is_a_clear_error(monkeypatch):
    class Done:
        stdout = "go1.21.4\n"

    monkeypatch.setattr(gobuild, "find_go", lambda: "/usr/bin/go")
    monkeypatch.setattr(gobuild.subprocess, "run", lambda *a, **k: Done)
    with pytest.raises(ToolchainMissing, match="too old"):
        gobuild.go_version()


def test_sweep_keeps_work_of_live_builds_and_removes_dead_ones(store):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    (store.tmp / f"go-kubernetes.{dead.pid}.abc").mkdir()
    (store.tmp / f"blob.{dead.pid}.xyz").write_text("half")
    live = store.tmp / "images.1.keep"  # pid 1 is alive
    live.mkdir()
    store.sweep_tmp()
    assert [p.name for p in store.tmp.iterdir()] == ["images.1.keep"]


def test_a_long_build_command_says_it_is_still_running(tmp_path, monkeypatch):
    from provision.artifacts import gobuild

    monkeypatch.setattr(gobuild, "HEARTBEAT_SECONDS", 0.1)
    told: list[float] = []
    log = tmp_path / "go.log"
    gobuild._run(["sh", "-c", "sleep 0.35; echo done"], tmp_path, dict(os.environ), log,
                 told.append)
    assert len(told) >= 2 and told == sorted(told)
    assert log.read_text().endswith("done\n")
