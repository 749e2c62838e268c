"""Where provision keeps things on the provisioner host.

Two roots, both outside any git clone so that a fresh clone (and CI) reuses them:

* the cache (``PROVISION_CACHE_DIR``, default ``$XDG_CACHE_HOME/provision`` or
  ``~/.cache/provision``): content-addressed, rebuildable artifacts (Go builds,
  node images, the offline artifact set). Deleting it costs time, never data.
* the state (``PROVISION_STATE_DIR``, default ``$XDG_STATE_HOME/provision`` or
  ``~/.local/state/provision``): one directory per cluster holding what cannot be
  rebuilt (SSH keys, PKI, kubeconfig, machine disks, run records).
  Secrets in it are mode 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def cache_root() -> Path:
    explicit = os.environ.get("PROVISION_CACHE_DIR")
    return Path(explicit) if explicit else _xdg("XDG_CACHE_HOME", ".cache") / "provision"


def state_root() -> Path:
    explicit = os.environ.get("PROVISION_STATE_DIR")
    return Path(explicit) if explicit else _xdg("XDG_STATE_HOME", ".local/state") / "provision"


# Runtime files of provisioner services that drop their privileges (dnsmasq) and so
# cannot read the private state directory: rebuilt on every `up`, gone at a reboot.
RUN_ROOT = Path("/run/provision")

DATA_DIRS = ("roles", "pipelines", "images")


def data_dir(name: str) -> Path:
    """``roles``, ``pipelines`` or ``images``: inside the package when it was installed
    from a wheel (``provision/data/<name>``), beside it in a source checkout."""
    if name not in DATA_DIRS:
        raise ValueError(f"no data directory {name!r} (known: {', '.join(DATA_DIRS)})")
    packaged = Path(__file__).resolve().parent / "data" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


@dataclass(frozen=True)
class ClusterPaths:
    """Every file provision keeps for one cluster, in one place."""

    root: Path

    @classmethod
    def for_cluster(cls, name: str) -> ClusterPaths:
        return cls(state_root() / "clusters" / name)

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_private_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def ssh_public_key(self) -> Path:
        return self.ssh_dir / "id_ed25519.pub"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "config"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def machines_dir(self) -> Path:
        return self.root / "machines"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def ensure(self) -> None:
        for d in (self.root, self.ssh_dir, self.pki_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.ssh_dir, self.pki_dir):
            d.chmod(0o700)


def write_secret(path: Path, data: bytes | str) -> None:
    """Write a file that holds a secret: created 0600 before any byte lands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)
