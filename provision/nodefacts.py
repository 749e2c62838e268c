"""TEMPORARY stand-in: replaced by the version that reads roles/common/defaults/main.yml."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
API_SERVER_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
ETCD_PKI_DIR = "/etc/etcd/pki"
ETCD_CA_CERT = f"{ETCD_PKI_DIR}/ca.crt"
ETCD_CLIENT_CERT = f"{ETCD_PKI_DIR}/operator.crt"
ETCD_CLIENT_KEY = f"{ETCD_PKI_DIR}/operator.key"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
HAPROXY_CONFIG = "/etc/haproxy/haproxy.cfg"
HAPROXY_API_BACKEND = "kube-apiserver"
STAGE_MARKER_DIR = "/var/lib/provision/stages"


def etcd_client_url(address: str) -> str:
    return f"https://{address}:{ETCD_CLIENT_PORT}"


def etcdctl(endpoints: Sequence[str], command_timeout: str = "5s") -> str:
    return (f"ETCDCTL_API=3 etcdctl --endpoints={shlex.quote(','.join(endpoints))} "
            f"--cacert={ETCD_CA_CERT} --cert={ETCD_CLIENT_CERT} --key={ETCD_CLIENT_KEY} "
            f"--command-timeout={command_timeout} --dial-timeout=3s")
