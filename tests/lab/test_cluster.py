"""The product end to end on inventories/local.yaml, on real lab machines with real
containerd, etcd, keepalived, haproxy, kubeadm, kubelet and flannel, then day-2
operations on the same cluster.

One cluster for the module (built from nothing, always destroyed); tests run in file
order and each starts from the state the previous one left:

1. the build from nothing, killed (SIGKILL) inside etcd, during a control-plane join
   (kubeadm ended too, leaving a Node without its label) and during a worker join, each
   time resumed, ending verified: 5 Ready nodes;
2. the admin kubeconfig; a second `up` that skips every stage; VIP failover;
3. workers 2 -> 3 -> 1 by the pool count; cp-3 replaced by cp-4 in one edit while the
   API keeps answering; unsafe edits refused; backup, restore; destroy --keep-machines.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from provision import operations, planner
from provision.errors import BadInput
from provision.executors import ssh
from provision.lab.cleanup import leftovers, sweep

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
NAME = "pvtest-ha"
FORWARD_PORT = 16463
BASE = (ROOT / "inventories/local.yaml").read_text()
FIRST_NODES = ("cp-1", "cp-2", "cp-3", "worker-1", "worker-2")


class Lab:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.inventory = base / "inventory.yaml"
        self.state = base / "state"
        self.write(BASE)

    def write(self, text: str) -> Path:
        assert "\nname: local\n" in text and "apiForwardPort: 16443" in text
        self.inventory.write_text(
            text.replace("\nname: local\n", f"\nname: {NAME}\n")
            .replace("apiForwardPort: 16443", f"apiForwardPort: {FORWARD_PORT}"))
        return self.inventory

    def plan(self) -> planner.Plan:
        return operations.plan(self.inventory).membership

    def up(self) -> operations.RunSummary:
        summary = operations.up(self.inventory)
        assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
        return summary

    def on(self, node: str, script: str) -> str:
        proc = ssh.run_on_node(operations.Cluster(self.inventory).paths, node, script)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def nodes(self) -> dict[str, bool]:
        """Kubernetes node -> Ready, as the first control-plane node sees it."""
        out = self.on("cp-1", "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json")
        return {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in n["status"]["conditions"])
                for n in json.loads(out)["items"]}

    def etcd_members(self) -> dict[str, bool]:
        out = self.on("cp-1", ". /etc/etcd/etcdctl.env; etcdctl endpoint health --cluster "
                              "-w json 2>/dev/null; true")
        health = {e["endpoint"]: e["health"] for e in json.loads(out or "[]")}
        members = json.loads(self.on("cp-1", ". /etc/etcd/etcdctl.env; "
                                             "etcdctl member list -w json"))["members"]
        return {m["name"]: health.get(m["clientURLs"][0], False) for m in members}

    def machines(self) -> set[str]:
        from provision.inventory import load_inventory
        from provision.providers.local import LocalProvider

        return set(LocalProvider().machines(load_inventory(self.inventory)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(base / "state"))
        sweep(NAME)
        lab = Lab(base)
        try:
            yield lab
        finally:
            try:
                operations.destroy(lab.inventory)  # machines of removed nodes too
                assert leftovers(NAME) == [], "destroy left something behind"
            finally:
                sweep(NAME)  # whatever a failed destroy left


@pytest.fixture(scope="module")
def kubectl(lab):
    """kubectl on this box through the written kubeconfig (loopback forward to the VIP)."""
    from provision.artifacts import build
    from provision.inventory import load_inventory

    binary = build(load_inventory(lab.inventory).kubernetes.version).binaries["kubectl"]

    def run(*args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        kubeconfig = operations.Cluster(lab.inventory).paths.kubeconfig
        proc = subprocess.run([str(binary), "--kubeconfig", str(kubeconfig),
                               "--request-timeout", "5s", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    return run


CP4 = """  - name: cp-4
    roles: [control-plane]
    provider: local
    address: 10.250.0.14
    machine: {cpus: 1, memory: 2Gi}
"""


def _without(text: str, *names: str) -> str:
    """The inventory text without the listed nodes' entries."""
    for name in names:
        start = text.index(f"  - name: {name}\n")
        ends = [i for i in (text.find("  - name:", start + 1), text.find("\n# Pools", start))
                if i != -1]
        text = text[:start] + text[min(ends):]
    return text


