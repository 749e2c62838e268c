"""network stage: flannel on every node, routes to every other node's pod subnet,
node Ready, cluster DNS from every node, and real traffic with the netcheck pods
(images/netcheck, one per node, deployed by roles/cni): from the pod on every node to
the pods on every other node by pod IP, to the netcheck Service by ClusterIP and by
DNS name through the pod's own resolv.conf; and from every node to every pod."""

from __future__ import annotations

import json
import shlex
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from provision import nodefacts


def test_flannel_running_here(host):
    out = host.run("crictl ps --name kube-flannel --state running -q")
    assert out.stdout.strip(), "no running kube-flannel container on this node"


def test_vxlan_device(host):
    out = host.run("ip -d link show flannel.1")
    assert out.rc == 0 and "vxlan" in out.stdout, out.stdout


ROUTE_WAIT_SECONDS = 60


def pod_subnets(cp) -> dict[str, str]:
    """Node name -> its pod subnet (``spec.podCIDR``), as the API server has them (asked
    on a control-plane node: a kubelet may read only its own Node)."""
    out = cp.run(f"{ADMIN_KUBECTL} get nodes -o json")
    assert out.rc == 0, out.stderr
    return {n["metadata"]["name"]: n["spec"].get("podCIDR", "")
            for n in json.loads(out.stdout)["items"]}


def test_routes_to_every_other_node(host, cluster, other_host):
    """A route through flannel.1 to each other node's own pod subnet, and to nothing
    else (a stale route sends a subnet's traffic to a node that no longer has it)."""
    me = cluster["node"]["name"]
    others = {n["name"] for n in cluster.nodes
              if {"control-plane", "worker"} & set(n["roles"]) and n["name"] != me}
    # nodes leaving in this run keep their routes until their Node is deleted
    leaving = set(cluster.get("provision_leaving_nodes", []))
    # A node that joined moments ago gets its route once its flannel pod has its
    # lease (the DaemonSet is still rolling out there): wait for it (bounded), as the
    # netcheck sweep waits for its pod, rather than fail and converge again.
    cp = kubectl_host(host, cluster, other_host)
    deadline = time.monotonic() + ROUTE_WAIT_SECONDS
    while True:
        subnets = pod_subnets(cp)
        want = {subnets.get(n, f"<no podCIDR for {n}>") for n in others}
        allowed = want | {subnets[n] for n in leaving if subnets.get(n)}
        routes = {r.split()[0] for r in host.run("ip -4 route show dev flannel.1").stdout
                  .splitlines() if r.strip()}
        complete = want <= routes <= allowed
        if complete or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert complete, (f"flannel.1 routes {sorted(routes)}; missing {sorted(want - routes)}, "
                      f"not a node's {sorted(routes - allowed)}")


def test_kube_proxy_running_here(host):
    out = host.run("crictl ps --name '^kube-proxy$' --state running -q")
    assert out.rc == 0 and out.stdout.strip(), "kube-proxy is not running on this node"


def coredns_replicas(host, cluster, other_host) -> tuple[int, int]:
    """(available, wanted) replicas of the CoreDNS Deployment."""
    cp = kubectl_host(host, cluster, other_host)
    out = cp.run(f"{ADMIN_KUBECTL} -n kube-system get deployment coredns -o json")
    assert out.rc == 0, out.stderr
    deployment = json.loads(out.stdout)
    return (deployment["status"].get("availableReplicas", 0),
            deployment["spec"].get("replicas", 1))


def test_coredns_available(host, cluster, other_host):
    """Every CoreDNS replica available (the DNS checks below pass with one of two)."""
    available, wanted = coredns_replicas(host, cluster, other_host)
    assert wanted >= 1 and available == wanted, \
        f"CoreDNS: {available} of {wanted} replicas available"


