"""Assemble the artifact set of a release: the one entry point ``build``.

Order: Go programs (Kubernetes, CoreDNS, flannel, the flannel CNI plugin, etcd,
pause, crictl), Debian packages (node closure plus what images need), our etcd
packages, the apt repository, the images. Every step is cached by its inputs
(cache.py), so a warm build only looks records up and checks them against the lock.

``source="upstream"`` (online mode, the inventory's ``artifacts.source``) changes only
where the Kubernetes binaries and images come from: kubeadm, kubelet and kubectl are
the official files (upstream.py), the nodes pull every image that exists upstream from
its registry, and only what has no official counterpart is built here.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provision.artifacts import debs, etcdpkg, gobuild, images, locks, netcheck, upstream, versions
from provision.artifacts.cache import Cache, recipe_key
from provision.artifacts.errors import ArtifactError, ToolchainMissing
from provision.artifacts.locks import LockEntry
from provision.errors import BadInput
from provision.report.progress import Say

SOURCES = ("offline", "upstream")  # the inventory's artifacts.source

# What online mode still builds: etcd (our .debs), crictl (no official file we could
# fetch), the flannel CNI plugin (node file and our own image) and the network check.
ONLINE_STEPS = ("etcd", "flannel-cni", "crictl", "netcheck")


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str  # binary | deb | image
    version: str
    source: str
    sha256: str
    path: Path  # the blob (for an image: its manifest blob)


@dataclass
class ArtifactSet:
    kubernetes: str
    artifacts: list[Artifact]
    images: dict[str, str]  # reference -> manifest digest (hex)
    apt: dict[str, Path]  # repository path (pool/x.deb, Packages, ...) -> blob
    cache: Cache = field(repr=False, default_factory=Cache)
    timings: dict[str, float] = field(default_factory=dict)

    def binary(self, name: str) -> Path:
        for a in self.artifacts:
            if a.kind == "binary" and a.name == name:
                return a.path
        raise KeyError(name)

    @property
    def binaries(self) -> dict[str, Path]:
        return {a.name: a.path for a in self.artifacts if a.kind == "binary"}

    def files_tree(self) -> dict[str, Path]:
        """What the mirror serves under /files: ``<version>/<served_path>``."""
        return {f"{self.kubernetes}/{served}": path for name, path in self.binaries.items()
                if (served := served_path(name))}

    def sha256sums(self) -> str:
        lines = []
        for rel, path in sorted(self.files_tree().items()):
            digest = path.name
            lines.append(f"{digest}  {rel.split('/', 1)[1]}")
        return "\n".join(lines) + "\n"


def served_path(binary: str) -> str:
    """Where the mirror serves a binary under /files/<version>/: ``bin/<name>`` for node
    and control-plane binaries, ``cni/flannel`` for the CNI plugin; "" for the others."""
    if binary == "flannel":
        return f"cni/{binary}"
    if binary in (*gobuild.KUBERNETES_BINARIES, "crictl"):
        return f"bin/{binary}"
    return ""


def file_digests(version: str, source: str = "offline",
                 lock_dir: Path | None = None) -> dict[str, str]:
    """Every file the mirror serves under /files/<version>/ (``bin/kubelet``) -> its
    sha256, as the lock pins it: what a node checks each download against, handed to
    it over SSH, never fetched from the mirror it checks. Reads the lock; builds
    nothing."""
    rel = versions.release(version)
    lock = locks.load(rel.kubernetes, lock_dir)
    if lock is None:
        locks.verify(None, [], update=False)  # raises with the how-to
        return {}
    # an official file the lock does not pin (sha256 "") never gets this far: build()
    # refuses it before the mirror starts
    return {served: e.sha256 for e in _lock_entries(rel, lock, source)
            if e.kind in ("binary", "upstream") and e.sha256
            and (served := served_path(e.name))}


def programs(rel: versions.Release, source: str) -> list[gobuild.GoProgram]:
    """The Go programs built here for an artifact source."""
    progs = [*gobuild.programs(rel), netcheck.program()]
    return [p for p in progs if p.step in ONLINE_STEPS] if source == "upstream" else progs


def image_defs(rel: versions.Release, source: str) -> list[images.ImageDef]:
    """The release's images built here (the network check's aside): online, only those
    no upstream registry has."""
    return images.own_image_defs(rel) if source == "upstream" else images.image_defs(rel)


def official_binaries(rel: versions.Release, cache: Cache, progress: Say,
                      lock_dir: Path | None = None) -> list[Artifact]:
    """Online mode's kubeadm, kubelet, kubectl: the official files, downloaded (or found
    in the cache) and checked against the lock's pins."""
    fetched = upstream.fetch(rel.kubernetes, progress, cache=cache, lock_dir=lock_dir)
    # a blob is named by its sha256
    return [Artifact(name, "binary", rel.kubernetes, upstream.official_url(rel, name),
                     path.name, path) for name, path in fetched.items()]


