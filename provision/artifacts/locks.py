"""Lock files: ``locks/<kubernetes version>.yaml`` pins every artifact of a release.

Each entry: ``name``, ``kind`` (binary | deb | image), ``version``, ``source`` (where
it comes from: ``go:<package>@<module version>``, ``debian:bookworm/<pkg>=<ver>``,
``built:<recipe>``), ``sha256`` (file content; for an image, its manifest digest).
Debian entries used inside images carry ``image: true``.

A second list, ``upstream``, pins the official release files that online mode
(``artifacts.source: upstream``) downloads (upstream.py): ``name``, ``version``,
``source`` (the official URL) and ``sha256``, which stays ``null`` until someone who
can reach the project's site pins it (``pin-upstream``): a file whose checksum is not
pinned is never downloaded.

A build compares what it produced or fetched with the lock: any difference fails with
both values (``ChecksumMismatch``); ``--update-lock`` rewrites the file instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision.artifacts.errors import ArtifactError, ChecksumMismatch

LOCK_DIR = Path(__file__).parent / "locks"


@dataclass
class LockEntry:
    name: str
    kind: str
    version: str
    source: str
    sha256: str
    image: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.image:
            d.pop("image")
        return d


@dataclass
class Lock:
    kubernetes: str
    go: str
    entries: list[LockEntry]
    path: Path
    upstream: list[LockEntry] = field(default_factory=list)  # sha256 "" = not pinned

    def by_name(self) -> dict[str, LockEntry]:
        return {e.name: e for e in self.entries}

    def of_kind(self, kind: str) -> list[LockEntry]:
        return [e for e in self.entries if e.kind == kind]


def lock_path(version: str, lock_dir: Path | None = None) -> Path:
    return (lock_dir or LOCK_DIR) / f"{version}.yaml"


def _entry(e: dict[str, Any]) -> LockEntry:
    """One lock entry: every field a string except the ``image`` flag."""
    fields: dict[str, Any] = {k: (v if k == "image" else "" if v is None else str(v))
                              for k, v in e.items()}
    return LockEntry(**fields)


def load(version: str, lock_dir: Path | None = None) -> Lock | None:
    p = lock_path(version, lock_dir)
    if not p.exists():
        return None
    try:
        data = yaml.safe_load(p.read_text()) or {}
        entries = [_entry(e) for e in data.get("artifacts", [])]
        upstream = [_entry({"kind": "upstream", **e}) for e in data.get("upstream") or []]
    except (yaml.YAMLError, TypeError) as e:
        raise ArtifactError(f"lock file {p} is not valid: {e}") from e
    if data.get("kubernetes") != version:
        raise ArtifactError(f"lock file {p} is for {data.get('kubernetes')!r}, not {version}")
    return Lock(kubernetes=version, go=str(data.get("go", "")), entries=entries, path=p,
                upstream=upstream)


def save(lock: Lock) -> None:
    header = (
        f"# Artifact lock for Kubernetes {lock.kubernetes}. Written by\n"
        "# `provision artifacts build --update-lock`; a build whose output differs fails.\n"
        "# sha256: file content (binaries, .debs) or manifest digest (images).\n"
        "# upstream: official release files for `artifacts.source: upstream`; sha256 null\n"
        "# = not pinned yet (never downloaded until pinned: `pin-upstream`, docs/artifacts.md).\n"
    )
    kind_order = {"binary": 0, "image": 1, "deb": 2}
    body = {
        "kubernetes": lock.kubernetes,
        "go": lock.go,
        "artifacts": [e.to_dict() for e in sorted(
            lock.entries, key=lambda e: (kind_order.get(e.kind, 9), e.name))],
    }
    if lock.upstream:
        body["upstream"] = [{"name": e.name, "version": e.version, "source": e.source,
                             "sha256": e.sha256 or None} for e in lock.upstream]
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = lock.path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(body, sort_keys=False, width=120))
    tmp.replace(lock.path)


def verify(lock: Lock | None, produced: list[LockEntry], *, update: bool) -> None:
    """Fail loudly on any artifact whose checksum differs from the lock or that the
    lock does not pin (unless updating)."""
    if update:
        return
    if lock is None:
        raise ArtifactError(
            "no lock file for this release: run `provision artifacts build --update-lock` "
            "once, review and commit the lock file it writes."
        )
    pinned = lock.by_name()
    for e in produced:
        want = pinned.get(e.name)
        if want is None:
            raise ArtifactError(f"lock file {lock.path} does not pin {e.name} ({e.source}); "
                                "rebuild with --update-lock to record it")
        if want.sha256 != e.sha256:
            raise ChecksumMismatch(e.name, want.sha256, e.sha256, str(lock.path))