def no_dns_server(host, cluster, other_host) -> str:
    """Why no DNS question can be answered ("" when some CoreDNS replica is available).
    With none, every DNS probe would only wait out its timeouts (minutes over a
    cluster) to fail: the DNS checks fail at once, naming the cause."""
    if "no_dns_server" not in _DNS:
        available, wanted = coredns_replicas(host, cluster, other_host)
        _DNS["no_dns_server"] = "" if available else \
            f"cluster DNS not asked: CoreDNS has {available} of {wanted} replicas available"
    return _DNS["no_dns_server"]


_DNS: dict[str, str] = {}  # asked once per check run (one xdist worker's share of it)


def test_node_ready(host, cluster):
    out = host.run(f"kubectl --kubeconfig {nodefacts.KUBELET_KUBECONFIG}"
                   f" get node {cluster['node']['name']} -o json")
    assert out.rc == 0, out.stderr
    ready = {c["type"]: c["status"] for c in json.loads(out.stdout)["status"]["conditions"]}
    assert ready["Ready"] == "True"


def resolve_through_cluster_dns(host, cluster, name: str) -> str:
    """Ask cluster DNS (the kube-dns Service IP) for ``name`` from this node: kube-proxy
    DNAT -> a CoreDNS pod, often on another node (over the VXLAN). Returns the address."""
    script = textwrap.dedent(f"""
        import socket, struct, random
        qid = random.randrange(65536)
        q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
        q += b''.join(bytes([len(p)]) + p.encode() for p in {name!r}.split('.')) + b'\\0'
        q += struct.pack('>HH', 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        for _ in range(5):
            try:
                s.sendto(q, ({cluster.dns_service_ip!r}, 53)); r = s.recv(512); break
            except OSError:
                r = b''
        answered = r and struct.unpack('>H', r[6:8])[0]
        print('.'.join(str(b) for b in r[-4:]) if answered else 'NOANSWER')
    """)
    out = host.run(f"python3 -c {shlex.quote(script)}")
    return out.stdout.strip() or out.stderr.strip()


def test_cluster_dns_through_the_service_ip(host, cluster, other_host):
    """Service, pod network and DNS: kubernetes.default resolves from every node."""
    down = no_dns_server(host, cluster, other_host)
    assert not down, down
    name = f"kubernetes.default.svc.{cluster.get('provision_cluster_domain', 'cluster.local')}"
    assert resolve_through_cluster_dns(host, cluster, name) == cluster.kubernetes_service_ip


# -- the netcheck pods ---------------------------------------------------------------

NETCHECK_NS = "provision-netcheck"  # roles/cni: cni_netcheck_namespace
NETCHECK_PORT = 8080  # roles/cni: cni_netcheck_port (the Service listens on 80)
NETCHECK_BIN = "/netcheck"
SWEEP_FLAGS = ("-timeout", "3s", "-attempts", "3")
ADMIN_KUBECTL = f"kubectl --kubeconfig {nodefacts.ADMIN_KUBECONFIG}"


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str

    def __str__(self) -> str:
        return f"pod {self.name} on {self.node} ({self.ip})"


@dataclass(frozen=True)
class Probe:
    """One target of a sweep and what a right answer is."""

    target: str  # get:URL | resolve:NAME (netcheck sweep syntax)
    what: str  # for messages: "pod netcheck-x on worker-1 (10.244.3.2:8080)"
    node: str = ""  # get: the node the answer must name
    any_node: frozenset[str] = frozenset()  # get: the answer names one of these
    addrs: tuple[str, ...] = ()  # resolve: exactly these addresses
    needs_dns: bool = False  # a resolve:, or a get: of a name


def running_pods(pod_list: dict[str, Any]) -> list[Pod]:
    """Running and Ready pods of a ``kubectl get pods -o json`` answer."""
    out = []
    for p in pod_list.get("items", []):
        status = p.get("status", {})
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions", []))
        if status.get("phase") == "Running" and ready and status.get("podIP"):
            out.append(Pod(p["metadata"]["name"], p["spec"]["nodeName"], status["podIP"]))
    return sorted(out, key=lambda p: p.node)


