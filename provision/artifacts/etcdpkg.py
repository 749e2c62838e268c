"""etcd as Debian packages built from our Go build, served in the node apt repository.

Debian 12's etcd-server is 3.4.23, below what kubeadm 1.36/1.37 accept for an external
etcd (``MinExternalEtcdVersion`` 3.5.24). We build etcd, etcdctl and etcdutl at the
release's pinned version (gobuild.py, step ``etcd``) and package them under Debian's
own names, so nodes keep doing ``apt-get install etcd-server etcd-client``:

* ``etcd-server``: ``/usr/bin/etcd``, ``/usr/bin/etcdutl``; its postinst creates the
  ``etcd`` system user and ``/var/lib/etcd`` (what Debian's package did). It ships
  **no** systemd unit and starts nothing: the etcd role owns the unit and the
  configuration (a default single-member etcd must never start on a node).
* ``etcd-client``: ``/usr/bin/etcdctl``.

Version ``<etcd>-0provision1``: higher than any Debian 3.4 (so a node that had
Debian's package upgrades to ours), and the ``0`` revision says it is not Debian's.

The .debs are reproducible (fixed mtimes, root owner, sorted entries, single-threaded
xz: dpkg-deb with ``SOURCE_DATE_EPOCH``), so the lock pins their sha256 like any other
artifact.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from provision.artifacts.cache import Cache, recipe_key
from provision.artifacts.errors import ArtifactError, ToolchainMissing
from provision.report.progress import Say

STEP = "etcd-debs"
REVISION = "0provision1"
# 2000-01-01: any fixed time does; dpkg-deb clamps every mtime and the ar headers to it.
SOURCE_DATE_EPOCH = "946684800"

# (package, [(binary, path in the package)], description)
PACKAGES: tuple[tuple[str, tuple[tuple[str, str], ...], str], ...] = (
    ("etcd-server", (("etcd", "usr/bin/etcd"), ("etcdutl", "usr/bin/etcdutl")),
     "etcd server and offline utility (etcdutl)"),
    ("etcd-client", (("etcdctl", "usr/bin/etcdctl"),), "etcd command line client (etcdctl)"),
)

POSTINST = """#!/bin/sh
# etcd-server (provision): the etcd system user and its home, as Debian's package made.
set -e
if [ "$1" = configure ]; then
    if ! getent passwd etcd >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/etcd --no-create-home \\
            --shell /usr/sbin/nologin --comment "etcd user" etcd
    fi
    install -d -o etcd -g etcd -m 0700 /var/lib/etcd
fi
exit 0
"""


def deb_version(etcd_version: str) -> str:
    return f"{etcd_version.lstrip('v')}-{REVISION}"


def control(package: str, etcd_version: str, description: str, installed_kib: int) -> str:
    return (
        f"Package: {package}\n"
        f"Version: {deb_version(etcd_version)}\n"
        "Architecture: amd64\n"
        "Maintainer: provision <provision@localhost>\n"
        f"Installed-Size: {installed_kib}\n"
        "Section: database\n"
        "Priority: optional\n"
        "Homepage: https://etcd.io\n"
        f"Description: {description}, {etcd_version}\n"
        f" Built by provision from go.etcd.io/etcd (server, etcdctl, etcdutl v3 modules)\n"
        f" at {etcd_version} with Go. Replaces Debian's 3.4 package of the same name.\n"
    )


def _dpkg_deb(args: list[str], cwd: Path | None = None) -> str:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, LC_ALL="C")
    try:
        proc = subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=600)
    except FileNotFoundError as e:
        raise ToolchainMissing("dpkg-deb not found: packaging etcd needs dpkg (Debian)") from e
    if proc.returncode != 0:
        raise ArtifactError(f"`dpkg-deb {' '.join(args[:2])} ...` failed: {proc.stderr.strip()}")
    return proc.stdout


def build_debs(etcd_version: str, binaries: dict[str, str], cache: Cache,
               progress: Say) -> dict:
    """Package the etcd binaries (``{name: blob sha256}``) as .debs, or find them in the
    cache. Returns a record shaped like ``debs.fetch``'s: {files: {package: {sha256,
    version, filename, arch}}}."""
    dpkg = _dpkg_deb(["--version"]).splitlines()[0]
    recipe = {"etcd": etcd_version, "revision": REVISION, "epoch": SOURCE_DATE_EPOCH,
              "binaries": {n: binaries[n] for _p, files, _d in PACKAGES for n, _ in files},
              "packages": [list(map(str, p)) for p in PACKAGES], "postinst": POSTINST,
              "dpkg": dpkg}
    key = recipe_key(recipe)
    rec = cache.get_record(STEP, key)
    if rec is not None:
        progress(f"{STEP}: cached")
        return rec
    progress(f"{STEP}: packaging etcd {etcd_version}")
    files: dict[str, dict[str, str]] = {}
    with cache.workdir(STEP) as work:
        for package, contents, description in PACKAGES:
            root = work / package
            size = 0
            for name, rel in contents:
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(cache.blob_path(binaries[name]).read_bytes())
                dest.chmod(0o755)
                size += dest.stat().st_size
            debian = root / "DEBIAN"
            debian.mkdir()
            (debian / "control").write_text(
                control(package, etcd_version, description, (size + 1023) // 1024))
            (debian / "control").chmod(0o644)
            if package == "etcd-server":
                (debian / "postinst").write_text(POSTINST)
                (debian / "postinst").chmod(0o755)
            # modes independent of the umask: they are part of the pinned bytes
            for dirpath, dirs, _names in os.walk(root):
                for d in dirs:
                    os.chmod(os.path.join(dirpath, d), 0o755)
            filename = f"{package}_{deb_version(etcd_version)}_amd64.deb"
            out = work / filename
            _dpkg_deb(["--root-owner-group", "-Zxz", "--threads-max=1", "--build",
                       str(root), str(out)])
            files[package] = {"sha256": cache.put_file(out, move=True),
                              "version": deb_version(etcd_version), "filename": filename,
                              "arch": "amd64"}
    rec = {"files": files}
    cache.put_record(STEP, key, rec)
    progress(f"{STEP}: packaged")
    return rec


def lock_source(etcd_version: str) -> str:
    return f"built:provision.artifacts.etcdpkg (etcd {etcd_version}, go.etcd.io/etcd)"
