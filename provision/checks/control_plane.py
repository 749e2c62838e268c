"""control-plane stage: every API server ready (directly and through the VIP),
scheduler and controller-manager have leaders, certificates carry the right names."""

import json

from provision import nodefacts

KUBECTL = f"kubectl --kubeconfig {nodefacts.ADMIN_KUBECONFIG}"


def test_api_server_ready_on_this_node(host, cluster):
    port = cluster.get("provision_api_port", 6443)
    out = host.run(f"curl -sk --max-time 5 'https://{cluster['node']['address']}:{port}/readyz?verbose'")
    assert "readyz check passed" in out.stdout, out.stdout[-500:]


def test_api_ready_through_the_vip(host, cluster):
    out = host.run(f"curl -sk --max-time 5 'https://{cluster.api_endpoint}/readyz?verbose'")
    assert "readyz check passed" in out.stdout, out.stdout[-500:]


def test_api_server_binds_only_the_node_address(host, cluster):
    port = cluster.get("provision_api_port", 6443)
    sockets = host.run(f"ss -Hltnp 'sport = :{port}'").stdout
    assert f"{cluster['node']['address']}:{port}" in sockets
    assert f"*:{port}" not in sockets and f"0.0.0.0:{port}" not in sockets


def test_leaders_elected(host):
    for lease in ("kube-scheduler", "kube-controller-manager"):
        out = host.run(f"{KUBECTL} -n kube-system get lease {lease} -o json")
        assert out.rc == 0, out.stderr
        assert json.loads(out.stdout)["spec"].get("holderIdentity"), f"{lease} has no leader"


def test_certificate_names(host, cluster):
    sans = host.run(f"openssl x509 -in {nodefacts.KUBERNETES_PKI_DIR}/apiserver.crt"
                    " -noout -ext subjectAltName").stdout
    # Its own names: a certificate is made when its node joins, and nodes that join
    # later are not in the older ones (clients reach an API server by VIP or address).
    want = [cluster["provision_api_vip"], "127.0.0.1", cluster["node"]["name"],
            cluster["node"]["address"]]
    missing = [w for w in want if w not in sans]
    assert not missing, f"apiserver certificate lacks {missing}: {sans}"


def test_external_etcd(host, cluster):
    manifest = host.file(nodefacts.API_SERVER_MANIFEST).content_string
    for n in cluster.etcd_members:
        assert nodefacts.etcd_client_url(n["address"]) in manifest
    assert not host.file(f"{nodefacts.STATIC_POD_DIR}/etcd.yaml").exists


def test_node_registered(host, cluster):
    out = host.run(f"{KUBECTL} get node {cluster['node']['name']} -o json")
    assert out.rc == 0, out.stderr
    info = json.loads(out.stdout)["status"]["nodeInfo"]
    assert info["kubeletVersion"] == cluster["provision_kubernetes_version"]


def test_kubeadm_and_kubectl_are_the_pinned_release(host, cluster):
    """Built from Go modules, they must still say the real release (version ldflags)."""
    pinned = cluster["provision_kubernetes_version"]
    assert host.check_output("kubeadm version -o short") == pinned
    client = json.loads(host.check_output("kubectl version --client -o json"))
    assert client["clientVersion"]["gitVersion"] == pinned