def probes_from(source: Pod, pods: list[Pod], cluster_ip: str, kubernetes_ip: str,
                domain: str) -> list[Probe]:
    """What the pod ``source`` must reach: every pod on another node by pod IP, the
    Service by ClusterIP, by name (through the pod's resolv.conf) and its DNS records."""
    nodes = frozenset(p.node for p in pods)
    fqdn = f"netcheck.{NETCHECK_NS}.svc.{domain}"
    probes = [Probe(f"get:http://{p.ip}:{NETCHECK_PORT}/", f"{p} port {NETCHECK_PORT}",
                    node=p.node)
              for p in pods if p.node != source.node]
    probes += [
        Probe(f"get:http://{cluster_ip}/", f"Service netcheck by ClusterIP {cluster_ip}:80",
              any_node=nodes),
        Probe(f"get:http://netcheck.{NETCHECK_NS}/",
              f"Service netcheck by name (netcheck.{NETCHECK_NS}, via the search path)",
              any_node=nodes, needs_dns=True),
        Probe(f"resolve:{fqdn}", f"cluster DNS for {fqdn}", addrs=(cluster_ip,),
              needs_dns=True),
        Probe("resolve:kubernetes.default", "cluster DNS for kubernetes.default",
              addrs=(kubernetes_ip,), needs_dns=True),
    ]
    return probes


def sweep_argv(source: Pod, probes: list[Probe]) -> list[str]:
    return [*ADMIN_KUBECTL.split(), "-n", NETCHECK_NS, "exec", source.name, "-c", "netcheck",
            "--", NETCHECK_BIN, "sweep", *SWEEP_FLAGS, *(p.target for p in probes)]


def judge(source: Pod, probes: list[Probe], rc: int, stdout: str, stderr: str) -> list[str]:
    """Failures of one sweep, each naming the source pod and node, the target and the
    error; [] when every probe got the right answer."""
    results: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "target" in r:
            results[r["target"]] = r
    failures = []
    how = f"kubectl exec exit {rc}: {stderr.strip()[-300:] or 'no output'}"
    for probe in probes:
        r = results.get(probe.target)
        if r is None:
            failures.append(f"from {source} to {probe.what}: no answer from netcheck ({how})")
            continue
        problem = _wrong(probe, r)
        if problem:
            failures.append(f"from {source} to {probe.what}: {problem}")
    return failures


