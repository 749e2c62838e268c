"""The Kubernetes releases provision can install, and what each is made of.

One ``Release`` per supported version: the Kubernetes module version, the build date
stamped into the binaries (the release commit time the Go proxy reports, so a rebuild
is byte-identical), and the versions of what kubeadm of that release expects beside
it (CoreDNS and pause come from ``cmd/kubeadm/app/constants``). Part of the model:
the inventory validates ``kubernetes.version`` against it; the artifact set
(provision/artifacts) builds what it names, and its lock files
(``artifacts/locks/<version>.yaml``) pin the checksums.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_KUBERNETES_VERSION = "v1.37.2"


@dataclass(frozen=True)
class Release:
    kubernetes: str  # v1.37.2
    build_date: str  # RFC 3339, the release commit time: stamped into version info
    coredns: str  # v1.14.6  (kubeadm constants.CoreDNSVersion)
    pause: str  # 3.10.2   (kubeadm constants.PauseVersion)
    min_external_etcd: str  # kubeadm constants.MinExternalEtcdVersion (for docs/preflight)
    # etcd we build and package (Debian 12's 3.4.23 is below min_external_etcd): the
    # minor kubeadm of this release defaults to (constants.DefaultEtcdVersion), at the
    # newest patch the module proxy serves.
    etcd: str

    @property
    def minor(self) -> str:
        return ".".join(self.kubernetes.lstrip("v").split(".")[:2])

    @property
    def staging_version(self) -> str:
        """k8s.io staging modules are published as v0.<minor>.<patch>."""
        major, minor, patch = self.kubernetes.lstrip("v").split(".")
        return f"v0.{minor}.{patch}"


RELEASES: dict[str, Release] = {
    "v1.37.2": Release(
        kubernetes="v1.37.2",
        build_date="2026-10-27T12:01:04Z",
        coredns="v1.14.6",
        pause="3.10.2",
        min_external_etcd="3.5.24-0",
        etcd="v3.7.3",  # kubeadm DefaultEtcdVersion 3.7.0-0
    ),
    "v1.36.3": Release(
        kubernetes="v1.36.3",
        build_date="2026-07-22T18:07:38Z",
        coredns="v1.14.2",
        pause="3.10.2",
        min_external_etcd="3.5.24-0",
        etcd="v3.6.16",  # kubeadm DefaultEtcdVersion 3.6.8-0
    ),
}


def supported_kubernetes_versions() -> tuple[str, ...]:
    """Newest first. The inventory validator checks ``kubernetes.version`` against it."""
    return tuple(sorted(RELEASES, key=lambda v: tuple(int(x) for x in v[1:].split(".")),
                        reverse=True))


__all__ = ["DEFAULT_KUBERNETES_VERSION", "RELEASES", "Release", "supported_kubernetes_versions"]
