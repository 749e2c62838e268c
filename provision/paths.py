"""Where provision keeps things on the provisioner host.

Two roots, both outside any git clone so that a fresh clone (and CI) reuses them:

* the cache (``PROVISION_CACHE_DIR``, default ``$XDG_CACHE_HOME/provision`` or
  ``~/.cache/provision``): content-addressed, rebuildable artifacts (Go builds,
  node images, the offline artifact set). Deleting it costs time, never data.
* the state (``PROVISION_STATE_DIR``, default ``$XDG_STATE_HOME/provision`` or
  ``~/.local/state/provision``): one directory per cluster holding what cannot be
  rebuilt (SSH keys, PKI, kubeconfig, machine disks, run records).
  It is private: the state root and each cluster's directory are 0700, secrets and
  run records 0600 (docs/operations.md, "Secrets").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provision import secrets


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
    # the state root above it (made private too), when the root is in the usual place
    state: Path | None = None

    @classmethod
    def for_cluster(cls, name: str) -> ClusterPaths:
        return cls(state_root() / "clusters" / name, state=state_root())

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
        """The cluster's directories, each 0700 (so are the state root and any parent
        made here): what is inside is nobody else's to read, secret or not."""
        for d in (self.root, self.ssh_dir, self.pki_dir, self.runs_dir):
            private_dir(d).chmod(0o700)
        if self.state is not None and self.state.is_dir() \
                and self.state.stat().st_uid == os.geteuid():  # not someone else's
            self.state.chmod(0o700)


def private_dir(path: Path) -> Path:
    """``path`` and every missing parent, made 0700 (an existing one is left as it is)."""
    if not path.is_dir():
        if not path.parent.is_dir():
            private_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    return path


def write_secret(path: Path, data: bytes | str) -> None:
    """Write a file that holds a secret (``write_private``). The secret is registered
    for redaction first, so nothing written later repeats it."""
    raw = data.encode() if isinstance(data, str) else data
    secrets.register(raw)
    write_private(path, raw)


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file only its owner reads: 0600 before any byte lands, and never through
    a symlink. The bytes go to a fresh name that nobody else can have made (mkstemp:
    O_CREAT|O_EXCL, which a planted symlink fails), then replace ``path``: rename
    replaces a symlink at ``path`` itself instead of writing where it points."""
    raw = data.encode() if isinstance(data, str) else data
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