@contextlib.contextmanager
def _exclusive(cache: Cache, version: str) -> Iterator[None]:
    """One build per release and cache at a time (builds of two releases may run
    together: shared steps land atomically, by content)."""
    cache.ensure()
    path = cache.root / f".build-{version}.lock"
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"another build of {version} holds {path}; "
                                "wait for it to finish") from None
        cache.sweep_tmp()
        yield


def _deb_pins(rel: versions.Release, lock: locks.Lock | None, update: bool,
              progress: Say) -> tuple[dict[str, str], set[str]]:
    """({package: version}, names used inside images)."""
    if lock is not None and not update and lock.of_kind("deb"):
        # .debs we build (etcd) are not downloaded from Debian
        entries = [e for e in lock.of_kind("deb") if not e.source.startswith("built:")]
        pins = {e.name.removeprefix("deb/"): e.version for e in entries}
        return pins, {e.name.removeprefix("deb/") for e in entries if e.image}
    progress("debs: resolving the dependency closure with apt")
    image_names = set(debs.closure(versions.IMAGE_PACKAGE_ROOTS))
    names = set(debs.closure(versions.NODE_PACKAGES)) | image_names | {"ca-certificates"}
    return debs.candidates(sorted(names)), image_names


def build(version: str | None = None, progress: Say | None = None, *,
          source: str = "offline", update_lock: bool = False, cache: Cache | None = None,
          lock_dir: Path | None = None, log_dir: Path | None = None) -> ArtifactSet:
    """Build (or find in the cache) every artifact of a Kubernetes release for an
    artifact source (``offline`` or ``upstream``).

    Raises UnsupportedVersion, NotPinned, ToolchainMissing, ChecksumMismatch, DiskFull or
    ArtifactError; never leaves a half-written cache entry."""
    rel = versions.release(version or versions.DEFAULT_KUBERNETES_VERSION)
    say = progress or (lambda _m: None)
    cache = cache or Cache()
    if update_lock and source == "upstream":
        # an online set lacks most of what the lock pins: it would drop their entries
        raise BadInput("--update-lock records a whole offline set: run it with source "
                       "offline (without an inventory whose artifacts.source is upstream)")
    lock = locks.load(rel.kubernetes, lock_dir)
    if lock is None and not update_lock:
        locks.verify(None, [], update=False)  # raises with the how-to
    log_dir = log_dir or cache.root / "logs"
    timings: dict[str, float] = {}
    produced: list[LockEntry] = []
    with _exclusive(cache, rel.kubernetes):
        t0 = time.monotonic()
        fetched: list[Artifact] = []
        if source == "upstream":  # first: unpinned or tampered files stop it before any work
            fetched = official_binaries(rel, cache, say, lock_dir)
            timings["upstream"] = round(time.monotonic() - t0, 1)
        try:
            goversion = gobuild.go_version()
            missing_go: ToolchainMissing | None = None
        except ToolchainMissing as e:
            # A warm cache needs no compiler: look records up under the locked version.
            if lock is None:
                raise
            goversion, missing_go = lock.go, e
        binaries: dict[str, str] = {}
        for prog in programs(rel, source):
            t = time.monotonic()
            key = recipe_key(gobuild.recipe(prog, goversion))
            rec = cache.get_record("go-" + prog.step, key)
            if rec is None and missing_go is not None:
                raise missing_go
            if rec is None:
                rec = gobuild.build_program(prog, cache, goversion, say, log_dir)
            else:
                say(f"{prog.step}: cached")
            for name, info in rec["files"].items():
                binaries[name] = info["sha256"]
                produced.append(LockEntry(name, "binary", info["version"],
                                          prog.source_of(name), info["sha256"]))
            timings[f"go-{prog.step}"] = round(time.monotonic() - t, 1)
        locks.verify(lock, produced, update=update_lock)

        t = time.monotonic()
        pins, image_debs = _deb_pins(rel, lock, update_lock, say)
        locked_debs = {e.name.removeprefix("deb/"): e.sha256
                       for e in (lock.of_kind("deb") if lock else [])}
        lock_name = str(lock.path) if lock else ""
        deb_rec = debs.fetch(pins, cache, locked_debs, say, update_lock=update_lock,
                             lock_name=lock_name)
        deb_entries = [
            LockEntry(f"deb/{n}", "deb", i["version"], f"debian:bookworm/{n}={i['version']}",
                      i["sha256"], image=n in image_debs)
            for n, i in sorted(deb_rec["files"].items())
        ]
        produced += deb_entries
        timings["debs"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        etcd_rec = etcdpkg.build_debs(rel.etcd, binaries, cache, say)
        produced += [LockEntry(f"deb/{n}", "deb", i["version"], etcdpkg.lock_source(rel.etcd),
                               i["sha256"]) for n, i in sorted(etcd_rec["files"].items())]
        timings["etcd-debs"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        repo = debs.build_repo({"files": {**deb_rec["files"], **etcd_rec["files"]}}, cache, say)
        timings["apt-repo"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        defs = image_defs(rel, source)
        img_rec = images.build_images(
            defs, binaries, {n: i for n, i in deb_rec["files"].items() if n in image_debs},
            deb_rec["files"]["ca-certificates"]["sha256"], cache, say)
        image_entries = []
        for ref, digest in sorted(img_rec["images"].items()):
            defn = next(d for d in defs if d.ref == ref)
            image_entries.append(LockEntry(
                ref, "image", ref.rsplit(":", 1)[1],
                f"built:provision.artifacts.images ({defn.binary}"
                + (" + debian tools)" if defn.tools else ")"), digest))
        netcheck_digest = netcheck.build_image(binaries[netcheck.BINARY], cache, say)
        image_entries.append(netcheck.image_entry(netcheck_digest))
        produced += image_entries
        timings["images"] = round(time.monotonic() - t, 1)

        locks.verify(lock, produced, update=update_lock)
        if update_lock:
            # the online-mode pins are not build outputs: carried over as they are
            new = locks.Lock(rel.kubernetes, goversion, produced,
                             locks.lock_path(rel.kubernetes, lock_dir),
                             upstream=upstream.lock_entries(rel, lock))
            locks.save(new)
            say(f"lock: wrote {new.path}")
        timings["total"] = round(time.monotonic() - t0, 1)

    artifacts = fetched + [Artifact(e.name, e.kind, e.version, e.source, e.sha256,
                                    cache.blob_path(e.sha256)) for e in produced]
    apt = {p: cache.blob_path(i["sha256"]) for p, i in repo["files"].items()}
    built_images = {**img_rec["images"], netcheck.IMAGE_REF: netcheck_digest}
    return ArtifactSet(rel.kubernetes, artifacts, built_images, apt, cache, timings)


@dataclass(frozen=True)
class ArtifactStatus:
    name: str
    version: str
    source: str
    sha256: str
    present: bool
    kind: str = ""


def status(version: str | None = None, *, source: str = "offline", cache: Cache | None = None,
           lock_dir: Path | None = None) -> list[ArtifactStatus]:
    """Every artifact a set for ``source`` is made of, as the lock pins it, and whether
    the cache holds it (for an image: its manifest, config and every layer). An official
    file the lock does not pin yet is missing (sha256 "")."""
    from provision.artifacts import oci

    rel = versions.release(version or versions.DEFAULT_KUBERNETES_VERSION)
    cache = cache or Cache()
    lock = locks.load(rel.kubernetes, lock_dir)
    if lock is None:
        raise ArtifactError(f"no lock file for {rel.kubernetes} "
                            f"({locks.lock_path(rel.kubernetes, lock_dir)})")
    out = []
    for e in _lock_entries(rel, lock, source):
        present = cache.has_blob(e.sha256)
        if present and e.kind == "image":
            try:
                present = all(cache.has_blob(d) for d in oci.image_blobs(e.sha256, cache))
            except (OSError, ValueError, KeyError):
                present = False
        out.append(ArtifactStatus(e.name, e.version, e.source, e.sha256, present, e.kind))
    return out


def _lock_entries(rel: versions.Release, lock: locks.Lock, source: str) -> list[LockEntry]:
    """The lock entries of what ``build(source=...)`` returns."""
    if source != "upstream":
        return lock.entries
    built = {name for p in programs(rel, source) for name, _pkg in p.packages}
    built |= {d.ref for d in image_defs(rel, source)} | {netcheck.IMAGE_REF}
    return ([e for e in lock.entries if e.kind == "deb" or e.name in built]
            + upstream.lock_entries(rel, lock))


def default_log_dir() -> Path:
    return Cache().root / "logs"


__all__ = ["Artifact", "ArtifactSet", "ArtifactStatus", "build", "status"]

