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
