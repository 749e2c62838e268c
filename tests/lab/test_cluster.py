"""The product end to end: inventories/local.yaml to a verified HA cluster, on real lab
machines with real containerd, etcd, keepalived, haproxy, kubeadm, kubelet and flannel.

The cluster is built once for the module (about ten minutes on the 2-core box) and
always destroyed. Tests run in file order: build, no-op re-run, VIP failover.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from provision import operations
from provision.executors import ssh
from provision.lab.cleanup import leftovers, sweep

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
NAME = "pvtest-ha"
FORWARD_PORT = 16463


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """inventories/local.yaml under another name and loopback port; always destroyed."""
    base = tmp_path_factory.mktemp("cluster")
    text = (ROOT / "inventories/local.yaml").read_text()
    assert "\nname: local\n" in text and "apiForwardPort: 16443" in text
    inventory = base / "inventory.yaml"
    inventory.write_text(text.replace("\nname: local\n", f"\nname: {NAME}\n")
                         .replace("apiForwardPort: 16443", f"apiForwardPort: {FORWARD_PORT}"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(base / "state"))
        sweep(NAME)  # leftovers of a crashed run of this test (another state dir)
        try:
            yield inventory
        finally:
            operations.destroy(inventory)
            assert leftovers(NAME) == [], "destroy left something behind"


@pytest.fixture(scope="module")
def kubectl(cluster):
    from provision.artifacts import build
    from provision.inventory import load_inventory

    binary = build(load_inventory(cluster).kubernetes.version).binaries["kubectl"]

    def run(*args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        kubeconfig = operations.Cluster(cluster).paths.kubeconfig
        return subprocess.run([str(binary), "--kubeconfig", str(kubeconfig),
                               "--request-timeout", "5s", *args],
                              capture_output=True, text=True, timeout=timeout, check=check)

    return run


def test_up_builds_a_verified_ha_cluster(cluster, kubectl):
    summary = operations.up(cluster)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    report = json.loads((Path(summary.record_dir) / "report.json").read_text())
    checks = [c for s in report["stages"] for c in s["checks"]]
    assert checks and all(c["outcome"] != "failed" for c in checks)

    written = operations.kubeconfig(cluster)
    assert Path(written["kubeconfig"]).stat().st_mode & 0o777 == 0o600
    assert written["server"] == f"https://127.0.0.1:{FORWARD_PORT}"
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"]
             for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True"
                    for c in n["status"]["conditions"])}
    assert ready == {n: "v1.37.2" for n in ("cp-1", "cp-2", "cp-3", "worker-1", "worker-2")}


def test_second_up_changes_nothing(cluster):
    summary = operations.up(cluster)
    assert summary.status == "ok", summary.error
    assert {s["name"]: s["status"] for s in summary.stages} == {
        s: "skipped" for s in ("machines", "os", "runtime", "etcd", "api-lb",
                               "control-plane", "workers", "network")}
    assert all(not s["converged"] for s in summary.stages)


def vip_holder(c: operations.Cluster) -> str:
    vip = str(c.inv.control_plane.virtual_ip)
    holders = [n.name for n in c.inv.nodes_with_role("control-plane")
               if f"inet {vip}/" in ssh.run_on_node(c.paths, n.name, "ip -4 -o addr").stdout]
    assert len(holders) == 1, f"exactly one node must hold the VIP, found {holders}"
    return holders[0]


def etcd_health(c: operations.Cluster, from_node: str) -> dict[str, bool]:
    """Every member's health over TLS, asked with the operator client cert (roles/etcd)."""
    from provision.observe_cluster import parse_etcd_endpoint_health

    proc = ssh.run_on_node(c.paths, from_node, ". /etc/etcd/etcdctl.env; "
                           "etcdctl --command-timeout=3s endpoint health -w json", timeout=60)
    return parse_etcd_endpoint_health(proc.stdout)


def test_vip_moves_when_its_holder_stops(cluster, kubectl):
    c = operations.Cluster(cluster)
    local = c.provider("local")
    holder = vip_holder(c)
    survivor = next(n.name for n in c.inv.nodes_with_role("control-plane") if n.name != holder)

    local.stop(c.inv, c.inv.node(holder))
    stopped = time.monotonic()
    answered_after = None
    while time.monotonic() - stopped < 60:
        if kubectl("get", "--raw", "/readyz", check=False).returncode == 0:
            answered_after = time.monotonic() - stopped
            break
        time.sleep(0.5)
    try:
        assert answered_after is not None, "the API never answered through the VIP"
        assert answered_after <= 10, f"API back through the VIP after {answered_after:.1f}s"
        health = etcd_health(c, survivor)
        assert sorted(health.values()) == [False, True, True], health
        name = f"failover-{int(time.time())}"
        kubectl("create", "configmap", name, "--from-literal=k=v")
        assert kubectl("get", "configmap", name, "-o", "name").stdout.strip() == \
            f"configmap/{name}"
        assert vip_holder(c) != holder
    finally:
        local.ensure(c.inv, [c.inv.node(holder)])

    # the stopped machine comes back and every check returns to green
    deadline = time.monotonic() + 300
    while True:
        summary = operations.verify(cluster)
        if summary.status == "ok" or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert summary.status == "ok", f"{summary.error}; report {summary.report_html}"
    assert sorted(etcd_health(c, holder).values()) == [True, True, True]
