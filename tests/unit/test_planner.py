"""The reconcile planner and the parsers of what the cluster reports.

Inventories are real files loaded with load_inventory; observations are built by
hand (a fake is a unit-tier tool only). Plans are compared as exact (kind, node) lists.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from provision.inventory import Inventory, check_inventory, expand_nodes, load_inventory
from provision.observe.membership import (
    EtcdMember,
    K8sNode,
    Observed,
    api_servers,
    backend_nodes,
    etcd_members,
    etcdctl_script,
    observe_membership,
    parse_etcd_endpoint_health,
    parse_etcd_member_list,
    parse_haproxy_servers,
    parse_haproxy_stats,
    parse_kubectl_nodes,
)
from provision.plan.membership import (
    ADD_ETCD_MEMBER,
    CREATE_MACHINE,
    DRAIN_AND_REMOVE_WORKER,
    JOIN_CONTROL_PLANE,
    JOIN_WORKER,
    NOTHING,
    RELEASE_MACHINE,
    REMOVE_CONTROL_PLANE,
    REMOVE_ETCD_MEMBER,
    REPLACE_NODE,
    START_MACHINE,
    UPDATE_LOAD_BALANCER,
    MembershipPlan,
    natural_key,
    plan_changes,
    quorum,
)

# --- inventories ------------------------------------------------------------------

HEAD = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: t
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: 10.250.0.10}}
etcd: {{placement: {placement}}}
network: {{subnet: 10.250.0.0/24}}
providers: {{local: {{}}}}
"""


