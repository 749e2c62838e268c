"""The artifact cache: content-addressed blobs and input-addressed step records.

Layout under ``cache_root()/artifacts``::

    blobs/sha256/<hex>          every built or fetched file, named by its content
    steps/<step>/<key>.json     "this recipe (hashed into key) produced these blobs"
    tmp/                        work in progress; anything here may be deleted

A step record is written only after all its blobs are in place, and every blob and
record lands by ``rename`` from ``tmp/`` on the same filesystem: a crash, Ctrl-C or a
full disk leaves at worst garbage in ``tmp/`` (swept by the next build), never a
half-written blob or a record pointing at a missing one. A warm build is a lookup.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from provision import paths
from provision.artifacts.errors import DiskFull

# Refuse to start a step with less than this free: a clear message beats ENOSPC
# in the middle of a Go link.
MIN_FREE_BYTES = 2 * 1024**3


def artifacts_root() -> Path:
    return paths.cache_root() / "artifacts"


def go_root() -> Path:
    return paths.cache_root() / "go"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def recipe_key(recipe: object) -> str:
    """A stable hash of a step's inputs (any JSON-able value)."""
    raw = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def disk_full(where: Path, err: OSError) -> DiskFull:
    return DiskFull(
        f"no space left on the device holding {where} while writing the artifact cache; "
        "nothing half-written was kept. Free space (or point PROVISION_CACHE_DIR at a "
        "larger disk) and run the build again."
    )


class Cache:
    def __init__(self, root: Path | None = None, min_free: int = MIN_FREE_BYTES) -> None:
        self.root = root or artifacts_root()
        self.min_free = min_free  # floor for a step that names no need of its own
        self.blobs = self.root / "blobs" / "sha256"
        self.steps = self.root / "steps"
        self.tmp = self.root / "tmp"

    def ensure(self) -> None:
        for d in (self.blobs, self.steps, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- space ------------------------------------------------------------------
    def check_space(self, need: int | None = None) -> None:
        need = self.min_free if need is None else need
        self.ensure()
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise DiskFull(
                f"only {free // 2**20} MiB free under {self.root}; the build needs at least "
                f"{need // 2**20} MiB. Free space or set PROVISION_CACHE_DIR to a larger disk."
            )

    def sweep_tmp(self) -> None:
        """Remove leftovers of interrupted builds: tmp/ entries (named
        ``<what>.<pid>.<random>``) whose process is gone. A concurrent build's
        work in progress (its pid alive) is left alone."""
        if not self.tmp.exists():
            return
        for entry in self.tmp.iterdir():
            parts = entry.name.split(".")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def tmpname(self, what: str) -> str:
        return f"{what}.{os.getpid()}."

    @contextlib.contextmanager
    def workdir(self, prefix: str) -> Iterator[Path]:
        """A scratch directory on the cache's filesystem, removed afterwards."""
        self.ensure()
        d = Path(tempfile.mkdtemp(prefix=self.tmpname(prefix), dir=self.tmp))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- blobs ------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_file(self, src: Path, *, move: bool = False) -> str:
        """Store a file by content; returns its sha256. Atomic: copy to tmp, rename."""
        self.ensure()
        digest = sha256_file(src)
        dest = self.blob_path(digest)
        if dest.is_file():
            if move:
                src.unlink()
            return digest
        executable = os.access(src, os.X_OK)
        fd, tmpname = tempfile.mkstemp(prefix=self.tmpname("blob"), dir=self.tmp)
        os.close(fd)
        tmp = Path(tmpname)
        try:
            if move:
                os.replace(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o755 if executable else 0o644)
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise disk_full(self.root, e) from e
            raise
        return digest

    def put_bytes(self, data: bytes) -> str:
        self.ensure()
        digest = hashlib.sha256(data).hexdigest()
        dest = self.blob_path(digest)
        if dest.is_file():
            return digest
        fd, tmpname = tempfile.mkstemp(prefix=self.tmpname("blob"), dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmpname, 0o644)
            os.replace(tmpname, dest)
        except OSError as e:
            Path(tmpname).unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise disk_full(self.root, e) from e
            raise
        return digest

    # -- step records -------------------------------------------------------------
    def _record_path(self, step: str, key: str) -> Path:
        return self.steps / step / f"{key}.json"

    def get_record(self, step: str, key: str) -> dict | None:
        """The step's record if it exists and every blob it names is present."""
        p = self._record_path(step, key)
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        for digest in _digests(rec):
            if not self.has_blob(digest):
                return None
        return rec

    def put_record(self, step: str, key: str, record: dict) -> None:
        for digest in _digests(record):
            if not self.has_blob(digest):
                raise ValueError(f"record {step}/{key} names missing blob {digest}")
        p = self._record_path(step, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmpname = tempfile.mkstemp(prefix=self.tmpname("record"), dir=self.tmp)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.replace(tmpname, p)
        except OSError as e:
            Path(tmpname).unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise disk_full(self.root, e) from e
            raise

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _digests(record: dict) -> list[str]:
    """Blob digests a record refers to: every value under a "files" mapping."""
    out: list[str] = []
    files = record.get("files", {})
    for value in files.values():
        out.append(value["sha256"] if isinstance(value, dict) else value)
    return out