def _wrong(probe: Probe, r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"{r.get('error') or 'failed'} ({r.get('attempts', '?')} attempts)"
    if probe.target.startswith("resolve:"):
        got = tuple(sorted(r.get("addrs") or ()))
        return "" if got == tuple(sorted(probe.addrs)) else \
            f"resolved to {', '.join(got) or 'nothing'}, expected {', '.join(probe.addrs)}"
    try:
        answered = json.loads(r.get("body") or "").get("node", "")
    except (ValueError, AttributeError):
        return f"answered {str(r.get('body'))[:120]!r}, not netcheck's JSON"
    if probe.node and answered != probe.node:
        return f"answered from node {answered!r}, expected {probe.node!r}"
    if probe.any_node and answered not in probe.any_node:
        return f"answered from node {answered!r}, not a cluster node"
    return ""


# One python3 on the kubectl node runs every pod's sweep at once: {pod: argv} -> JSON.
PARALLEL = textwrap.dedent("""
    import json, subprocess, sys
    from concurrent.futures import ThreadPoolExecutor
    jobs = json.loads(sys.argv[1])
    def run(item):
        name, argv = item
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            return name, {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        except (OSError, subprocess.SubprocessError) as e:
            return name, {"rc": -1, "stdout": "", "stderr": str(e)}
    with ThreadPoolExecutor(max(1, len(jobs))) as ex:
        print(json.dumps(dict(ex.map(run, sorted(jobs.items())))))
""")


@dataclass
class Netcheck:
    """The netcheck pods and every pod's sweep, asked once per check run."""

    pods: dict[str, Pod] = field(default_factory=dict)  # node -> its pod
    cluster_ip: str = ""
    failures: dict[str, list[str]] = field(default_factory=dict)  # source node -> failures
    error: str = ""  # the sweep could not run at all
    seconds: float = 0.0


_RUN: dict[str, Netcheck] = {}
# Every node's netcheck tests read the one sweep in _RUN: under xdist (verify.py runs
# a stage's nodes in parallel) they must share a worker, or each worker sweeps again.
SWEEP = pytest.mark.xdist_group("netcheck-sweep")


def kubectl_host(host, cluster, other_host):
    """A control-plane node (admin.conf): this one if it is, else the first."""
    if "control-plane" in cluster["node"].get("roles", []):
        return host
    return other_host(cluster.with_role("control-plane")[0]["name"])


def netcheck(host, cluster, other_host) -> Netcheck:
    """Every netcheck pod's sweep, run in parallel from one control-plane node the first
    time a node's check asks; later nodes read their part."""
    if "run" in _RUN:
        return _RUN["run"]
    run = _RUN["run"] = Netcheck()
    started = time.monotonic()
    cp = kubectl_host(host, cluster, other_host)
    kubectl = f"{ADMIN_KUBECTL} -n {NETCHECK_NS}"
    # A node that joined moments ago gets its DaemonSet pod a little later: wait for
    # every node of the inventory to have one (bounded), then judge.
    deadline = time.monotonic() + 120
    while True:
        out = cp.run(f"{kubectl} get pods -l app=netcheck -o json")
        if out.rc != 0:
            run.error = f"kubectl get pods: {out.stderr.strip()}"
            return run
        # A pod bound to a Node that no longer exists is a stale object, not a network
        # fact: after a restore from a snapshot taken while podgc had not yet deleted a
        # removed node's pods, etcd still says they run. podgc deletes them later.
        nodes = cp.run(f"{ADMIN_KUBECTL} get nodes -o json")
        if nodes.rc != 0:
            run.error = f"kubectl get nodes: {nodes.stderr.strip()}"
            return run
        registered = node_readiness(json.loads(nodes.stdout))
        pods = [p for p in running_pods(json.loads(out.stdout)) if p.node in registered]
        # a NotReady node gets no Ready pod however long we wait (test_node_ready names it)
        awaited = kube_node_names(cluster) & {n for n, ready in registered.items() if ready}
        if awaited <= {p.node for p in pods} or time.monotonic() > deadline:
            break
        time.sleep(3)
    run.pods = {p.node: p for p in pods}
    out = cp.run(f"{kubectl} get service netcheck -o jsonpath={{.spec.clusterIP}}")
    run.cluster_ip = out.stdout.strip()
    if out.rc != 0 or not run.cluster_ip:
        run.error = f"kubectl get service netcheck: {out.stderr.strip()}"
        return run
    domain = cluster.get("provision_cluster_domain", "cluster.local")
    down = no_dns_server(host, cluster, other_host)
    plans = {p.node: (p, probes_from(p, pods, run.cluster_ip, cluster.kubernetes_service_ip,
                                     domain)) for p in pods}
    unasked: dict[str, list[str]] = {}
    if down:  # the probes that need DNS fail now, with the cause, instead of timing out
        for node, (pod, probes) in plans.items():
            unasked[node] = [f"from {pod} to {p.what}: {down}" for p in probes if p.needs_dns]
            plans[node] = (pod, [p for p in probes if not p.needs_dns])
    jobs = {node: sweep_argv(p, probes) for node, (p, probes) in plans.items()}
    out = cp.run(f"python3 -c {shlex.quote(PARALLEL)} {shlex.quote(json.dumps(jobs))}")
    try:
        answers = json.loads(out.stdout)
    except ValueError:
        run.error = f"running the sweeps: exit {out.rc}: {(out.stderr or out.stdout)[-500:]}"
        return run
    for node, (pod, probes) in plans.items():
        a = answers.get(node, {"rc": -1, "stdout": "", "stderr": "not run"})
        run.failures[node] = unasked.get(node, []) + \
            judge(pod, probes, a["rc"], a["stdout"], a["stderr"])
    run.seconds = round(time.monotonic() - started, 1)
    return run


def node_readiness(node_list: dict[str, Any]) -> dict[str, bool]:
    """Node name -> Ready, from a ``kubectl get nodes -o json`` answer."""
    return {n["metadata"]["name"]: any(c.get("type") == "Ready" and c.get("status") == "True"
                                       for c in n.get("status", {}).get("conditions", []))
            for n in node_list.get("items", [])}


def kube_node_names(cluster) -> set[str]:
    return {n["name"] for n in cluster.nodes if {"control-plane", "worker"} & set(n["roles"])}


@SWEEP
def test_netcheck_pod_on_every_node(host, cluster, other_host):
    """One Running, Ready netcheck pod on every Kubernetes node."""
    run = netcheck(host, cluster, other_host)
    assert not run.error, run.error
    want = kube_node_names(cluster)
    # nodes leaving in this run still run theirs until they are drained
    leaving = set(cluster.get("provision_leaving_nodes", []))
    assert want <= set(run.pods) <= want | leaving, \
        f"netcheck pods run on {sorted(run.pods)}, expected {sorted(want)}"


@SWEEP
def test_pod_reaches_other_nodes_service_and_dns(host, cluster, other_host):
    """From the netcheck pod on this node: every pod on every other node by pod IP,
    the netcheck Service by ClusterIP and by name, cluster DNS (the pod's resolv.conf)."""
    run = netcheck(host, cluster, other_host)
    assert not run.error, run.error
    me = cluster["node"]["name"]
    assert me in run.pods, f"no running netcheck pod on {me}"
    failures = run.failures.get(me, [])
    assert not failures, "\n".join(failures)


@SWEEP
def test_node_reaches_every_netcheck_pod_and_the_service(host, cluster, other_host):
    """From this node (host network): every other node's netcheck pod over the VXLAN,
    and the netcheck Service on its ClusterIP and on the address DNS gives its name."""
    run = netcheck(host, cluster, other_host)
    assert not run.error, run.error
    me = cluster["node"]["name"]
    failures = []
    for node, pod in sorted(run.pods.items()):
        if node == me:
            continue
        answer = host.run(f"curl -sS -m 3 --retry 2 --retry-connrefused "
                          f"http://{pod.ip}:{NETCHECK_PORT}/")
        if answer.rc != 0 or f'"node":"{node}"' not in answer.stdout:
            failures.append(f"from node {me} to {pod}: {answer.stderr.strip() or answer.stdout}")
    domain = cluster.get("provision_cluster_domain", "cluster.local")
    down = no_dns_server(host, cluster, other_host)
    resolved = down or resolve_through_cluster_dns(
        host, cluster, f"netcheck.{NETCHECK_NS}.svc.{domain}")
    if down:
        failures.append(f"from node {me}: {down}")
    elif resolved != run.cluster_ip:
        failures.append(f"from node {me}: cluster DNS gave {resolved} for the netcheck "
                        f"Service, its ClusterIP is {run.cluster_ip}")
    answer = host.run(f"curl -sS -m 3 --retry 2 http://{run.cluster_ip}/")
    if answer.rc != 0 or '"node":' not in answer.stdout:
        failures.append(f"from node {me} to Service netcheck by ClusterIP {run.cluster_ip}: "
                        f"{answer.stderr.strip() or answer.stdout}")
    assert not failures, "\n".join(failures)
