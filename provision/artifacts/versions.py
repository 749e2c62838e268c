"""What each supported Kubernetes release is made of.

One ``Release`` per supported version: the Kubernetes module version, the build date
stamped into the binaries (the release commit time the Go proxy reports, so a rebuild
is byte-identical), and the versions of what kubeadm of that release expects beside
it (CoreDNS and pause come from ``cmd/kubeadm/app/constants``). The checksums of what
these produce live in the lock files (``locks/<version>.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_KUBERNETES_VERSION = "v1.37.2"

# Flannel and its CNI plugin are shared by every release we support.
FLANNEL_VERSION = "v0.28.10"
# The flannel CNI plugin (the small binary kubelet calls) lives at
# github.com/flannel-io/cni-plugin upstream, which the module proxy we can reach does
# not serve. The same code was published in containernetworking/plugins up to v0.9.1
# (plugins/meta/flannel); we build it from there. See docs/artifacts.md.
FLANNEL_CNI_MODULE = "github.com/containernetworking/plugins"
FLANNEL_CNI_VERSION = "v0.9.1"
FLANNEL_CNI_IMAGE_TAG = "v0.9.1-provision1"


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


def release(version: str) -> Release:
    from provision.artifacts.errors import UnsupportedVersion

    key = version if version.startswith("v") else f"v{version}"
    try:
        return RELEASES[key]
    except KeyError:
        raise UnsupportedVersion(version, supported_kubernetes_versions()) from None


# Node OS packages the roles install, served as an apt repository with their full
# dependency closure. Add here what a role starts to install. etcd-server and
# etcd-client are not Debian's: we build them (etcdpkg.py) and add them to the
# repository under the same names.
NODE_PACKAGES: tuple[str, ...] = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "haproxy",
    "keepalived",
    "conntrack",
    "socat",
    "iptables",
    "ebtables",
    "ethtool",
    "kmod",
    "chrony",
    "systemd-timesyncd",
    "curl",
    "ca-certificates",
    "ipset",
    "iproute2",
    "nftables",
)

# Debian packages whose files go into images: kube-proxy and flanneld need
# iptables (nft backend), conntrack and ipset with their libraries; flannel's init
# containers need `cp` (busybox). Their dependency closure is added automatically.
IMAGE_PACKAGE_ROOTS: tuple[str, ...] = ("iptables", "conntrack", "ipset", "busybox-static")
