"""The OCI image writer: deterministic layers, consistent manifests, valid layouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from provision.artifacts import oci
from provision.artifacts.cache import Cache


@pytest.fixture
def store(tmp_path):
    c = Cache(tmp_path / "cache")
    c.ensure()
    return c


def _spec(tmp_path, payload=b"#!/bin/true\n"):
    binary = tmp_path / "prog"
    binary.write_bytes(payload)
    s = oci.LayerSpec()
    s.add_file("/usr/local/bin/prog", binary, 0o755)
    s.add_file("/etc/passwd", b"root:x:0:0::/root:/sbin/nologin\n")
    s.add_dir("/tmp", 0o1777)
    s.add_symlink("/bin/prog", "../usr/local/bin/prog")
    return s


def _members(store, layer):
    raw = gzip.decompress(store.blob_path(layer.digest).read_bytes())
    assert hashlib.sha256(raw).hexdigest() == layer.diff_id
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return {m.name: m for m in t.getmembers()}, raw


def test_layer_is_deterministic(tmp_path, store):
    a = oci.write_layer(_spec(tmp_path), store)
    b = oci.write_layer(_spec(tmp_path), store)
    assert a == b
    c = oci.write_layer(_spec(tmp_path, b"other"), store)
    assert c.digest != a.digest and c.diff_id != a.diff_id


def test_layer_entries_owner_mode_mtime_and_parents(tmp_path, store):
    layer = oci.write_layer(_spec(tmp_path), store)
    members, _raw = _members(store, layer)
    names = list(members)
    assert names == sorted(names)
    for parent in ("usr", "usr/local", "usr/local/bin", "etc", "bin"):
        assert members[parent].isdir()
    prog = members["usr/local/bin/prog"]
    assert prog.mode == 0o755 and prog.uid == 0 and prog.gid == 0 and prog.mtime == 0
    assert prog.uname == "" and prog.gname == ""
    assert members["tmp"].mode == 0o1777
    assert members["bin/prog"].issym() and members["bin/prog"].linkname == "../usr/local/bin/prog"
    assert store.blob_path(layer.digest).stat().st_size == layer.size


def test_image_manifest_and_config(tmp_path, store):
    layer = oci.write_layer(_spec(tmp_path), store)
    cfg = oci.ImageConfig(entrypoint=("/usr/local/bin/prog",), env=("PATH=/bin", "A=b"),
                          user="65535:65535")
    img = oci.build_image([layer], cfg, store)
    manifest = json.loads(store.blob_path(img.manifest_digest).read_bytes())
    assert manifest["mediaType"] == oci.MEDIA_MANIFEST
    assert manifest["config"]["digest"] == f"sha256:{img.config_digest}"
    assert manifest["layers"] == [{"mediaType": oci.MEDIA_LAYER_GZIP,
                                   "digest": f"sha256:{layer.digest}", "size": layer.size}]
    config = json.loads(store.blob_path(img.config_digest).read_bytes())
    assert config["rootfs"]["diff_ids"] == [f"sha256:{layer.diff_id}"]
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/prog"]
    assert config["config"]["User"] == "65535:65535"
    assert config["config"]["Env"] == ["PATH=/bin", "A=b"]
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert "created" not in config  # no timestamps: reproducible digests
    again = oci.build_image([layer], cfg, store)
    assert again.manifest_digest == img.manifest_digest
    assert oci.image_blobs(img.manifest_digest, store) == [
        layer.digest, img.config_digest, img.manifest_digest]


def test_layout_blobs_are_named_by_their_content(tmp_path, store):
    layer = oci.write_layer(_spec(tmp_path), store)
    img = oci.build_image([layer], oci.ImageConfig(entrypoint=("/x",)), store)
    dest = tmp_path / "layout"
    oci.write_layout({"registry.k8s.io/pause:3.10.2": img.manifest_digest}, store, dest)
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    (entry,) = index["manifests"]
    ref = entry["annotations"]["org.opencontainers.image.ref.name"]
    assert ref == "registry.k8s.io/pause:3.10.2"
    blobs = list((dest / "blobs" / "sha256").iterdir())
    assert len(blobs) == 3
    for b in blobs:
        assert hashlib.sha256(b.read_bytes()).hexdigest() == b.name


def test_add_tree_keeps_modes_and_links(tmp_path, store):
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    tool = root / "usr/sbin/xtables-nft-multi"
    tool.write_bytes(b"elf")
    tool.chmod(0o755)
    (root / "usr/sbin/iptables").symlink_to("xtables-nft-multi")
    spec = oci.LayerSpec()
    spec.add_tree(root)
    members, _ = _members(store, oci.write_layer(spec, store))
    assert members["usr/sbin/xtables-nft-multi"].mode == 0o755
    assert members["usr/sbin/iptables"].linkname == "xtables-nft-multi"


def test_split_reference():
    assert oci.split_reference("registry.k8s.io/coredns/coredns:v1.14.6") == (
        "registry.k8s.io/coredns/coredns", "v1.14.6")
    with pytest.raises(ValueError):
        oci.split_reference("localhost:5000/pause")
