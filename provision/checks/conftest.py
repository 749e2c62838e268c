"""Shared fixtures of the stage checks (testinfra modules in this directory).

``cluster``: the variables Ansible gets (``provision_*``), loaded from the JSON file
named by ``PROVISION_CHECK_CONTEXT``, plus ``node`` (this host's entry of
``provision_nodes``: name, address, roles) and ``nodes`` (all of them).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
import testinfra


class _StageModule(pytest.Module):
    """Stage modules are named after stages and one is ``os``: imported as top-level
    modules they collide with the standard library ("import file mismatch", or the
    stdlib module collected instead). Import each by path under a unique name."""

    def _getobj(self):
        name = f"provision_checks_{self.path.stem}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        self.config.pluginmanager.consider_module(module)
        return module


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name != "conftest.py":
        return _StageModule.from_parent(parent, path=module_path)
    return None


class ClusterFacts(dict):
    """A dict of the check context with helpers; ``cluster["provision_api_vip"]``."""

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return self.get("provision_nodes", [])

    def with_role(self, role: str) -> list[dict[str, Any]]:
        return [n for n in self.nodes if role in n.get("roles", [])]

    @property
    def etcd_members(self) -> list[dict[str, Any]]:
        """The nodes with the etcd role: ``provision_nodes`` lists effective roles, so
        co-located control-plane nodes carry it too (inventory.model.expand_nodes)."""
        members = self.with_role("etcd")
        if not members:  # never a vacuous pass over no members
            pytest.fail("no node of the check context has the etcd role")
        return members

    @property
    def api_endpoint(self) -> str:
        return f"{self['provision_api_vip']}:{self.get('provision_api_port', 6443)}"

    @property
    def dns_service_ip(self) -> str:
        net = ipaddress.ip_network(self.get("provision_service_cidr", "10.96.0.0/12"))
        return str(net.network_address + 10)

    @property
    def kubernetes_service_ip(self) -> str:
        net = ipaddress.ip_network(self.get("provision_service_cidr", "10.96.0.0/12"))
        return str(net.network_address + 1)


def _load_context() -> dict[str, Any]:
    path = os.environ.get("PROVISION_CHECK_CONTEXT")
    if not path:
        pytest.exit("PROVISION_CHECK_CONTEXT is not set: the checks need the cluster context",
                    returncode=4)
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def cluster_context() -> dict[str, Any]:
    return _load_context()


def _host_name(host: Any) -> str:
    backend = host.backend
    name = getattr(backend, "host", None)
    name = getattr(name, "name", None) or getattr(backend, "hostname", "")
    return str(name).removeprefix("ssh://")


@pytest.fixture
def cluster(host: Any, cluster_context: dict[str, Any]) -> ClusterFacts:
    c = ClusterFacts(cluster_context)
    name = _host_name(host)
    c["node"] = next((n for n in c.nodes if n["name"] == name),
                     {"name": name, "address": "", "roles": []})
    return c


@pytest.fixture
def other_host(request: pytest.FixtureRequest):
    """Open another node of the cluster over the same SSH config: ``other_host("cp-2")``."""
    ssh_config = request.config.getoption("ssh_config", None)

    def get(name: str) -> Any:
        return testinfra.get_host(f"ssh://{name}", ssh_config=ssh_config)

    return get


@pytest.fixture
def haproxy_servers() -> Callable[[Any], dict[str, dict[str, str]]]:
    """``haproxy_servers(host)``: haproxy's API backend servers on that node, by name,
    each a row of its stats CSV (``status``, ``addr``, ...)."""
    from provision import nodefacts
    from provision.observe.membership import parse_haproxy_stats

    def servers(host: Any) -> dict[str, dict[str, str]]:
        csv = host.run("curl -sS --max-time 3 "
                       f"'http://127.0.0.1:{nodefacts.HAPROXY_STATS_PORT}/stats;csv'").stdout
        return parse_haproxy_stats(csv, nodefacts.HAPROXY_API_BACKEND)

    return servers


@pytest.fixture
def expired_certificates() -> Callable[[Any, str], list[str]]:
    """``expired_certificates(host, directory)``: the certificates (``*.crt``) in that
    directory of the node that have expired; fails when it holds none."""
    def expired(host: Any, directory: str) -> list[str]:
        certs = host.run(f"ls {directory}/*.crt").stdout.split()
        assert certs, f"no certificates in {directory}"
        return [c for c in certs if host.run(f"openssl x509 -in {c} -noout -checkend 0").rc]

    return expired


# Where the roles install what they download from the mirror's /files/<version>/:
# roles/kubelet (kubelet_bin_dir), roles/container_runtime (crictl, containerd_cni_bin_dir).
INSTALLED_AT = {"bin/": "/usr/local/bin/", "cni/": "/opt/cni/bin/"}


@pytest.fixture
def files_not_as_pinned(cluster_context: dict[str, Any]) -> Callable[[Any, list[str]], list[str]]:
    """``files_not_as_pinned(host, ["bin/kubelet", ...])``: each of those files, as
    installed on the node, whose sha256 is not the lock's pin the run handed over
    (``provision_file_sha256``), with what it is instead."""
    pins: dict[str, str] = cluster_context.get("provision_file_sha256") or {}

    def differ(host: Any, served: list[str]) -> list[str]:
        assert pins, "the check context has no file digests (provision_file_sha256)"
        paths = {s: next(d + s.removeprefix(p) for p, d in INSTALLED_AT.items()
                         if s.startswith(p)) for s in served}
        out = host.run("sha256sum " + " ".join(paths.values())).stdout
        got = {line.split()[1]: line.split()[0] for line in out.splitlines() if line.strip()}
        return [f"{path} is {got.get(path, 'missing')}, the pinned file is {pins.get(s)}"
                for s, path in paths.items() if got.get(path) != pins.get(s)]

    return differ


@pytest.fixture
def in_container(host: Any) -> bool:
    """True on a lab machine (systemd-nspawn): the kernel and clock are the box's."""
    out = host.run("systemd-detect-virt --container")
    return out.stdout.strip() not in ("", "none")
