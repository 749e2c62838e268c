"""What the artifact set is made of, beyond the release catalog (provision/releases.py):
flannel and its CNI plugin, the node and image packages.
"""

from __future__ import annotations

from provision.releases import (
    DEFAULT_KUBERNETES_VERSION,
    RELEASES,
    Release,
    supported_kubernetes_versions,
)

# Flannel and its CNI plugin are shared by every release we support.
FLANNEL_VERSION = "v0.28.10"
# The flannel CNI plugin (the small binary kubelet calls) lives at
# github.com/flannel-io/cni-plugin upstream, which the module proxy we can reach does
# not serve. The same code was published in containernetworking/plugins up to v0.9.1
# (plugins/meta/flannel); we build it from there. See docs/artifacts.md.
FLANNEL_CNI_MODULE = "github.com/containernetworking/plugins"
FLANNEL_CNI_VERSION = "v0.9.1"
FLANNEL_CNI_IMAGE_TAG = "v0.9.1-provision1"


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


__all__ = ["DEFAULT_KUBERNETES_VERSION", "FLANNEL_CNI_IMAGE_TAG", "FLANNEL_CNI_MODULE",
           "FLANNEL_CNI_VERSION", "FLANNEL_VERSION", "IMAGE_PACKAGE_ROOTS", "NODE_PACKAGES",
           "RELEASES", "Release", "release", "supported_kubernetes_versions"]
