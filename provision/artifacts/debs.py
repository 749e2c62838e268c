"""Debian packages: dependency closure, pinned download, and the apt repository.

The closure is ``apt-cache depends --recurse`` of the roots (Depends and Pre-Depends;
no Recommends/Suggests), every alternative of an ``a | b`` dependency and every
provider of a virtual package included. It is a superset of what a minbase Debian 12
node lacks: packages already in minbase (libc6, ...) are served too, so a node whose
base is older than the repository still satisfies versioned dependencies.

Versions come from the lock file when it names the package (``apt-get download
name=version``; a version the mirror no longer has fails with a clear message), or
from apt's candidate when the lock is being written. Each .deb's sha256 is checked
against the lock.

The repository is a *flat* apt repository (``Packages``, ``Packages.gz``, ``Release``
beside ``pool/``), used by nodes as ``deb [trusted=yes] http://GW:PORT/apt ./``.
Unsigned on purpose: it is served only inside the cluster network, and integrity
comes from the lock (every .deb pinned by sha256) and the Packages index (apt checks
each download against it). See docs/artifacts.md.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from provision.artifacts.cache import Cache, recipe_key, sha256_file
from provision.artifacts.errors import ArtifactError, ChecksumMismatch, ToolchainMissing

APT_ENV = {"LC_ALL": "C"}
_DEPENDS_FLAGS = ["--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                  "--no-breaks", "--no-replaces", "--no-enhances"]


def _apt(cmd: list[str], cwd: Path | None = None) -> str:
    import os

    env = dict(os.environ, **APT_ENV)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=1800)
    except FileNotFoundError as e:
        raise ToolchainMissing(f"{cmd[0]} not found: the apt part of the artifact build "
                               "needs apt, dpkg-dev and apt-utils (Debian).") from e
    if proc.returncode != 0:
        raise ArtifactError(f"`{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}):\n"
                            + proc.stderr.strip()[-2000:])
    return proc.stdout


def closure(roots: Iterable[str]) -> list[str]:
    """Real package names in the dependency closure of ``roots`` (sorted)."""
    out = _apt(["apt-cache", "depends", *_DEPENDS_FLAGS, *roots])
    names = {line.strip() for line in out.splitlines()
             if line and not line.startswith(" ") and not line.startswith("<")}
    return sorted(n.split(":")[0] for n in names)


def candidates(names: Iterable[str]) -> dict[str, str]:
    """{package: candidate version} from apt's lists."""
    names = list(names)
    out = _apt(["apt-cache", "policy", *names])
    result: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1].split(":")[0]
        elif current and line.strip().startswith("Candidate:"):
            ver = line.split(":", 1)[1].strip()
            if ver and ver != "(none)":
                result[current] = ver
    missing = sorted(set(names) - set(result))
    if missing:
        raise ArtifactError(f"apt knows no installable version of: {', '.join(missing)}. "
                            "Run `apt-get update` (with the Debian mirror reachable) first.")
    return result


_DEB_NAME = re.compile(r"^(?P<name>[^_]+)_(?P<ver>[^_]+)_(?P<arch>[^_.]+)\.deb$")


def fetch(pins: dict[str, str], cache: Cache, locked: dict[str, str], progress,
          step: str = "debs", update_lock: bool = False, lock_name: str = "") -> dict:
    """Download ``{package: version}`` into the cache. ``locked`` is {package: sha256}
    from the lock file. Returns the step record {files: {package: {sha256, version,
    filename}}}."""
    key = recipe_key(sorted(pins.items()))
    rec = cache.get_record(step, key)
    if rec is not None:
        progress(f"{step}: cached ({len(pins)} packages)")
        _check(rec, locked, update_lock, lock_name)
        return rec
    cache.check_space(512 * 2**20)
    progress(f"{step}: downloading {len(pins)} Debian packages")
    with cache.workdir(step) as work:
        specs = [f"{n}={v}" for n, v in sorted(pins.items())]
        # apt-get download drops privileges to _apt, which cannot write our dir.
        for i in range(0, len(specs), 60):
            _apt(["apt-get", "download", "-o", "APT::Sandbox::User=root", *specs[i:i + 60]],
                 cwd=work)
        files: dict[str, dict] = {}
        for deb in sorted(work.glob("*.deb")):
            m = _DEB_NAME.match(deb.name)
            if not m:
                continue
            name = m["name"]
            files[name] = {"sha256": cache.put_file(deb, move=True),
                           "version": pins.get(name, ""), "filename": deb.name,
                           "arch": m["arch"]}
        missing = sorted(set(pins) - set(files))
        if missing:
            raise ArtifactError(f"apt-get download produced no .deb for {', '.join(missing)}")
    rec = {"files": files}
    _check(rec, locked, update_lock, lock_name)
    cache.put_record(step, key, rec)
    return rec


def _check(rec: dict, locked: dict[str, str], update_lock: bool, lock_name: str) -> None:
    if update_lock:
        return
    for name, info in rec["files"].items():
        want = locked.get(name)
        if want and want != info["sha256"]:
            raise ChecksumMismatch(f"deb/{name}={info['version']}", want, info["sha256"],
                                   lock_name)


def extract(debs: Iterable[Path], dest: Path) -> None:
    """Unpack .debs' data into ``dest`` (no maintainer scripts run)."""
    dest.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        _apt(["dpkg-deb", "-x", str(deb), str(dest)])


# -- the repository ---------------------------------------------------------------------

def build_repo(rec: dict, cache: Cache, progress, step: str = "apt-repo") -> dict:
    """Index the packages of a fetch record as a flat apt repository.

    Returns a record whose files map repository paths (``pool/x.deb``, ``Packages``,
    ``Packages.gz``, ``Release``) to blobs."""
    key = recipe_key(sorted((n, i["sha256"]) for n, i in rec["files"].items()))
    got = cache.get_record(step, key)
    if got is not None:
        progress(f"{step}: cached")
        return got
    progress(f"{step}: indexing {len(rec['files'])} packages")
    with cache.workdir(step) as work:
        pool = work / "pool"
        pool.mkdir()
        files: dict[str, dict] = {}
        for _name, info in sorted(rec["files"].items()):
            target = pool / info["filename"]
            target.hardlink_to(cache.blob_path(info["sha256"]))
            files[f"pool/{info['filename']}"] = {"sha256": info["sha256"]}
        packages = _apt(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=work)
        (work / "Packages").write_text(packages)
        with open(work / "Packages.gz", "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(packages.encode())
        release = _apt(["apt-ftparchive",
                        "-o", "APT::FTPArchive::Release::Origin=provision",
                        "-o", "APT::FTPArchive::Release::Label=provision offline",
                        "-o", "APT::FTPArchive::Release::Suite=bookworm",
                        "-o", "APT::FTPArchive::Release::Codename=bookworm",
                        "-o", "APT::FTPArchive::Release::Date=Thu, 01 Jan 1970 00:00:00 UTC",
                        "release", "."], cwd=work)
        # apt-ftparchive hashes whatever is in "." (Packages*, nothing else at top level).
        (work / "Release").write_text(release)
        for name in ("Packages", "Packages.gz", "Release"):
            files[name] = {"sha256": cache.put_file(work / name)}
    out = {"files": files}
    cache.put_record(step, key, out)
    return out


def verify_blob(cache: Cache, digest: str) -> bool:
    p = cache.blob_path(digest)
    return p.is_file() and sha256_file(p) == digest
