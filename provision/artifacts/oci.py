"""A small OCI image writer and registry pusher.

Writes single- or few-layer images whose bytes depend only on their inputs: tar
entries sorted, owner 0:0, mtime 0, no user/group names, gzip with mtime 0; the
config carries no creation time. So the manifest digest of a rebuilt image equals the
one pinned in the lock file.

* ``LayerSpec`` describes a layer: files (from a host path or bytes), directories,
  symlinks, each with its mode.
* ``write_layer`` turns a spec into a gzip blob in the cache (digest, diff_id, size).
* ``build_image`` writes the config and the manifest blobs and returns an ``Image``.
* ``write_layout`` writes an OCI image layout directory (``ctr images import`` and
  ``crane push`` read it); ``push`` uploads an image to a registry over the
  distribution HTTP API (monolithic blob uploads, then the manifest).

Why not crane: see docs/artifacts.md (reproducible digests pinned in the lock, no
second toolchain at serving time); crane can still push the layouts this writes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class LayerSpec:
    """Contents of one layer. Paths are absolute image paths ("/usr/bin/x")."""

    files: dict[str, tuple[Path | bytes, int]] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    def add_file(self, path: str, source: Path | bytes, mode: int = 0o644) -> None:
        self.files[path] = (source, mode)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.dirs[path] = mode

    def add_symlink(self, path: str, target: str) -> None:
        self.symlinks[path] = target

    def add_tree(self, root: Path, prefix: str = "/") -> None:
        """Add a host directory tree (e.g. extracted .debs), keeping modes and links."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root)
            base = PurePosixPath(prefix)
            if str(rel) != ".":
                base = base / rel.as_posix()
            if str(rel) != ".":
                self.dirs[str(base)] = os.lstat(dirpath).st_mode & 0o7777
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                img = str(base / name)
                st = os.lstat(p)
                if p.is_symlink():
                    self.symlinks[img] = os.readlink(p)
                elif name in filenames and p.is_file():
                    self.files[img] = (p, st.st_mode & 0o7777)

    def all_dirs(self) -> dict[str, int]:
        """Explicit directories plus every parent of every entry (0755)."""
        out = dict(self.dirs)
        for path in [*self.files, *self.symlinks, *self.dirs]:
            for parent in PurePosixPath(path).parents:
                if str(parent) != "/":
                    out.setdefault(str(parent), 0o755)
        return out


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name.lstrip("/"))
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = link
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    return ti


def write_tar(spec: LayerSpec, out) -> None:
    """Write the layer as a deterministic (PAX) tar to a binary file object."""
    entries: list[tuple[str, str]] = []
    dirs = spec.all_dirs()
    entries += [(p, "dir") for p in dirs]
    entries += [(p, "file") for p in spec.files]
    entries += [(p, "link") for p in spec.symlinks]
    entries.sort(key=lambda e: e[0])
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, kind in entries:
            if kind == "dir":
                tar.addfile(_tarinfo(path, tarfile.DIRTYPE, dirs[path]))
            elif kind == "link":
                tar.addfile(_tarinfo(path, tarfile.SYMTYPE, 0o777, link=spec.symlinks[path]))
            else:
                source, mode = spec.files[path]
                if isinstance(source, bytes):
                    tar.addfile(_tarinfo(path, tarfile.REGTYPE, mode, len(source)),
                                io.BytesIO(source))
                else:
                    size = os.stat(source).st_size
                    with open(source, "rb") as f:
                        tar.addfile(_tarinfo(path, tarfile.REGTYPE, mode, size), f)


class _HashingWriter:
    def __init__(self, f) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256 of the gzip blob (hex, no prefix)
    diff_id: str  # sha256 of the uncompressed tar (hex)
    size: int


