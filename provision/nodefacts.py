"""Node facts: the paths and ports on the nodes that the roles and provision's Python
share (the admin kubeconfig, etcd's ports and client certificate, haproxy's
configuration, the stage markers, etcdctl's TLS arguments, ...).

Each is defined once, in ``roles/common/defaults/main.yml``: the roles read them there
as Ansible variables (``common_admin_kubeconfig``), and this module loads the same
file once, as plain YAML, and exposes them as typed constants (``ADMIN_KUBECONFIG``).
A missing key, a value of the wrong type or a Jinja expression is a ValueError at
import that names the key and the file: a wrong fact must never reach a node.

Model layer: imports only ``provision.paths``, the standard library and PyYAML.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

from provision.paths import data_dir

FACTS_FILE = data_dir("roles") / "common" / "defaults" / "main.yml"
PREFIX = "common_"  # the variables' prefix in the roles


class FactsFile:
    """A node facts file, read once as data. Each accessor returns the fact
    ``common_<name>`` checked: present, of its type, no Jinja expression."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"node facts: cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: node facts must be a mapping of variables")
        self.data: dict[str, object] = data

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value:
            raise self._wrong(name, "a non-empty string")
        return value

    def number(self, name: str) -> int:
        value = self._get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(name, "an integer")
        return value

    def etcdctl_tls_args(self, name: str, ca: str, cert: str, key: str) -> tuple[str, ...]:
        """The list repeats the three certificate paths (argv elements cannot be
        derived in a file read as data): it must name exactly those."""
        value = self._get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(name, "a list of strings")
        expected = [f"--cacert={ca}", f"--cert={cert}", f"--key={key}"]
        if sorted(value) != sorted(expected):
            raise ValueError(f"{self.path}: {PREFIX}{name} is {value}, expected {expected} "
                             f"(from {PREFIX}etcd_ca_cert, {PREFIX}etcd_client_cert, "
                             f"{PREFIX}etcd_client_key)")
        return tuple(value)

    def _get(self, name: str) -> object:
        key = PREFIX + name
        if key not in self.data:
            raise ValueError(f"{self.path}: node fact {key} is missing")
        value = self.data[key]
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and ("{{" in text or "{%" in text):
                raise ValueError(f"{self.path}: node fact {key} is a Jinja expression "
                                 f"({text!r}); Python reads this file as data: write the "
                                 "value itself")
        return value

    def _wrong(self, name: str, kind: str) -> ValueError:
        value = self.data[PREFIX + name]
        return ValueError(f"{self.path}: node fact {PREFIX}{name} must be {kind}, "
                          f"not {type(value).__name__} {value!r}")


_FILE = FactsFile(FACTS_FILE)

# kubeadm's files
ADMIN_KUBECONFIG: str = _FILE.text("admin_kubeconfig")
KUBELET_KUBECONFIG: str = _FILE.text("kubelet_kubeconfig")  # present once a node has joined
BOOTSTRAP_KUBECONFIG: str = _FILE.text("bootstrap_kubeconfig")
KUBERNETES_PKI_DIR: str = _FILE.text("kubernetes_pki_dir")
STATIC_POD_DIR: str = _FILE.text("static_pod_dir")
# written by kubeadm init/join --control-plane before the kubelet registers the Node
API_SERVER_MANIFEST: str = _FILE.text("api_server_manifest")
API_AUDIT_LOG: str = _FILE.text("api_audit_log")
CRI_SOCKET: str = _FILE.text("cri_socket")
KUBEADM_CONFIG_DIR: str = _FILE.text("kubeadm_config_dir")
# etcd
ETCD_CONF_DIR: str = _FILE.text("etcd_conf_dir")
ETCD_PKI_DIR: str = _FILE.text("etcd_pki_dir")
ETCD_CA_CERT: str = _FILE.text("etcd_ca_cert")
ETCD_CLIENT_CERT: str = _FILE.text("etcd_client_cert")  # the operator client of every member
ETCD_CLIENT_KEY: str = _FILE.text("etcd_client_key")
ETCD_CLIENT_PORT: int = _FILE.number("etcd_client_port")
ETCD_PEER_PORT: int = _FILE.number("etcd_peer_port")
ETCD_DATA_DIR: str = _FILE.text("etcd_data_dir")
ETCDCTL_TLS_ARGS: tuple[str, ...] = _FILE.etcdctl_tls_args(
    "etcdctl_tls_args", ETCD_CA_CERT, ETCD_CLIENT_CERT, ETCD_CLIENT_KEY)
ETCDCTL_DIAL_TIMEOUT: str = _FILE.text("etcdctl_dial_timeout")
# haproxy
HAPROXY_CONFIG: str = _FILE.text("haproxy_config")
HAPROXY_API_BACKEND: str = _FILE.text("haproxy_api_backend")
HAPROXY_STATS_PORT: int = _FILE.number("haproxy_stats_port")  # on 127.0.0.1
# provision
STAGE_MARKER_DIR: str = _FILE.text("stage_marker_dir")


def etcdctl(endpoints: Sequence[str], command_timeout: str = "5s") -> str:
    """The shell command of etcdctl against ``endpoints`` (client URLs) with the
    operator client certificate, built from the TLS arguments the roles use; append
    the etcdctl command: ``f"{etcdctl(urls)} member list -w json"``."""
    if isinstance(endpoints, str) or not endpoints:
        raise ValueError(f"etcdctl needs a list of endpoint URLs, got {endpoints!r}")
    return shlex.join(["ETCDCTL_API=3", "etcdctl", f"--endpoints={','.join(endpoints)}",
                       *ETCDCTL_TLS_ARGS, f"--command-timeout={command_timeout}",
                       f"--dial-timeout={ETCDCTL_DIAL_TIMEOUT}"])


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address  # an IPv6 address
    return f"https://{host}:{port}"


def etcd_client_url(address: str) -> str:
    """``https://<address>:<client port>``: an etcd member's client URL."""
    return _url(address, ETCD_CLIENT_PORT)


def etcd_peer_url(address: str) -> str:
    """``https://<address>:<peer port>``: an etcd member's peer URL."""
    return _url(address, ETCD_PEER_PORT)
