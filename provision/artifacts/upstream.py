"""Online mode (``artifacts.source: upstream``): the official release files, downloaded
into the content-addressed cache and checked against checksums pinned in the lock.

What is fetched: ``kubeadm``, ``kubelet``, ``kubectl`` from
``https://dl.k8s.io/release/<version>/bin/linux/amd64/<name>`` (images come from
registry.k8s.io itself in online mode). Each file's sha256 lives in the lock file's
``upstream`` list. This box cannot reach dl.k8s.io, so the committed locks leave them
``null``; an unpinned file is **never** downloaded (a first download would have nothing
to be checked against). Pinning: ``python -m provision.artifacts pin-upstream``, on a
machine that reaches the site, reads the ``<url>.sha256`` files the project publishes
next to every binary and writes them into the lock, to be reviewed and committed.

``PROVISION_UPSTREAM_URL`` (or ``base_url=``) replaces ``https://dl.k8s.io`` in every
URL, keeping the path: an internal mirror of dl.k8s.io, or a test server.

A download goes to ``tmp/download.<pid>.<random>`` in the cache, is hashed while it is
written, and is renamed into ``blobs/`` only when its sha256 equals the lock's: a wrong,
cut or tampered file never lands in the cache, and a full disk leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from provision.artifacts import locks, versions
from provision.artifacts.cache import Cache, disk_full
from provision.artifacts.errors import ArtifactError, ChecksumMismatch, NotPinned
from provision.artifacts.locks import LockEntry
from provision.report.progress import Say

OFFICIAL_BASE = "https://dl.k8s.io"
MIRROR_ENV = "PROVISION_UPSTREAM_URL"
BINARIES = ("kubeadm", "kubelet", "kubectl")
TIMEOUT = 60  # seconds without a byte before a download is abandoned


def official_url(rel: versions.Release, name: str) -> str:
    return f"{OFFICIAL_BASE}/release/{rel.kubernetes}/bin/linux/amd64/{name}"


def download_url(official: str, base_url: str | None = None) -> str:
    base = base_url or os.environ.get(MIRROR_ENV) or OFFICIAL_BASE
    return base.rstrip("/") + official.removeprefix(OFFICIAL_BASE)


def lock_entries(rel: versions.Release, lock: locks.Lock | None) -> list[LockEntry]:
    """Every official file of the release, with the lock's pin when it has one for the
    same URL (else sha256 "")."""
    pinned = {e.name: e for e in lock.upstream} if lock else {}
    out = []
    for name in BINARIES:
        url = official_url(rel, name)
        old = pinned.get(name)
        out.append(LockEntry(name, "upstream", rel.kubernetes, url,
                             old.sha256 if old is not None and old.source == url else ""))
    return out


def _lock(version: str | None, lock_dir: Path | None) -> tuple[versions.Release, locks.Lock]:
    rel = versions.release(version or versions.DEFAULT_KUBERNETES_VERSION)
    lock = locks.load(rel.kubernetes, lock_dir)
    if lock is None:
        raise ArtifactError(f"no lock file for {rel.kubernetes} "
                            f"({locks.lock_path(rel.kubernetes, lock_dir)})")
    return rel, lock


def require_pins(version: str | None = None, lock_dir: Path | None = None
                 ) -> tuple[locks.Lock, list[LockEntry]]:
    """The lock and its official files, every one pinned; else NotPinned (a BadInput:
    callers check this before touching anything) naming the files, the lock and the fix."""
    rel, lock = _lock(version, lock_dir)
    entries = lock_entries(rel, lock)
    unpinned = [e.name for e in entries if not e.sha256]
    if unpinned:
        raise NotPinned(
            f"online mode: the lock file {lock.path} pins no sha256 for "
            f"{', '.join(unpinned)} of Kubernetes {rel.kubernetes}, so nothing is "
            "downloaded (an unchecked download could be anything). Pin them on a machine "
            "that reaches dl.k8s.io: `python -m provision.artifacts pin-upstream "
            f"--version {rel.kubernetes}` (reads the official <url>.sha256 files), review "
            "the lock file's diff against the release announcement, and commit it; or use "
            "`artifacts: {source: offline}`."
        )
    return lock, entries


def fetch(version: str | None = None, progress: Say | None = None, *,
          cache: Cache | None = None, lock_dir: Path | None = None,
          base_url: str | None = None) -> dict[str, Path]:
    """Download (or find in the cache) the official files of a release; ``{name: blob}``.

    Raises NotPinned naming every unpinned file (nothing is downloaded then),
    ChecksumMismatch (with the URL), DiskFull, or ArtifactError for a failed download."""
    say = progress or (lambda _m: None)
    cache = cache or Cache()
    lock, entries = require_pins(version, lock_dir)
    out: dict[str, Path] = {}
    for e in entries:
        if cache.has_blob(e.sha256):
            say(f"upstream {e.name}: cached")
        else:
            url = download_url(e.source, base_url)
            say(f"upstream {e.name}: downloading {url}")
            cache.check_space(256 * 2**20)
            _download(url, e, cache, str(lock.path))
        out[e.name] = cache.blob_path(e.sha256)
    return out


def _download(url: str, entry: LockEntry, cache: Cache, lock_name: str) -> None:
    cache.ensure()
    fd, name = tempfile.mkstemp(prefix=cache.tmpname("download"), dir=cache.tmp)
    tmp = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            size = 0
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
            # http.client returns a short body at EOF without complaint: say what it is
            want = resp.headers.get("Content-Length")
            if want is not None and want.isdigit() and int(want) != size:
                raise ArtifactError(f"cannot download {entry.name} from {url}: the "
                                    f"connection closed after {size} of {want} bytes")
        if digest.hexdigest() != entry.sha256:
            raise ChecksumMismatch(entry.name, entry.sha256, digest.hexdigest(), lock_name,
                                   url=url)
        tmp.chmod(0o755)  # the three files are programs
        os.replace(tmp, cache.blob_path(entry.sha256))
    except urllib.error.URLError as e:  # before OSError: it is one
        raise ArtifactError(f"cannot download {entry.name} from {url}: "
                            f"{getattr(e, 'reason', e)}") from e
    except http.client.HTTPException as e:  # e.g. the connection closed mid-file
        raise ArtifactError(f"cannot download {entry.name} from {url}: "
                            f"{type(e).__name__} {e}") from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(cache.root, e) from e
        raise ArtifactError(f"cannot download {entry.name} from {url}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def pin(version: str | None = None, progress: Say | None = None, *,
        lock_dir: Path | None = None, base_url: str | None = None) -> locks.Lock:
    """Write the official checksums (``<url>.sha256``) into the lock's upstream list.

    Trust comes from the site (HTTPS to dl.k8s.io) at the time of pinning; review the
    diff against the release announcement before committing it."""
    say = progress or (lambda _m: None)
    rel, lock = _lock(version, lock_dir)
    pinned = []
    for e in lock_entries(rel, lock):
        url = download_url(e.source, base_url) + ".sha256"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                text = resp.read(4096).decode("ascii", "replace")
        except (urllib.error.URLError, OSError) as err:
            raise ArtifactError(f"cannot read the checksum of {e.name} from {url}: "
                                f"{getattr(err, 'reason', err)}") from err
        value = (text.split() or [""])[0].lower()
        if not _SHA256.match(value):
            raise ArtifactError(f"{url} holds no sha256 (got {text[:80]!r})")
        say(f"upstream {e.name}: sha256 {value}")
        pinned.append(LockEntry(e.name, e.kind, e.version, e.source, value))
    lock.upstream = pinned
    locks.save(lock)
    say(f"lock: wrote {lock.path}; review and commit it")
    return lock