def write_layer(spec: LayerSpec, store) -> Layer:
    """Write the layer gzip into ``store`` (a ``Cache``); return its digests."""
    store.ensure()
    fd, name = tempfile.mkstemp(prefix=f"layer.{os.getpid()}.", suffix=".tar.gz", dir=store.tmp)
    try:
        with os.fdopen(fd, "wb") as raw:
            gz_hash = _HashingWriter(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=gz_hash, mtime=0,
                               compresslevel=6) as gz:
                tar_hash = _HashingWriter(gz)
                write_tar(spec, tar_hash)
        digest = store.put_file(Path(name), move=True)
        return Layer(digest=digest, diff_id=tar_hash.h.hexdigest(), size=gz_hash.n)
    finally:
        Path(name).unlink(missing_ok=True)


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    user: str = ""
    workdir: str = "/"
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Image:
    manifest_digest: str
    manifest_size: int
    config_digest: str
    layers: tuple[Layer, ...]


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_image(layers: list[Layer], config: ImageConfig, store) -> Image:
    cfg: dict = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": list(config.env), "WorkingDir": config.workdir},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{lay.diff_id}" for lay in layers]},
        "history": [{"created_by": "provision.artifacts.oci"} for _ in layers],
    }
    if config.entrypoint:
        cfg["config"]["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        cfg["config"]["Cmd"] = list(config.cmd)
    if config.user:
        cfg["config"]["User"] = config.user
    if config.labels:
        cfg["config"]["Labels"] = dict(config.labels)
    cfg_bytes = _canonical(cfg)
    cfg_digest = store.put_bytes(cfg_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": f"sha256:{cfg_digest}",
                   "size": len(cfg_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": f"sha256:{lay.digest}",
                    "size": lay.size} for lay in layers],
    }
    m_bytes = _canonical(manifest)
    m_digest = store.put_bytes(m_bytes)
    return Image(m_digest, len(m_bytes), cfg_digest, tuple(layers))


def read_manifest(digest: str, store) -> dict:
    return json.loads(store.blob_path(digest).read_bytes())


def image_blobs(manifest_digest: str, store) -> list[str]:
    """Every blob digest (hex) an image needs: layers, config, manifest."""
    m = read_manifest(manifest_digest, store)
    out = [d["digest"].split(":", 1)[1] for d in m["layers"]]
    out.append(m["config"]["digest"].split(":", 1)[1])
    out.append(manifest_digest)
    return out


def write_layout(images: dict[str, str], store, dest: Path) -> None:
    """An OCI image layout at ``dest``: {reference: manifest digest}. Blobs hardlinked."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = []
    for ref, digest in sorted(images.items()):
        for d in image_blobs(digest, store):
            target = blobs / d
            if not target.exists():
                try:
                    os.link(store.blob_path(d), target)
                except OSError:
                    shutil.copyfile(store.blob_path(d), target)
        manifests.append({
            "mediaType": MEDIA_MANIFEST,
            "digest": f"sha256:{digest}",
            "size": store.blob_path(digest).stat().st_size,
            "annotations": {"org.opencontainers.image.ref.name": ref,
                            "io.containerd.image.name": ref},
        })
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}
    (dest / "index.json").write_bytes(_canonical(index))


# -- pushing to a registry (distribution HTTP API v2) -------------------------------------

class PushError(Exception):
    pass


def _request(method: str, url: str, data=None, headers: dict | None = None,
             timeout: float = 300) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def push(registry: str, repository: str, tag: str, manifest_digest: str, store) -> None:
    """Push one image: ``registry`` is ``http://host:port``, ``repository`` e.g.
    ``registry.k8s.io/pause`` (the mirror keeps the upstream host as first path part)."""
    base = registry.rstrip("/")
    for d in image_blobs(manifest_digest, store)[:-1]:
        status, _h, _b = _request("HEAD", f"{base}/v2/{repository}/blobs/sha256:{d}")
        if status == 200:
            continue
        status, headers, body = _request("POST", f"{base}/v2/{repository}/blobs/uploads/",
                                         data=b"")
        if status != 202:
            raise PushError(f"start upload to {repository}: HTTP {status} {body[:200]!r}")
        location = headers.get("Location") or headers.get("location")
        if not location:
            raise PushError(f"start upload to {repository}: HTTP 202 without a Location")
        if location.startswith("/"):
            location = base + location
        sep = "&" if "?" in location else "?"
        path = store.blob_path(d)
        with open(path, "rb") as f:
            status, _h, body = _request(
                "PUT", f"{location}{sep}digest=sha256:{d}", data=f,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(path.stat().st_size)})
        if status != 201:
            raise PushError(f"upload blob sha256:{d} to {repository}: HTTP {status} "
                            f"{body[:200]!r}")
    m_bytes = store.blob_path(manifest_digest).read_bytes()
    status, _h, body = _request("PUT", f"{base}/v2/{repository}/manifests/{tag}", data=m_bytes,
                                headers={"Content-Type": MEDIA_MANIFEST})
    if status != 201:
        raise PushError(f"put manifest {repository}:{tag}: HTTP {status} {body[:300]!r}")


def split_reference(ref: str) -> tuple[str, str]:
    """``registry.k8s.io/coredns/coredns:v1.14.6`` -> (``registry.k8s.io/coredns/coredns``,
    ``v1.14.6``)."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        raise ValueError(f"image reference needs an explicit tag: {ref}")
    return name, tag