# one worker, cp-3 replaced by cp-4: the cluster from the replace test on
AFTER_REPLACE = _without(BASE.replace("count: 2", "count: 1"), "cp-3").replace(
    "\n# Pools", CP4 + "\n# Pools", 1)


def _kill_up_when(lab: Lab, stage: str, task: str, host: str | None = None,
                  delay: float = 0.0, on_host: str = "", timeout: float = 1500) -> None:
    """Start `provision up` and SIGKILL it (its whole process group: ansible, ssh)
    ``delay`` seconds after ``task`` of ``stage`` starts (on ``host``), or, with
    ``on_host``, once that script has run to its end on ``host``."""
    runs = lab.state / "clusters" / NAME / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    output = lab.base / f"killed-up-{stage}.log"
    with output.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "provision.cli", "up", "-i",
                                 str(lab.inventory)], start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PROVISION_STATE_DIR": str(lab.state)})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                f"up ended (rc {proc.returncode}) before {stage}/{task}; its output ends:\n"
                + "\n".join(output.read_text().splitlines()[-40:]))
            new = sorted(set(runs.iterdir()) - before) if runs.exists() else []
            events = new[-1] / "events.jsonl" if new else None
            if events and events.exists() and any(
                    e.get("stage") == stage and e.get("task") == task
                    and e.get("event") == "runner_on_start" and host in (None, e.get("host"))
                    for e in map(json.loads, events.read_text().splitlines())):
                if on_host:
                    assert host, "on_host needs host"
                    lab.on(host, on_host)
                time.sleep(delay)
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"{stage}/{task} never started within {timeout}s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(f"killed up in {stage}/{task!r} ({host or 'any node'})")


# kubeadm's kubelet-start phase stops the kubelet, writes its configuration and starts
# it again; from then on the kubelet registers the Node (through this node's own API
# server: ControlPlaneKubeletLocalMode) whatever kubeadm does next. Ending kubeadm
# there (as a lost session or the OOM killer can) leaves the Node registered without
# the control-plane label, for good: a join stopped half-way, which the next `up` must
# tell from a worker (and not refuse as a role change).
END_KUBEADM_ONCE_THE_KUBELET_RUNS = (
    "for i in $(seq 3000); do [ -f /var/lib/kubelet/config.yaml ] && "
    "systemctl is-active -q kubelet && break; sleep 0.1; done; "
    "pkill -9 -x kubeadm; true")


def _registered_labels(lab: Lab, node: str, timeout: float = 300) -> str:
    """The Node's labels once its kubelet has registered it (it first starts this
    node's API server, a static pod, to bootstrap through)."""
    started = time.monotonic()
    while time.monotonic() < started + timeout:
        proc = ssh.run_on_node(operations.Cluster(lab.inventory).paths, "cp-1",
                               "kubectl --kubeconfig /etc/kubernetes/admin.conf get node "
                               f"{node} -o jsonpath='{{.metadata.labels}}'")
        if proc.returncode == 0:
            print(f"{node} registered {time.monotonic() - started:.0f}s after kubeadm ended")
            return proc.stdout
        time.sleep(2)
    pytest.fail(f"the kubelet on {node} never registered its Node within {timeout}s")


def test_a_killed_up_resumes_at_three_points(lab):
    _kill_up_when(lab, "etcd", "etcd started")
    _kill_up_when(lab, "control-plane", "kubeadm join --control-plane", host="cp-2",
                  on_host=END_KUBEADM_ONCE_THE_KUBELET_RUNS)
    labels = _registered_labels(lab, "cp-2")
    print(f"cp-2 registered; control-plane label: {'control-plane' in labels}")
    _kill_up_when(lab, "workers", "kubeadm join", delay=3)
    summary = lab.up()
    print(f"resumed up: {summary.duration:.0f}s")
    report = json.loads((Path(summary.record_dir) / "report.json").read_text())
    checks = [c for s in report["stages"] for c in s["checks"]]
    assert checks and all(c["outcome"] != "failed" for c in checks)
    assert lab.plan().kinds() == [(planner.NOTHING, "-")]


def test_five_ready_nodes_through_the_written_kubeconfig(lab, kubectl):
    written = operations.kubeconfig(lab.inventory)
    assert Path(written["kubeconfig"]).stat().st_mode & 0o777 == 0o600
    assert written["server"] == f"https://127.0.0.1:{FORWARD_PORT}"
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"]
             for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True"
                    for c in n["status"]["conditions"])}
    assert ready == {n: "v1.37.2" for n in FIRST_NODES}


