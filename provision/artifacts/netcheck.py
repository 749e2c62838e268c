"""The network check's test image: ``images/netcheck`` (our own Go program, standard
library only) built like pause and crictl, packaged with ``oci.py`` and served by the
registry beside the cluster images.

The program serves ``GET /`` with its pod and node name and probes other pods, the
netcheck Service and cluster DNS from inside a pod (``netcheck sweep``); the cni role
runs it as a DaemonSet (roles/cni/templates/netcheck.yaml.j2) and the network checks
call it with ``kubectl exec`` (provision/checks/network.py).

Its name sits under a registry host the nodes already mirror (``ghcr.io``), so no
containerd change is needed; the image exists only in our registry. When the source
changes, bump ``VERSION`` (pods use ``IfNotPresent``: a new tag makes nodes pull it)
and ``SOURCE_KEY`` (a unit test compares), then rebuild with ``--update-lock``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from provision.artifacts import images, oci
from provision.artifacts.cache import Cache, recipe_key
from provision.artifacts.gobuild import GOMOD_DIR, GoProgram
from provision.artifacts.locks import LockEntry
from provision.paths import data_dir

VERSION = "v0.1.0"
IMAGE_REF = f"ghcr.io/provision/netcheck:{VERSION}"
BINARY = "netcheck"
SOURCE_DIR = data_dir("images") / "netcheck"
SOURCE = "repo:images/netcheck"
# recipe_key of the source files (go.mod, main.go): bump VERSION with it.
SOURCE_KEY = "a855d5ee5c489cd4fc867d0e0b3aa011"
# Part of the image's cache key: bump when image() changes.
RECIPE_VERSION = 1
NONROOT = "65532:65532"


class _RepoProgram(GoProgram):
    """A program of ours kept outside provision/artifacts: name its real path."""

    def source_of(self, binary: str) -> str:
        return SOURCE


def source_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(SOURCE_DIR.iterdir()) if p.is_file()}


def source_digest() -> str:
    return recipe_key(source_files())


def program() -> GoProgram:
    """The `go build` of images/netcheck (same for every Kubernetes release)."""
    return _RepoProgram(
        step="netcheck", strategy="wrapper", module="provision.local/netcheck",
        version=VERSION, wrapper=os.path.relpath(SOURCE_DIR, GOMOD_DIR),
        packages=((BINARY, "."),), ldflags=("-s", "-w", f"-X main.version={VERSION}"),
    )


def layer(binary: Path) -> oci.LayerSpec:
    """One layer: users (runs as nonroot), nsswitch (files, then DNS), /tmp, the program."""
    s = oci.LayerSpec()
    s.add_file("/etc/passwd", images.PASSWD.encode())
    s.add_file("/etc/group", images.GROUP.encode())
    s.add_file("/etc/nsswitch.conf", images.NSSWITCH.encode())
    s.add_dir("/tmp", 0o1777)
    s.add_file("/netcheck", binary, 0o755)
    return s


def config() -> oci.ImageConfig:
    return oci.ImageConfig(entrypoint=("/netcheck",), cmd=("serve",),
                           env=(f"PATH={oci.DEFAULT_PATH}",), user=NONROOT,
                           labels=(("org.opencontainers.image.version", VERSION),))


def build_image(binary_sha: str, cache: Cache, progress: Callable[[str], None]) -> str:
    """Write (or find in the cache) the image; returns its manifest digest (hex)."""
    key = recipe_key({"v": RECIPE_VERSION, "ref": IMAGE_REF, "bin": binary_sha,
                      "config": repr(config())})
    rec = cache.get_record("netcheck-image", key)
    if rec is not None:
        progress("netcheck image: cached")
        return str(rec["image"])
    lay = oci.write_layer(layer(cache.blob_path(binary_sha)), cache)
    img = oci.build_image([lay], config(), cache)
    cache.put_record("netcheck-image", key, {
        "image": img.manifest_digest,
        "files": {"manifest": {"sha256": img.manifest_digest},
                  "config": {"sha256": img.config_digest},
                  "layer0": {"sha256": lay.digest}},
    })
    progress(f"images: {IMAGE_REF} sha256:{img.manifest_digest[:12]}")
    return img.manifest_digest


def image_entry(digest: str) -> LockEntry:
    return LockEntry(IMAGE_REF, "image", VERSION,
                     f"built:provision.artifacts.netcheck ({BINARY})", digest)