def inventory_text(cps=("cp-1", "cp-2", "cp-3"), workers=2, etcd=(), extra=()) -> str:
    placement = "dedicated" if etcd else "control-plane"
    lines = [HEAD.format(placement=placement), "nodes:"]
    for name in cps:
        num = int(name.rsplit("-", 1)[1])
        lines.append(f"  - {{name: {name}, roles: [control-plane], provider: local, "
                     f"address: 10.250.0.{10 + num}}}")
    for name in etcd:
        num = int(name.rsplit("-", 1)[1])
        lines.append(f"  - {{name: {name}, roles: [etcd], provider: local, "
                     f"address: 10.250.0.{30 + num}}}")
    lines += list(extra)
    lines += ["pools:",
              f"  - {{name: worker, count: {workers}, roles: [worker], provider: local, "
              "firstAddress: 10.250.0.21}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def inv(tmp_path):
    """inv(cps=..., workers=..., etcd=...) -> a loaded, validated inventory."""
    def make(**kw) -> Inventory:
        path = tmp_path / "inventory.yaml"
        path.write_text(inventory_text(**kw))
        return load_inventory(path)
    return make


def unchecked(**kw) -> Inventory:
    """An inventory the validator refuses (even etcd counts): the planner must refuse
    it on its own too, for when it is given one anyway."""
    spec, problems = check_inventory(inventory_text(**kw))
    assert spec is not None, problems
    return Inventory(spec=spec, nodes=expand_nodes(spec))


# --- observations -----------------------------------------------------------------

def member_id(name: str) -> str:
    return format(0x8E9E05C52164694D + sum(map(ord, name)) * 7919, "x")


def address(name: str) -> str:
    prefix, num = name.rsplit("-", 1)
    base = {"cp": 10, "worker": 20, "etcd": 30}[prefix]
    return f"10.250.0.{base + int(num)}"


def cluster(cps=("cp-1", "cp-2", "cp-3"), workers=("worker-1", "worker-2"), etcd=None,
            vip="cp-1") -> Observed:
    """A healthy running cluster: every machine runs and answers, every node Ready,
    every etcd member healthy, every haproxy has every control-plane node."""
    etcd = list(cps if etcd is None else etcd)
    obs = Observed()
    for name in [*cps, *workers, *etcd]:
        obs.machines[name] = "running"
        obs.reachable.add(name)
    for name in cps:
        obs.k8s_nodes[name] = K8sNode(name, True, frozenset({"control-plane"}), "v1.37.2",
                                      address(name))
        obs.lb_backends[name] = set(cps)
    for name in workers:
        obs.k8s_nodes[name] = K8sNode(name, True, frozenset(), "v1.37.2", address(name))
    for name in etcd:
        obs.etcd_members[name] = EtcdMember(
            name, f"https://{address(name)}:2380", f"https://{address(name)}:2379",
            True, member_id(name))
    obs.vip_holder = vip
    return obs


def kinds(plan: MembershipPlan) -> list[tuple[str, str]]:
    return plan.kinds()


def action(plan: MembershipPlan, kind: str, node: str):
    return next(a for a in plan.actions if a.kind == kind and a.node == node)


# --- parsers ------------------------------------------------------------------------

KUBECTL_NODES = {
    "apiVersion": "v1",
    "kind": "List",
    "metadata": {"resourceVersion": ""},
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "cp-1",
                "labels": {
                    "beta.kubernetes.io/arch": "amd64",
                    "kubernetes.io/hostname": "cp-1",
                    "node-role.kubernetes.io/control-plane": "",
                    "node.kubernetes.io/exclude-from-external-load-balancers": "",
                },
                "annotations": {"kubeadm.alpha.kubernetes.io/cri-socket":
                                "unix:///run/containerd/containerd.sock"},
            },
            "spec": {"podCIDR": "10.244.0.0/24", "taints": [
                {"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]},
            "status": {
                "addresses": [{"address": "10.250.0.11", "type": "InternalIP"},
                              {"address": "cp-1", "type": "Hostname"}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False",
                     "reason": "KubeletHasSufficientMemory"},
                    {"type": "DiskPressure", "status": "False"},
                    {"type": "PIDPressure", "status": "False"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status"},
                ],
                "nodeInfo": {"kubeletVersion": "v1.37.2", "containerRuntimeVersion":
                             "containerd://1.6.20", "kernelVersion": "6.1.0-27-amd64"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "worker-1", "labels": {"kubernetes.io/hostname": "worker-1"}},
            "spec": {"podCIDR": "10.244.3.0/24", "unschedulable": True},
            "status": {
                "addresses": [{"address": "10.250.0.21", "type": "InternalIP"}],
                "conditions": [{"type": "Ready", "status": "Unknown",
                                "reason": "NodeStatusUnknown"}],
                "nodeInfo": {"kubeletVersion": "v1.36.3"},
            },
        },
    ],
}

# etcdctl 3.4 `member list -w json`: IDs are decimal uint64; the third member was added
# (`member add`) and never started, so it has neither name nor clientURLs.
ETCD_MEMBER_LIST = """\
{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"raft_term":4},\
"members":[\
{"ID":9372538179322589801,"name":"cp-1","peerURLs":["https://10.250.0.11:2380"],\
"clientURLs":["https://10.250.0.11:2379"]},\
{"ID":10501334649042878790,"name":"cp-2","peerURLs":["https://10.250.0.12:2380"],\
"clientURLs":["https://10.250.0.12:2379"]},\
{"ID":18249187646912138824,"peerURLs":["https://10.250.0.14:2380"]}]}
"""

ETCD_HEALTH = """\
[{"endpoint":"https://10.250.0.11:2379","health":true,"took":"9.281392ms"},\
{"endpoint":"https://10.250.0.12:2379","health":false,"took":"5.001137463s",\
"error":"context deadline exceeded"}]
"""

HAPROXY_CFG = """\
# Generated by provision (roles/api_lb)
global
    log /dev/log local0
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s   # short: a dead API server is skipped quickly

frontend kube-apiserver
    bind *:8443
    default_backend kube-apiserver

backend kube-apiserver
    option httpchk GET /readyz
    balance roundrobin
    server cp-1 10.250.0.11:6443 check check-ssl verify none
    server cp-2 10.250.0.12:6443 check check-ssl verify none
#   server cp-9 10.250.0.19:6443 check
    server api-3 10.250.0.13:6443 check

listen stats
    bind 127.0.0.1:9000
    server local 127.0.0.1
"""


def test_parse_kubectl_nodes():
    nodes = parse_kubectl_nodes(json.dumps(KUBECTL_NODES))
    assert set(nodes) == {"cp-1", "worker-1"}
    cp = nodes["cp-1"]
    assert cp.ready and cp.is_control_plane and cp.kubelet_version == "v1.37.2"
    assert cp.address == "10.250.0.11" and not cp.unschedulable
    assert cp.roles == frozenset({"control-plane"})
    w = nodes["worker-1"]
    assert not w.ready and not w.is_control_plane and w.roles == frozenset()
    assert w.unschedulable and w.kubelet_version == "v1.36.3"


def test_parse_kubectl_nodes_rejects_garbage():
    from provision.observe.membership import ObservationError
    with pytest.raises(ObservationError, match="not JSON"):
        parse_kubectl_nodes("error: the server doesn't have a resource type")
    with pytest.raises(ObservationError, match="items"):
        parse_kubectl_nodes('{"kind": "Status"}')


def test_parse_etcd_member_list_and_health():
    raw = parse_etcd_member_list(ETCD_MEMBER_LIST)
    assert [m.member_id for m in raw] == ["8211f1d0f64f3269", "91bc3c398fb3c146",
                                             "fd422379fda50e48"]
    assert raw[2].name == "" and raw[2].client_urls == ()
    health = parse_etcd_endpoint_health(ETCD_HEALTH)
    assert health == {"https://10.250.0.11:2379": True, "https://10.250.0.12:2379": False}
    members = etcd_members(raw, health, {"10.250.0.14": "cp-4"})
    assert set(members) == {"cp-1", "cp-2", "cp-4"}
    assert members["cp-1"].healthy and members["cp-1"].started
    assert not members["cp-2"].healthy and members["cp-2"].started
    assert not members["cp-4"].started and members["cp-4"].peer_host == "10.250.0.14"
    # an unstarted member of an address no inventory node has
    assert set(etcd_members(raw, health)) == {"cp-1", "cp-2",
                                              "unstarted:https://10.250.0.14:2380"}


def test_parse_etcd_health_edge_cases():
    assert parse_etcd_endpoint_health("") == {}
    single = '{"endpoint":"https://127.0.0.1:2379","health":true,"took":"1ms"}'
    assert parse_etcd_endpoint_health(single) == {"https://127.0.0.1:2379": True}


def test_parse_haproxy_servers():
    servers = parse_haproxy_servers(HAPROXY_CFG)
    assert [(s.backend, s.name, s.address, s.port) for s in servers] == [
        ("kube-apiserver", "cp-1", "10.250.0.11", 6443),
        ("kube-apiserver", "cp-2", "10.250.0.12", 6443),
        ("kube-apiserver", "api-3", "10.250.0.13", 6443),
        ("stats", "local", "127.0.0.1", None),
    ]
    api = [s for s in servers if s.backend == "kube-apiserver"]
    # unknown server names map back to nodes through their address
    assert api_servers(servers) == api
    assert backend_nodes(api, {"cp-1", "cp-2", "cp-3"},
                         {"10.250.0.11": "cp-1", "10.250.0.12": "cp-2",
                          "10.250.0.13": "cp-3"}) == {"cp-1", "cp-2", "cp-3"}


# haproxy 2.6's stats CSV, trimmed to the columns the checks read (the header names
# them; their position differs between haproxy versions)
HAPROXY_STATS = """# pxname,svname,status,weight,check_status,addr,
stats,FRONTEND,OPEN,,,,
kube-apiserver,FRONTEND,OPEN,,,,
kube-apiserver,cp-1,UP,1,L7OK,10.250.0.11:6443,
kube-apiserver,cp-2,DOWN,1,L4CON,10.250.0.12:6443,
kube-apiserver,BACKEND,UP,2,,,
"""


def test_parse_haproxy_stats():
    servers = parse_haproxy_stats(HAPROXY_STATS, "kube-apiserver")
    assert {n: (r["status"], r["addr"]) for n, r in servers.items()} == {
        "cp-1": ("UP", "10.250.0.11:6443"), "cp-2": ("DOWN", "10.250.0.12:6443")}
    assert parse_haproxy_stats(HAPROXY_STATS, "other") == {}
    # not haproxy's CSV (an error page, nothing listening): no servers, not an error
    assert parse_haproxy_stats("<html>503</html>", "kube-apiserver") == {}
    assert parse_haproxy_stats("", "kube-apiserver") == {}


def test_etcdctl_script_uses_agreed_cert_paths():
    script = etcdctl_script(["https://10.250.0.11:2379", "https://10.250.0.12:2379"])
    assert "--cacert=/etc/etcd/pki/ca.crt" in script
    assert "--cert=/etc/etcd/pki/operator.crt --key=/etc/etcd/pki/operator.key" in script
    assert "--endpoints=https://10.250.0.11:2379,https://10.250.0.12:2379" in script
    assert "endpoint health --cluster -w json" in script


def test_observe_membership_with_a_fake_runner(inv):
    """observe_membership wiring: probes, kubectl on the first answering control plane,
    etcdctl on an etcd member; an unreachable node is reported, not guessed."""
    i = inv(workers=1)
    calls: list[str] = []

    def run(node: str, script: str) -> subprocess.CompletedProcess[str]:
        calls.append(node)
        if node == "cp-3":
            return subprocess.CompletedProcess([], 255, "", "ssh: connect timed out")
        if script.startswith("echo @@reachable"):
            out = "@@reachable\n" + ("@@apiserver\n" if node == "cp-1" else "")
            if node.startswith("cp-"):
                out += "@@haproxy\n" + HAPROXY_CFG + "\n@@vip\n"
                out += "here\n" if node == "cp-2" else ""
            return subprocess.CompletedProcess([], 0, out, "")
        if "kubectl" in script:
            return subprocess.CompletedProcess([], 0, json.dumps(KUBECTL_NODES), "")
        if "etcdctl" in script:
            return subprocess.CompletedProcess(
                [], 0, "@@members\n" + ETCD_MEMBER_LIST + "@@health\n" + ETCD_HEALTH, "")
        raise AssertionError(script)

    machines = {"cp-1": "running", "cp-2": "running", "cp-3": "running",
                "worker-1": "stopped"}
    obs = observe_membership(i, machines, run)
    assert obs.reachable == {"cp-1", "cp-2"}
    assert obs.vip_holder == "cp-2"
    assert obs.api_server_manifests == {"cp-1"}
    # api-3 is cp-3's address; the stats section's loopback server is not a backend
    assert obs.lb_backends == {"cp-1": {"cp-1", "cp-2", "cp-3"},
                               "cp-2": {"cp-1", "cp-2", "cp-3"}}
    assert set(obs.k8s_nodes) == {"cp-1", "worker-1"} and obs.k8s_known
    assert set(obs.etcd_members) == {"cp-1", "cp-2", "unstarted:https://10.250.0.14:2380"}
    assert any("cp-3: unreachable" in p for p in obs.problems)
    assert "worker-1" not in calls  # stopped machines are not probed
    # kubectl reports worker-9, which the inventory does not have: it is probed too
    i = inv(workers=0)
    calls.clear()
    nodes = json.loads(json.dumps(KUBECTL_NODES))
    nodes["items"][1]["metadata"]["name"] = "worker-9"
    kubectl = json.dumps(nodes)

    def run_removed(node: str, script: str) -> subprocess.CompletedProcess[str]:
        if "kubectl" in script:
            return subprocess.CompletedProcess([], 0, kubectl, "")
        return run(node, script)

    removed = observe_membership(i, machines, run_removed)
    assert "worker-9" in calls and "worker-9" in removed.reachable


def test_observe_membership_before_anything_is_built(inv):
    i = inv(workers=0)

    def run(node: str, script: str) -> subprocess.CompletedProcess[str]:
        if script.startswith("echo @@reachable"):
            return subprocess.CompletedProcess([], 0, "@@reachable\n@@vip\n", "")
        return subprocess.CompletedProcess([], 0, "@@absent\n", "")

    obs = observe_membership(i, {"cp-1": "running", "cp-2": "running", "cp-3": "running"}, run)
    assert obs.k8s_known and obs.etcd_known and not obs.k8s_nodes and not obs.etcd_members
    none = observe_membership(i, {}, run)
    assert none.k8s_known and none.etcd_known and not none.reachable


def test_api_servers_without_the_named_backend_skip_loopback():
    cfg = HAPROXY_CFG.replace("backend kube-apiserver", "backend apiservers")
    servers = api_servers(parse_haproxy_servers(cfg))
    assert [s.name for s in servers] == ["cp-1", "cp-2", "api-3"]


def test_observe_membership_joined_nodes_make_an_empty_answer_unknown(inv):
    """Every control-plane node of the inventory is new, but a worker has joined a
    cluster: that is not a cluster to build from scratch."""
    i = inv(cps=("cp-4", "cp-5", "cp-6"), workers=1)

    def run(node: str, script: str) -> subprocess.CompletedProcess[str]:
        assert node == "worker-1"
        return subprocess.CompletedProcess([], 0, "@@reachable\n@@joined\n@@vip\n", "")

    obs = observe_membership(i, {"worker-1": "running"}, run)
    assert not obs.k8s_known and not obs.etcd_known
    assert "worker-1 joined a cluster, but no control-plane node of the inventory answers " \
        "for it" in obs.problems
    plan = plan_changes(i, obs)
    # machines may be made (harmless); no `kubeadm init` of a second cluster
    assert {a.kind for a in plan.actions} == {CREATE_MACHINE}


def test_observe_membership_kubectl_failing_everywhere_is_unknown(inv):
    i = inv(workers=0)

    def run(node: str, script: str) -> subprocess.CompletedProcess[str]:
        if script.startswith("echo @@reachable"):
            return subprocess.CompletedProcess([], 0, "@@reachable\n", "")
        return subprocess.CompletedProcess([], 1, "", "connection refused")

    obs = observe_membership(i, dict.fromkeys(["cp-1", "cp-2", "cp-3"], "running"), run)
    assert not obs.k8s_known and not obs.etcd_known
    assert any("kubectl get nodes on cp-1 failed: connection refused" in p
               for p in obs.problems)


# --- planner: helpers ----------------------------------------------------------------

def test_quorum_and_natural_order():
    assert [quorum(n) for n in range(1, 7)] == [1, 2, 2, 3, 3, 4]
    assert sorted(["worker-10", "worker-2", "worker-1"], key=natural_key) == [
        "worker-1", "worker-2", "worker-10"]


# --- planner: building and no-op ------------------------------------------------------

def test_fresh_cluster_machines_then_control_planes_then_workers(inv):
    plan = plan_changes(inv(), Observed())
    assert plan.ok and plan.fresh
    assert kinds(plan) == [
        (CREATE_MACHINE, "cp-1"), (CREATE_MACHINE, "cp-2"), (CREATE_MACHINE, "cp-3"),
        (CREATE_MACHINE, "worker-1"), (CREATE_MACHINE, "worker-2"),
        (JOIN_CONTROL_PLANE, "cp-1"), (JOIN_CONTROL_PLANE, "cp-2"),
        (JOIN_CONTROL_PLANE, "cp-3"),
        (JOIN_WORKER, "worker-1"), (JOIN_WORKER, "worker-2"),
    ]
    first = action(plan, JOIN_CONTROL_PLANE, "cp-1")
    assert first.details["init"] and first.details["etcd"] == "bootstrap a new etcd cluster"
    second = action(plan, JOIN_CONTROL_PLANE, "cp-2")
    assert not second.details["init"] and second.details["etcd"] == "member add"
    assert second.details["load_balancer_backends"] == ["cp-1", "cp-2", "cp-3"]


def test_fresh_cluster_with_dedicated_etcd(inv):
    plan = plan_changes(inv(cps=("cp-1", "cp-2"), etcd=("etcd-1", "etcd-2", "etcd-3"),
                            workers=1), Observed())
    assert plan.ok, plan.refusals
    assert kinds(plan) == [
        (CREATE_MACHINE, "cp-1"), (CREATE_MACHINE, "cp-2"), (CREATE_MACHINE, "etcd-1"),
        (CREATE_MACHINE, "etcd-2"), (CREATE_MACHINE, "etcd-3"), (CREATE_MACHINE, "worker-1"),
        (ADD_ETCD_MEMBER, "etcd-1"), (ADD_ETCD_MEMBER, "etcd-2"), (ADD_ETCD_MEMBER, "etcd-3"),
        (JOIN_CONTROL_PLANE, "cp-1"), (JOIN_CONTROL_PLANE, "cp-2"), (JOIN_WORKER, "worker-1"),
    ]
    assert action(plan, ADD_ETCD_MEMBER, "etcd-1").details["bootstrap"]
    assert action(plan, ADD_ETCD_MEMBER, "etcd-2").details["member_add"]
    assert action(plan, JOIN_CONTROL_PLANE, "cp-1").details["etcd"] == "dedicated"


def test_healthy_cluster_is_a_no_op(inv):
    plan = plan_changes(inv(), cluster())
    assert plan.ok and not plan.fresh and not plan.changes
    assert kinds(plan) == [(NOTHING, "-")]
    assert "matches the inventory" in plan.actions[0].reason


def test_plan_is_deterministic(inv):
    i = inv(workers=1)
    obs = cluster(cps=("cp-1", "cp-2", "cp-3"), workers=("worker-1", "worker-2", "worker-3"))
    plans = {plan_changes(i, obs).to_json_text() for _ in range(5)}
    assert len(plans) == 1


def test_stopped_machine_is_started_not_replaced(inv):
    obs = cluster()
    obs.machines["worker-2"] = "stopped"
    obs.reachable.discard("worker-2")
    obs.k8s_nodes["worker-2"] = K8sNode("worker-2", False, frozenset(), "v1.37.2")
    plan = plan_changes(inv(), obs)
    assert kinds(plan) == [(START_MACHINE, "worker-2")]


# --- planner: pools ------------------------------------------------------------------

def test_workers_2_to_3_to_1(inv):
    up = plan_changes(inv(workers=3), cluster())
    assert up.ok
    assert kinds(up) == [(CREATE_MACHINE, "worker-3"), (JOIN_WORKER, "worker-3")]

    three = cluster(workers=("worker-1", "worker-2", "worker-3"))
    down = plan_changes(inv(workers=1), three)
    assert down.ok
    assert kinds(down) == [(DRAIN_AND_REMOVE_WORKER, "worker-3"),
                           (DRAIN_AND_REMOVE_WORKER, "worker-2")]
    steps = action(down, DRAIN_AND_REMOVE_WORKER, "worker-3").details["steps"]
    assert steps == ["cordon", "drain (respects PodDisruptionBudgets)", "kubectl delete node",
                     "kubeadm reset and clean the host", "release the machine"]


def test_removal_order_is_numeric_not_lexical(inv):
    obs = cluster(workers=tuple(f"worker-{i}" for i in range(1, 12)))
    plan = plan_changes(inv(workers=8), obs)
    assert kinds(plan) == [(DRAIN_AND_REMOVE_WORKER, f"worker-{i}") for i in (11, 10, 9)]


def test_removing_an_unreachable_worker_skips_its_reset(inv):
    obs = cluster(workers=("worker-1", "worker-2", "worker-3"))
    obs.reachable.discard("worker-3")
    plan = plan_changes(inv(workers=2), obs)
    a = action(plan, DRAIN_AND_REMOVE_WORKER, "worker-3")
    assert a.details["reachable"] is False
    assert "reset skipped: the host does not answer over SSH" in a.details["steps"]


def test_machine_that_never_joined_is_released(inv):
    obs = cluster()
    obs.machines["worker-3"] = "running"  # created by a run killed before its join
    plan = plan_changes(inv(workers=2), obs)
    assert kinds(plan) == [(RELEASE_MACHINE, "worker-3")]


def test_a_held_machine_with_nothing_usable_on_it_is_still_released(inv):
    """A bare-metal machine whose install failed observes as missing, but the provider
    still holds its record (and its BMC): dropping the node releases it."""
    obs = cluster()
    obs.machines["worker-3"] = "missing"
    plan = plan_changes(inv(workers=2), obs)
    assert kinds(plan) == [(RELEASE_MACHINE, "worker-3")]


# --- planner: control plane -----------------------------------------------------------

def test_replace_cp3_by_cp4_adds_before_it_removes(inv):
    plan = plan_changes(inv(cps=("cp-1", "cp-2", "cp-4")), cluster(vip="cp-3"))
    assert plan.ok, plan.refusals
    assert kinds(plan) == [
        (CREATE_MACHINE, "cp-4"),
        (JOIN_CONTROL_PLANE, "cp-4"),
        (UPDATE_LOAD_BALANCER, "cp-1"),
        (UPDATE_LOAD_BALANCER, "cp-2"),
        (REMOVE_CONTROL_PLANE, "cp-3"),
    ]
    join = action(plan, JOIN_CONTROL_PLANE, "cp-4")
    assert join.details["etcd"] == "member add" and join.details["wait_healthy"]
    # cp-3 leaves the load balancers with the additions, before it is drained
    assert join.details["load_balancer_backends"] == ["cp-1", "cp-2", "cp-4"]
    lb = action(plan, UPDATE_LOAD_BALANCER, "cp-1")
    assert lb.details["add"] == ["cp-4"] and lb.details["remove"] == ["cp-3"]
    remove = action(plan, REMOVE_CONTROL_PLANE, "cp-3")
    assert remove.details["holds_vip"] is True
    assert remove.details["lb_hosts"] == ["cp-1", "cp-2", "cp-4"]
    assert remove.details["etcd_member_id"] == member_id("cp-3")
    steps = remove.details["steps"]
    assert steps[0].startswith("move the API virtual IP off it")
    assert steps[1] == ("(its haproxy backend on cp-1, cp-2, cp-4 is removed with the "
                        "additions, by the api-lb stage)")
    assert any(s.startswith("check etcd members cp-1, cp-2, cp-4 are healthy, then etcd "
                            "member remove") for s in steps)
    assert steps[-1] == "release the machine"


def test_remove_one_control_plane_of_five(inv):
    obs = cluster(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5"))
    plan = plan_changes(inv(cps=("cp-1", "cp-2", "cp-3")), obs)
    # 5 -> 4 -> 3: the intermediate 4 tolerates one failure, like 3; allowed
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(UPDATE_LOAD_BALANCER, "cp-1"), (UPDATE_LOAD_BALANCER, "cp-2"),
                           (UPDATE_LOAD_BALANCER, "cp-3"),
                           (REMOVE_CONTROL_PLANE, "cp-5"), (REMOVE_CONTROL_PLANE, "cp-4")]
    assert not action(plan, REMOVE_CONTROL_PLANE, "cp-5").details["holds_vip"]


def test_scale_control_plane_3_to_5_one_at_a_time(inv):
    plan = plan_changes(inv(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5")), cluster())
    assert plan.ok
    assert kinds(plan) == [
        (CREATE_MACHINE, "cp-4"), (CREATE_MACHINE, "cp-5"),
        (JOIN_CONTROL_PLANE, "cp-4"), (JOIN_CONTROL_PLANE, "cp-5"),
        (UPDATE_LOAD_BALANCER, "cp-1"), (UPDATE_LOAD_BALANCER, "cp-2"),
        (UPDATE_LOAD_BALANCER, "cp-3"),
    ]


# --- planner: refusals ------------------------------------------------------------------

def test_removing_two_of_three_etcd_members_is_refused(inv):
    plan = plan_changes(inv(cps=("cp-1",)), cluster())
    assert not plan.ok
    assert len(plan.refusals) == 1
    msg = plan.refusals[0]
    assert "removing cp-2, cp-3 in one edit takes etcd from 3 members to 1 (cp-1)" in msg
    assert "--force" in msg
    # the actions are listed for the operator; `up` applies none of them
    assert kinds(plan) == [(UPDATE_LOAD_BALANCER, "cp-1"),
                           (REMOVE_CONTROL_PLANE, "cp-3"), (REMOVE_CONTROL_PLANE, "cp-2")]
    assert "refused:" in plan.to_table() and "nothing will be changed" in plan.to_table()


def test_removing_two_of_three_with_force_goes_one_at_a_time(inv):
    plan = plan_changes(inv(cps=("cp-1",)), cluster(vip="cp-2"), force=True)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(UPDATE_LOAD_BALANCER, "cp-1"),
                           (REMOVE_CONTROL_PLANE, "cp-3"), (REMOVE_CONTROL_PLANE, "cp-2")]
    assert action(plan, REMOVE_CONTROL_PLANE, "cp-2").details["lb_hosts"] == ["cp-1"]


def test_even_end_state_is_refused_unless_forced():
    i = unchecked(cps=("cp-1", "cp-2"))
    plan = plan_changes(i, cluster())
    assert not plan.ok
    assert plan.refusals == [
        "etcd would end with 2 members (cp-1, cp-2): an even count tolerates no more failures "
        "than 1 and a network split can leave no majority; use 1 or 3 members, or pass --force"
    ]
    forced = plan_changes(i, cluster(), force=True)
    assert forced.ok and kinds(forced) == [(UPDATE_LOAD_BALANCER, "cp-1"),
                                           (UPDATE_LOAD_BALANCER, "cp-2"),
                                           (REMOVE_CONTROL_PLANE, "cp-3")]


def test_even_end_state_when_growing_is_refused_too():
    i = unchecked(cps=("cp-1", "cp-2", "cp-3", "cp-4"))
    plan = plan_changes(i, cluster())
    assert not plan.ok and "etcd would end with 4 members" in plan.refusals[0]


def test_existing_even_etcd_does_not_block_worker_changes():
    i = unchecked(cps=("cp-1", "cp-2"), workers=3)
    plan = plan_changes(i, cluster(cps=("cp-1", "cp-2")))
    assert plan.ok and kinds(plan) == [(CREATE_MACHINE, "worker-3"), (JOIN_WORKER, "worker-3")]


def test_removing_the_last_control_plane_is_refused_even_with_force(inv):
    # cp-2 is to replace cp-1, but its machine runs and does not answer: it cannot
    # join, so removing cp-1 would leave no API server.
    obs = cluster(cps=("cp-1",), workers=())
    obs.machines["cp-2"] = "running"
    i = unchecked(cps=("cp-2",), workers=0)
    for force in (False, True):
        plan = plan_changes(i, obs, force=force)
        assert not plan.ok
        assert any("removing cp-1 would remove the last control-plane node" in r
                   for r in plan.refusals)
        assert any("cp-2: the machine runs but does not answer over SSH; it is not joined"
                   in w for w in plan.warnings)


def test_the_validator_refuses_an_inventory_without_control_plane(tmp_path):
    from provision.inventory import InventoryInvalid
    path = tmp_path / "inventory.yaml"
    path.write_text(inventory_text(cps=()).replace("nodes:\n", "nodes: []\n"))
    with pytest.raises(InventoryInvalid, match="no control-plane node"):
        load_inventory(path)


def test_quorum_loss_at_an_intermediate_step_is_refused_even_with_force(inv):
    # 5 members, 2 already down: removing a healthy one leaves 4 with 2 healthy (< 3).
    obs = cluster(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5"))
    for name in ("cp-1", "cp-2"):
        m = obs.etcd_members[name]
        obs.etcd_members[name] = EtcdMember(m.name, m.peer_url, m.client_url, False,
                                            m.member_id)
    plan = plan_changes(inv(cps=("cp-1", "cp-2", "cp-3")), obs, force=True)
    assert not plan.ok
    assert any("removing etcd member cp-5 would lose quorum: 4 members would remain with 2 "
               "healthy, and 3 are needed" in r for r in plan.refusals)


def test_lost_quorum_points_to_restore(inv):
    obs = cluster()
    for name in ("cp-2", "cp-3"):
        m = obs.etcd_members[name]
        obs.etcd_members[name] = EtcdMember(m.name, m.peer_url, m.client_url, False,
                                            m.member_id)
    plan = plan_changes(inv(), obs)
    assert not plan.ok
    assert plan.refusals[0].startswith("etcd has lost quorum: 1 of 3 members healthy (cp-1 "
                                       "of cp-1, cp-2, cp-3)")
    assert "Backup and restore" in plan.refusals[0]


def test_adding_a_member_while_one_is_down_is_refused(inv):
    obs = cluster()
    m = obs.etcd_members["cp-3"]
    obs.etcd_members["cp-3"] = EtcdMember(m.name, m.peer_url, m.client_url, False,
                                          m.member_id)
    i = unchecked(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5"))
    plan = plan_changes(i, obs)
    assert not plan.ok
    assert any(r.startswith("joining control-plane node cp-4: cannot add etcd member cp-4: "
                            "member(s) cp-3 are not healthy") for r in plan.refusals)


def test_role_change_in_place_is_refused(inv, tmp_path):
    obs = cluster(workers=("worker-1", "worker-2"))
    obs.k8s_nodes["cp-3"] = K8sNode("cp-3", True, frozenset(), "v1.37.2")  # a worker
    plan = plan_changes(inv(), obs)
    assert not plan.ok
    assert any("cp-3 is a worker node in the cluster but a control-plane in the inventory"
               in r for r in plan.refusals)


def test_a_control_plane_join_stopped_half_way_is_redone_not_refused(inv):
    """A killed `up` can leave cp-3 registered by its kubelet but never labelled (kubeadm
    join stopped before mark-control-plane). Its machine holds the API server manifest
    a worker never has: the plan joins it again instead of refusing a role change."""
    obs = cluster(workers=("worker-1", "worker-2"))
    obs.k8s_nodes["cp-3"] = K8sNode("cp-3", False, frozenset(), "v1.37.2", address("cp-3"))
    obs.lb_backends.pop("cp-3")
    obs.api_server_manifests = {"cp-1", "cp-2", "cp-3"}
    plan = plan_changes(inv(), obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [("join-control-plane", "cp-3")]
    join = action(plan, "join-control-plane", "cp-3")
    assert "stopped half-way" in join.reason
    assert join.details["etcd"] == "already a member" and not join.details["init"]
    assert any("cp-3: its kubeadm join --control-plane stopped half-way" in w
               for w in plan.warnings)
    assert not any("NotReady" in w for w in plan.warnings)


# --- planner: dedicated etcd -------------------------------------------------------------

def dedicated_cluster(etcd=("etcd-1", "etcd-2", "etcd-3")) -> Observed:
    return cluster(cps=("cp-1", "cp-2"), workers=("worker-1",), etcd=etcd)


def test_dedicated_etcd_no_op_and_scale_out(inv):
    i = inv(cps=("cp-1", "cp-2"), etcd=("etcd-1", "etcd-2", "etcd-3"), workers=1)
    assert kinds(plan_changes(i, dedicated_cluster())) == [(NOTHING, "-")]
    five = inv(cps=("cp-1", "cp-2"), etcd=tuple(f"etcd-{n}" for n in range(1, 6)), workers=1)
    plan = plan_changes(five, dedicated_cluster())
    assert plan.ok
    assert kinds(plan) == [(CREATE_MACHINE, "etcd-4"), (CREATE_MACHINE, "etcd-5"),
                           (ADD_ETCD_MEMBER, "etcd-4"), (ADD_ETCD_MEMBER, "etcd-5")]
    add = action(plan, ADD_ETCD_MEMBER, "etcd-4")
    assert add.details["member_add"] and add.details["api_servers"] == ["cp-1", "cp-2"]


def test_dedicated_etcd_member_removal(inv):
    obs = dedicated_cluster(etcd=tuple(f"etcd-{n}" for n in range(1, 6)))
    i = inv(cps=("cp-1", "cp-2"), etcd=("etcd-1", "etcd-2", "etcd-3"), workers=1)
    plan = plan_changes(i, obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(REMOVE_ETCD_MEMBER, "etcd-5"), (REMOVE_ETCD_MEMBER, "etcd-4")]
    steps = action(plan, REMOVE_ETCD_MEMBER, "etcd-4").details["steps"]
    assert steps[0] == "check etcd members etcd-1, etcd-2, etcd-3 are healthy"
    assert "update --etcd-servers on API servers cp-1, cp-2" in steps


def test_dedicated_etcd_two_of_three_refused(inv):
    i = inv(cps=("cp-1", "cp-2"), etcd=("etcd-1",), workers=1)
    plan = plan_changes(i, dedicated_cluster())
    assert not plan.ok
    assert "removing etcd-2, etcd-3 in one edit takes etcd from 3 members to 1" in \
        plan.refusals[0]


def test_dedicated_replace_etcd_member_add_then_remove(inv):
    i = inv(cps=("cp-1", "cp-2"), etcd=("etcd-1", "etcd-2", "etcd-4"), workers=1)
    plan = plan_changes(i, dedicated_cluster())
    assert plan.ok
    assert kinds(plan) == [(CREATE_MACHINE, "etcd-4"), (ADD_ETCD_MEMBER, "etcd-4"),
                           (REMOVE_ETCD_MEMBER, "etcd-3")]


# --- planner: repairs, crashes and unreachable nodes -------------------------------------

def test_missing_machine_of_a_member_is_replaced(inv):
    obs = cluster()
    obs.machines["cp-2"] = "missing"
    obs.reachable.discard("cp-2")
    obs.k8s_nodes["cp-2"] = K8sNode("cp-2", False, frozenset({"control-plane"}), "v1.37.2")
    m = obs.etcd_members["cp-2"]
    obs.etcd_members["cp-2"] = EtcdMember(m.name, m.peer_url, m.client_url, False,
                                          m.member_id)
    plan = plan_changes(inv(), obs)
    assert plan.ok, plan.refusals
    # the dead member leaves first (etcd refuses an add while a member is down)
    assert kinds(plan) == [(REMOVE_ETCD_MEMBER, "cp-2"), (REPLACE_NODE, "cp-2")]
    remove = plan.actions[0]
    assert remove.details["keep_node"] and remove.reason.endswith("(etcd 3 -> 2 members)")
    assert remove.details["steps"] == ["check etcd members cp-1, cp-3 are healthy",
                                       f"etcd member remove {member_id('cp-2')}"]
    replace = plan.actions[1]
    assert replace.reason.endswith("(etcd 2 -> 3 members)")
    assert replace.details["steps"] == [
        "kubectl delete node (the old Node object)", "create a new machine",
        "etcd member add, start it, wait until it is healthy", "kubeadm join --control-plane"]


def test_two_lost_members_of_five_both_leave_before_either_rejoins(inv):
    obs = cluster(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5"))
    for name in ("cp-2", "cp-4"):
        obs.machines[name] = "missing"
        obs.reachable.discard(name)
        m = obs.etcd_members[name]
        obs.etcd_members[name] = EtcdMember(m.name, m.peer_url, m.client_url, False,
                                            m.member_id)
    plan = plan_changes(inv(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5")), obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(REMOVE_ETCD_MEMBER, "cp-2"), (REMOVE_ETCD_MEMBER, "cp-4"),
                           (REPLACE_NODE, "cp-2"), (REPLACE_NODE, "cp-4")]
    assert [a.reason.rsplit("(", 1)[1] for a in plan.actions] == [
        "etcd 5 -> 4 members)", "etcd 4 -> 3 members)", "etcd 3 -> 4 members)",
        "etcd 4 -> 5 members)"]


def test_missing_worker_machine_is_replaced(inv):
    obs = cluster()
    obs.machines["worker-1"] = "missing"
    obs.reachable.discard("worker-1")
    plan = plan_changes(inv(), obs)
    assert kinds(plan) == [(REPLACE_NODE, "worker-1")]
    assert plan.actions[0].details["steps"] == [
        "kubectl delete node (the old Node object)", "create a new machine", "kubeadm join"]


def test_broken_node_needs_force_to_be_replaced(inv):
    obs = cluster()
    obs.reachable.discard("worker-2")
    obs.k8s_nodes["worker-2"] = K8sNode("worker-2", False, frozenset(), "v1.37.2")
    plan = plan_changes(inv(), obs)
    assert kinds(plan) == [(NOTHING, "-")]
    assert any("worker-2: the machine runs but answers neither SSH nor the cluster" in w
               for w in plan.warnings)
    forced = plan_changes(inv(), obs, force=True)
    assert kinds(forced) == [(REPLACE_NODE, "worker-2")]
    assert forced.actions[0].details["steps"][1] == "release the old machine"


def test_unreachable_but_ready_node_is_left_alone(inv):
    obs = cluster()
    obs.reachable.discard("cp-2")
    del obs.lb_backends["cp-2"]
    plan = plan_changes(inv(), obs, force=True)
    assert kinds(plan) == [(NOTHING, "-")]
    assert any("cp-2: the machine runs but does not answer over SSH; the cluster still "
               "reports it healthy" in w for w in plan.warnings)


def test_crash_after_etcd_member_add_resumes_the_join(inv):
    """Killed after `etcdctl member add cp-4` and before cp-4's etcd started: the
    member exists (unstarted, no name); the join starts it instead of adding again."""
    obs = cluster()
    obs.machines["cp-4"] = "running"
    obs.reachable.add("cp-4")
    obs.etcd_members["cp-4"] = EtcdMember("", "https://10.250.0.14:2380", "", False, "fd42")
    i = unchecked(cps=("cp-1", "cp-2", "cp-3", "cp-4", "cp-5"))
    plan = plan_changes(i, obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [
        (CREATE_MACHINE, "cp-5"), (JOIN_CONTROL_PLANE, "cp-4"), (JOIN_CONTROL_PLANE, "cp-5"),
        (UPDATE_LOAD_BALANCER, "cp-1"), (UPDATE_LOAD_BALANCER, "cp-2"),
        (UPDATE_LOAD_BALANCER, "cp-3")]
    assert action(plan, JOIN_CONTROL_PLANE, "cp-4").details["etcd"] == \
        "added by an earlier run: start it"


def test_unstarted_member_of_a_removed_node_is_removed(inv):
    obs = cluster()
    obs.etcd_members["unstarted:https://10.250.0.19:2380"] = EtcdMember(
        "", "https://10.250.0.19:2380", "", False, "abc")
    plan = plan_changes(inv(), obs)
    # 4 members with 3 healthy -> removing the unstarted one keeps 3 of 3: allowed
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(REMOVE_ETCD_MEMBER, "-")]
    assert plan.actions[0].details["etcd_member_id"] == "abc"


def test_crash_during_worker_join_joins_again(inv):
    obs = cluster(workers=("worker-1",))
    obs.machines["worker-2"] = "running"
    obs.reachable.add("worker-2")
    plan = plan_changes(inv(), obs)
    assert kinds(plan) == [(JOIN_WORKER, "worker-2")]


def test_load_balancer_drift_is_repaired(inv):
    obs = cluster()
    obs.lb_backends["cp-2"] = {"cp-1", "cp-2", "cp-9"}
    del obs.lb_backends["cp-3"]
    plan = plan_changes(inv(), obs)
    assert kinds(plan) == [(UPDATE_LOAD_BALANCER, "cp-2"), (UPDATE_LOAD_BALANCER, "cp-3")]
    lb = action(plan, UPDATE_LOAD_BALANCER, "cp-2")
    assert lb.reason == "backends follow the control plane: add cp-3; remove cp-9"
    assert action(plan, UPDATE_LOAD_BALANCER, "cp-3").reason == \
        "no haproxy configuration found"


def test_unobservable_cluster_starts_machines_or_refuses(inv):
    obs = cluster()
    obs.k8s_known = False
    obs.problems.append("kubectl get nodes on cp-1 failed: connection refused")
    plan = plan_changes(inv(), obs)
    assert not plan.ok
    assert plan.refusals[0].startswith("cannot observe the cluster's Kubernetes nodes")
    assert plan.warnings == ["kubectl get nodes on cp-1 failed: connection refused"]

    stopped = Observed(machines=dict.fromkeys(["cp-1", "cp-2", "cp-3", "worker-1",
                                               "worker-2"], "stopped"),
                       k8s_known=False, etcd_known=False)
    plan = plan_changes(inv(), stopped)
    assert plan.ok
    assert [k for k, _ in kinds(plan)] == [START_MACHINE] * 5
    assert any("only machines are started or created now" in w for w in plan.warnings)


# --- output -----------------------------------------------------------------------------

def test_table_and_json(inv):
    plan = plan_changes(inv(workers=3), cluster())
    table = plan.to_table().splitlines()
    assert table[0].split() == ["#", "action", "node", "reason"]
    assert table[1].split()[:3] == ["1", "create-machine", "worker-3"]
    assert table[2].split()[:3] == ["2", "join-worker", "worker-3"]
    data = json.loads(plan.to_json_text())
    assert data["ok"] is True and data["refusals"] == [] and not data["fresh"]
    assert [(a["kind"], a["node"]) for a in data["actions"]] == kinds(plan)


def test_observed_to_json_round_trips_through_json():
    data = json.loads(json.dumps(cluster().to_json()))
    assert data["lb_backends"]["cp-1"] == ["cp-1", "cp-2", "cp-3"]
    assert data["etcd_members"]["cp-2"]["healthy"] is True


def test_docs_describe_every_action_kind():
    from provision.plan.membership import KINDS
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for kind in KINDS:
        assert f"`{kind}`" in text, kind


def test_crash_after_dedicated_member_add_starts_it_without_adding_again(inv):
    obs = dedicated_cluster()
    obs.machines["etcd-4"] = "running"
    obs.reachable.add("etcd-4")
    obs.etcd_members["etcd-4"] = EtcdMember("", "https://10.250.0.34:2380", "", False, "e4")
    five = inv(cps=("cp-1", "cp-2"), etcd=tuple(f"etcd-{n}" for n in range(1, 6)), workers=1)
    plan = plan_changes(five, obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(CREATE_MACHINE, "etcd-5"), (ADD_ETCD_MEMBER, "etcd-4"),
                           (ADD_ETCD_MEMBER, "etcd-5")]
    resumed = action(plan, ADD_ETCD_MEMBER, "etcd-4")
    assert not resumed.details["member_add"]
    assert resumed.details["etcd"] == "added by an earlier run: start it"
    # etcd 5 members after: the reason of the second add says so
    assert action(plan, ADD_ETCD_MEMBER, "etcd-5").reason.endswith("(etcd 4 -> 5 members)")


def test_control_plane_without_its_etcd_member_gets_it_back(inv):
    obs = cluster()
    del obs.etcd_members["cp-3"]
    plan = plan_changes(inv(), obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(ADD_ETCD_MEMBER, "cp-3")]
    assert plan.actions[0].details["member_add"]
    assert plan.actions[0].reason.endswith("(etcd 2 -> 3 members)")


def test_nobody_holding_the_vip_is_reported(inv):
    plan = plan_changes(inv(), cluster(vip=None))
    assert kinds(plan) == [(NOTHING, "-")]
    assert any("no control-plane node holds the API virtual IP 10.250.0.10" in w
               for w in plan.warnings)


def test_crash_inside_etcd_before_kubeadm_init(inv):
    """Killed after cp-1's etcd bootstrapped, before kubeadm init."""
    obs = Observed(machines=dict.fromkeys(["cp-1", "cp-2", "cp-3", "worker-1", "worker-2"],
                                          "running"))
    obs.reachable = set(obs.machines)
    obs.etcd_members = {"cp-1": cluster().etcd_members["cp-1"]}
    plan = plan_changes(inv(), obs)
    assert plan.ok and not plan.fresh
    assert kinds(plan) == [
        (JOIN_CONTROL_PLANE, "cp-1"), (JOIN_CONTROL_PLANE, "cp-2"),
        (JOIN_CONTROL_PLANE, "cp-3"), (JOIN_WORKER, "worker-1"), (JOIN_WORKER, "worker-2")]
    first = action(plan, JOIN_CONTROL_PLANE, "cp-1")
    assert first.details["init"] and first.details["etcd"] == "already a member"
    assert action(plan, JOIN_CONTROL_PLANE, "cp-2").reason.endswith("(etcd 1 -> 2 members)")


def test_crash_during_a_control_plane_join(inv):
    """Killed after cp-3's etcd member started, during its kubeadm join."""
    obs = cluster()
    del obs.k8s_nodes["cp-3"]
    plan = plan_changes(inv(), obs)
    assert plan.ok
    assert kinds(plan) == [(JOIN_CONTROL_PLANE, "cp-3")]
    assert plan.actions[0].details["etcd"] == "already a member"
    assert not plan.actions[0].details["init"]


def test_moving_etcd_to_dedicated_in_place_is_refused(inv):
    i = inv(cps=("cp-1", "cp-2", "cp-3"), etcd=("etcd-1", "etcd-2", "etcd-3"))
    plan = plan_changes(i, cluster())
    assert not plan.ok
    assert plan.refusals[0].startswith("etcd.placement is dedicated, but etcd runs on "
                                       "control-plane nodes cp-1, cp-2, cp-3")


def test_observation_runs_over_the_cluster_ssh_config(tmp_path, monkeypatch):
    from provision.run.context import ClusterContext

    seen = {}

    def fake_run(argv, **kw):
        seen["argv"], seen["timeout"] = argv, kw["timeout"]
        return subprocess.CompletedProcess(argv, 0, "@@reachable\n", "")

    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path))
    path = tmp_path / "inv.yaml"
    path.write_text(inventory_text())
    ctx = ClusterContext.open(path)
    monkeypatch.setattr(subprocess, "run", fake_run)
    proc = ctx.ssh.runner(timeout=7)("cp-1", "true")
    assert proc.returncode == 0
    assert seen["argv"] == ["ssh", "-F", str(ctx.paths.ssh_config), "cp-1", "true"]
    assert seen["timeout"] == 7


def test_an_unhealthy_member_does_not_block_worker_changes(inv):
    obs = cluster()
    m = obs.etcd_members["cp-3"]
    obs.etcd_members["cp-3"] = EtcdMember(m.name, m.peer_url, m.client_url, False,
                                          m.member_id)
    plan = plan_changes(inv(workers=3), obs)
    assert plan.ok, plan.refusals
    assert kinds(plan) == [(CREATE_MACHINE, "worker-3"), (JOIN_WORKER, "worker-3")]


def test_table_of_a_refused_plan_without_actions(inv):
    obs = cluster()
    obs.k8s_known = False
    table = plan_changes(inv(), obs).to_table()
    assert table.splitlines()[0].split() == ["#", "action", "node", "reason"]
    assert "refused: cannot observe the cluster's Kubernetes nodes" in table