def test_second_up_changes_nothing(lab):
    summary = lab.up()
    print(f"no-op up: {summary.duration:.0f}s")
    assert {s["name"]: s["status"] for s in summary.stages} == {
        s: "skipped" for s in ("machines", "os", "hosts", "runtime", "etcd", "api-lb",
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


def test_vip_moves_when_its_holder_stops(lab, kubectl):
    c = operations.Cluster(lab.inventory)
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
        print(f"API back through the VIP {answered_after}s after {holder} stopped")
        assert answered_after is not None, "the API never answered through the VIP"
        assert answered_after <= 10, f"API back through the VIP after {answered_after:.1f}s"
        health = etcd_health(c, survivor)
        assert sorted(health.values()) == [False, True, True], health
        # A write needs an etcd leader: when the stopped node led etcd, the survivors
        # elect one first, so retry the write for the rest of the 10 s window.
        name = f"failover-{int(time.time())}"
        errors = []
        while True:
            created = kubectl("create", "configmap", name, "--from-literal=k=v", check=False)
            if created.returncode == 0 or time.monotonic() - stopped > 10:
                break
            errors.append(created.stderr.strip())
            time.sleep(0.5)
        print(f"ConfigMap created {time.monotonic() - stopped:.1f}s after the stop; "
              f"earlier attempts: {errors}")
        assert created.returncode == 0, f"no ConfigMap within 10 s: {created.stderr} {errors}"
        assert kubectl("get", "configmap", name, "-o", "name").stdout.strip() == \
            f"configmap/{name}"
        assert vip_holder(c) != holder
    finally:
        local.ensure(c.inv, [c.inv.node(holder)])

    # the stopped machine comes back and every check returns to green
    deadline = time.monotonic() + 300
    while True:
        summary = operations.verify(lab.inventory)
        if summary.status == "ok" or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert summary.status == "ok", f"{summary.error}; report {summary.report_html}"
    assert sorted(etcd_health(c, holder).values()) == [True, True, True]


def test_workers_scale_out_by_pool_count(lab):
    lab.write(BASE.replace("count: 2", "count: 3"))
    plan = lab.plan()
    assert plan.ok and plan.kinds() == [(planner.CREATE_MACHINE, "worker-3"),
                                        (planner.JOIN_WORKER, "worker-3")]
    summary = lab.up()
    print(f"add one worker: {summary.duration:.0f}s")
    assert lab.nodes()["worker-3"] is True


def test_workers_scale_in_by_pool_count(lab):
    lab.write(BASE.replace("count: 2", "count: 1"))
    plan = lab.plan()
    assert plan.ok and plan.kinds() == [(planner.DRAIN_AND_REMOVE_WORKER, "worker-3"),
                                        (planner.DRAIN_AND_REMOVE_WORKER, "worker-2")]
    summary = lab.up()
    print(f"remove two workers: {summary.duration:.0f}s")
    assert lab.nodes() == {n: True for n in ("cp-1", "cp-2", "cp-3", "worker-1")}
    assert lab.machines() == {"cp-1", "cp-2", "cp-3", "worker-1"}


class _ApiSampler(threading.Thread):
    """GET /readyz through the loopback forward to the VIP, once a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.failures: list[str] = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{FORWARD_PORT}/readyz",
                                            timeout=2, context=context) as r:
                    ok = r.status == 200
            except Exception as exc:  # noqa: BLE001 - every failure counts
                ok, why = False, str(exc)
            else:
                why = "not ready"
            self.samples += 1
            if not ok:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {why}")
            self.stop.wait(max(0.0, 1 - (time.monotonic() - started)))


def test_replace_a_control_plane_node_in_one_edit(lab):
    lab.write(AFTER_REPLACE)
    plan = lab.plan()
    assert plan.ok, plan.refusals
    assert plan.kinds() == [(planner.CREATE_MACHINE, "cp-4"),
                            (planner.JOIN_CONTROL_PLANE, "cp-4"),
                            (planner.UPDATE_LOAD_BALANCER, "cp-1"),
                            (planner.UPDATE_LOAD_BALANCER, "cp-2"),
                            (planner.REMOVE_CONTROL_PLANE, "cp-3")]
    sampler = _ApiSampler()
    sampler.start()
    try:
        summary = lab.up()
    finally:
        sampler.stop.set()
        sampler.join()
    print(f"replace cp-3 by cp-4: {summary.duration:.0f}s; API through the VIP failed "
          f"{len(sampler.failures)} of {sampler.samples} samples: {sampler.failures}")
    assert sampler.samples > 30
    assert len(sampler.failures) <= 10, sampler.failures
    assert lab.etcd_members() == {"cp-1": True, "cp-2": True, "cp-4": True}
    assert lab.nodes() == {n: True for n in ("cp-1", "cp-2", "cp-4", "worker-1")}
    assert "cp-3" not in lab.machines()


def test_unsafe_edits_are_refused_and_change_nothing(lab):
    lab.write(_without(BASE.replace("count: 2", "count: 1"), "cp-2", "cp-3"))  # cp-1 alone
    plan = lab.plan()
    assert not plan.ok
    assert any("takes etcd from 3 members to 1" in r for r in plan.refusals), plan.refusals
    with pytest.raises(BadInput, match="the plan is refused; nothing was changed"):
        operations.up(lab.inventory)
    cli = subprocess.run([sys.executable, "-m", "provision.cli", "plan", "-i",
                          str(lab.inventory)], capture_output=True, text=True)
    assert cli.returncode == 2 and "refused:" in cli.stdout, cli.stdout + cli.stderr
    # the last control-plane node cannot even be written down
    lab.write(BASE.replace("roles: [control-plane]", "roles: [worker]"))
    try:
        cli = subprocess.run([sys.executable, "-m", "provision.cli", "up", "-i",
                              str(lab.inventory)], capture_output=True, text=True)
    finally:
        lab.write(AFTER_REPLACE)
    assert cli.returncode == 2 and "no control-plane node" in cli.stderr, cli.stderr
    assert lab.etcd_members() == {"cp-1": True, "cp-2": True, "cp-4": True}
    assert lab.nodes() == {n: True for n in ("cp-1", "cp-2", "cp-4", "worker-1")}


def _configmap(lab: Lab, name: str, action: str = "get") -> subprocess.CompletedProcess:
    kubectl = "kubectl --kubeconfig /etc/kubernetes/admin.conf -n default"
    script = (f"{kubectl} create configmap {name} --from-literal=at=$(date +%s)"
              if action == "create" else f"{kubectl} get configmap {name}")
    return ssh.run_on_node(operations.Cluster(lab.inventory).paths, "cp-1", script)


def test_backup_then_restore_brings_back_exactly_the_snapshot(lab):
    lab.write(AFTER_REPLACE)
    assert _configmap(lab, "before-backup", "create").returncode == 0
    facts = operations.backup(lab.inventory)
    snapshot = Path(facts["snapshot"])
    assert snapshot.stat().st_mode & 0o777 == 0o600
    assert facts["revision"] > 0 and facts["keys"] > 0 and facts["hash"]
    print(f"backup: {facts}")
    assert _configmap(lab, "after-backup", "create").returncode == 0

    summary = operations.restore(lab.inventory, snapshot)
    assert summary.status == "ok", f"{summary.error}\nreport: {summary.report_html}"
    print(f"restore (with every check): {summary.duration:.0f}s")
    assert _configmap(lab, "before-backup").returncode == 0
    after = _configmap(lab, "after-backup")
    assert after.returncode != 0 and "NotFound" in after.stderr, after.stdout + after.stderr
    assert lab.etcd_members() == {"cp-1": True, "cp-2": True, "cp-4": True}


def test_restore_refuses_a_file_that_is_not_a_snapshot(lab, tmp_path):
    bogus = tmp_path / "snapshot.db"
    bogus.write_bytes(b"not a snapshot")
    with pytest.raises(BadInput, match="is not an etcd snapshot"):
        operations.restore(lab.inventory, bogus)


def test_destroy_keep_machines_resets_every_node(lab):
    result = operations.reset(lab.inventory)
    assert sorted(result["reset"]) == ["cp-1", "cp-2", "cp-4", "worker-1"]
    assert lab.machines() == {"cp-1", "cp-2", "cp-4", "worker-1"}
    for node in result["reset"]:
        left = lab.on(node, "ls /etc/kubernetes /var/lib/etcd 2>/dev/null; "
                            "systemctl is-active kubelet etcd containerd keepalived haproxy; true")
        assert "active\n" not in left.replace("inactive", ""), f"{node}: {left}"
        assert "manifests" not in left and "member" not in left, f"{node}: {left}"
