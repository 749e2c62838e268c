"""network stage: flannel on every node, routes to every other node's pod subnet,
node Ready, and a ClusterIP Service (cluster DNS) answering from every node."""

import json
import shlex
import textwrap


def test_flannel_running_here(host):
    out = host.run("crictl ps --name kube-flannel --state running -q")
    assert out.stdout.strip(), "no running kube-flannel container on this node"


def test_vxlan_device(host):
    out = host.run("ip -d link show flannel.1")
    assert out.rc == 0 and "vxlan" in out.stdout, out.stdout


def test_routes_to_every_other_node(host, cluster):
    routes = [r for r in host.run("ip -4 route show dev flannel.1").stdout.splitlines() if r]
    others = [n for n in cluster.nodes
              if {"control-plane", "worker"} & set(n["roles"])
              and n["name"] != cluster["node"]["name"]]
    assert len(routes) == len(others), routes


def test_node_ready(host, cluster):
    out = host.run("kubectl --kubeconfig /etc/kubernetes/kubelet.conf"
                   f" get node {cluster['node']['name']} -o json")
    assert out.rc == 0, out.stderr
    ready = {c["type"]: c["status"] for c in json.loads(out.stdout)["status"]["conditions"]}
    assert ready["Ready"] == "True"


def test_cluster_dns_through_the_service_ip(host, cluster):
    """kube-proxy DNAT on this node -> a CoreDNS pod (often on another node, so over
    the VXLAN) -> the answer for kubernetes.default: Service, pod network and DNS."""
    name = f"kubernetes.default.svc.{cluster.get('provision_cluster_domain', 'cluster.local')}"
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
    assert out.stdout.strip() == cluster.kubernetes_service_ip, out.stdout + out.stderr


NETCHECK_NS = "provision-netcheck"  # roles/cni: cni_netcheck_namespace


def test_pods_reach_each_other_the_service_and_dns(host, cluster):
    """From the netcheck pod on every node: every other node's pod by IP (pod-to-pod
    across nodes over the VXLAN), and the netcheck Service by its DNS name (cluster
    DNS + ClusterIP). Asked once, from the first control-plane node (kubectl exec)."""
    first = cluster.with_role("control-plane")[0]["name"]
    if cluster["node"]["name"] != first:
        return  # the cluster-wide part runs from one node; the per-node checks above ran
    kubectl = f"kubectl --kubeconfig /etc/kubernetes/admin.conf -n {NETCHECK_NS}"
    out = host.run(f"{kubectl} get pods -l app=netcheck -o json")
    assert out.rc == 0, out.stderr
    pods = {p["spec"]["nodeName"]: (p["metadata"]["name"], p["status"].get("podIP"))
            for p in json.loads(out.stdout)["items"] if p["status"].get("phase") == "Running"}
    kube_nodes = {n["name"] for n in cluster.nodes
                  if {"control-plane", "worker"} & set(n["roles"])}
    assert set(pods) == kube_nodes, f"netcheck pods run on {sorted(pods)}"
    domain = cluster.get("provision_cluster_domain", "cluster.local")
    service = f"netcheck.{NETCHECK_NS}.svc.{domain}"
    out = host.run(f"{kubectl} get service netcheck -o jsonpath={{.spec.clusterIP}}")
    cluster_ip = out.stdout.strip()
    assert out.rc == 0 and cluster_ip, out.stderr
    for node, (pod, _ip) in sorted(pods.items()):
        targets = " ".join(f"{ip}:8080" for other, (_p, ip) in pods.items() if other != node)
        # busybox's own resolver asks the pod's nameserver (cluster DNS), then HTTP to
        # the address it got: the Service's ClusterIP, DNAT'ed by kube-proxy to a pod.
        script = (
            f"for t in {targets}; do printf '%s=' $t; "
            "/bin/busybox wget -q -T 3 -O - http://$t/ || echo FAIL; done; "
            f"ip=$(/bin/busybox nslookup {service} 2>/dev/null | "
            "/bin/busybox sed -n '/:53$/d; s/^Address:[[:space:]]*//p' | "
            "/bin/busybox tail -n 1); "
            "printf 'resolved=%s\\n' \"$ip\"; printf 'service='; "
            "/bin/busybox wget -q -T 3 -O - http://$ip/ || echo FAIL"
        )
        out = host.run(f"{kubectl} exec {pod} -- /bin/sh -c {shlex.quote(script)}")
        assert out.rc == 0, out.stderr
        answers = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        for other, (_p, ip) in pods.items():
            if other != node:
                assert answers.get(f"{ip}:8080") == other, f"{node} -> {other}: {answers}"
        assert answers.get("resolved") == cluster_ip, f"{node}: DNS said {answers}"
        assert answers.get("service") in kube_nodes, f"{node} -> Service: {answers}"
