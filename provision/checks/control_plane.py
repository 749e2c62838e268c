"""control-plane stage: every API server ready and serving the cluster CA's certificate
(directly and through the VIP), the node labelled and tainted as a control-plane node,
scheduler and controller-manager running here with live leaders, haproxy seeing every
API server up, certificates carrying the right names and not expired, Secrets
encrypted at rest, requests audited."""

import base64
import json
import shlex
import time
from datetime import datetime

from provision import nodefacts
from provision.pki import ENCRYPTION_PREFIX

KUBECTL = f"kubectl --kubeconfig {nodefacts.ADMIN_KUBECONFIG}"
CA = f"{nodefacts.KUBERNETES_PKI_DIR}/ca.crt"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"


def readyz(host, address: str) -> str:
    """The API server's verbose readyz at ``address``, its certificate verified
    against the cluster CA (a server with another certificate fails the handshake)."""
    out = host.run(f"curl -sS --fail --max-time 5 --cacert {CA} 'https://{address}/readyz?verbose'")
    return out.stdout if out.rc == 0 else f"curl exit {out.rc}: {out.stderr.strip()}"


def test_api_server_ready_on_this_node(host, cluster):
    port = cluster.get("provision_api_port", 6443)
    out = readyz(host, f"{cluster['node']['address']}:{port}")
    assert "readyz check passed" in out, out[-500:]


def test_api_ready_through_the_vip(host, cluster):
    out = readyz(host, cluster.api_endpoint)
    assert "readyz check passed" in out, out[-500:]


def test_api_server_binds_only_the_node_address(host, cluster):
    port = cluster.get("provision_api_port", 6443)
    sockets = host.run(f"ss -Hltnp 'sport = :{port}'").stdout
    assert f"{cluster['node']['address']}:{port}" in sockets
    assert f"*:{port}" not in sockets and f"0.0.0.0:{port}" not in sockets


def test_labelled_and_tainted_as_control_plane(host, cluster):
    """kubeadm marks a node last in init or join: without the label and the NoSchedule
    taint the node is half-joined (or someone untainted it and workloads land there)."""
    out = host.run(f"{KUBECTL} get node {cluster['node']['name']} -o json")
    assert out.rc == 0, out.stderr
    node = json.loads(out.stdout)
    assert CONTROL_PLANE in node["metadata"].get("labels", {}), "no control-plane label"
    taints = {(t["key"], t.get("effect")) for t in node["spec"].get("taints", [])}
    assert (CONTROL_PLANE, "NoSchedule") in taints, f"no control-plane taint: {taints}"


def test_control_plane_components_run_here(host):
    for name in ("kube-apiserver", "kube-scheduler", "kube-controller-manager"):
        out = host.run(f"crictl ps --name '^{name}$' --state running -q")
        assert out.rc == 0 and out.stdout.strip(), f"{name} is not running on this node"


def test_leaders_hold_live_leases(host, cluster):
    """The scheduler and controller-manager leaders are control-plane nodes that renewed
    their lease within its duration: a stale lease names a leader that is gone."""
    # a node leaving in this run still runs its control plane until after the stages
    cps = {n["name"] for n in cluster.with_role("control-plane")} \
        | set(cluster.get("provision_leaving_nodes", []))
    now = float(host.check_output("date +%s.%N"))
    for lease in ("kube-scheduler", "kube-controller-manager"):
        out = host.run(f"{KUBECTL} -n kube-system get lease {lease} -o json")
        assert out.rc == 0, out.stderr
        spec = json.loads(out.stdout)["spec"]
        holder = spec.get("holderIdentity", "").split("_", 1)[0]
        assert holder in cps, f"{lease} leader {holder!r} is not a control-plane node"
        renewed = datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00"))
        age = now - renewed.timestamp()
        limit = spec.get("leaseDurationSeconds", 15) + 5
        assert age <= limit, f"{lease} lease of {holder} last renewed {age:.0f} s ago"


HAPROXY_UP_WAIT = 20  # haproxy checks every 2 s and needs 2 successes (roles/api_lb)


def test_haproxy_sees_every_api_server_up(host, cluster, haproxy_servers):
    """Each API server passes haproxy's readyz check from this node (a backend that is
    configured but DOWN gets no traffic: the VIP would serve from fewer nodes)."""
    port = cluster.get("provision_api_port", 6443)
    wanted = {n["name"]: f"{n['address']}:{port}" for n in cluster.with_role("control-plane")}
    deadline = time.monotonic() + HAPROXY_UP_WAIT
    while True:
        servers = haproxy_servers(host)
        down = {name: servers.get(name, {}).get("status", "absent") for name in wanted
                if servers.get(name, {}).get("status") != "UP"}
        # a server missing or aimed elsewhere never comes UP as this one: no waiting
        # (test_haproxy_has_every_api_server of api-lb names the configuration)
        wrong = {name: servers.get(name, {}).get("addr", "absent") for name in down
                 if servers.get(name, {}).get("addr") != wanted[name]}
        if not down or wrong or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not down, f"haproxy here sees API servers not UP: {down}" + \
        (f"; configured at {wrong}, not at the API servers" if wrong else "")


def subject_alt_names(host, cert: str) -> set[str]:
    """``{"DNS:cp-1", "IP:10.0.0.1", ...}`` of a certificate, each name whole."""
    text = host.run(f"openssl x509 -in {cert} -noout -ext subjectAltName").stdout
    names = set()
    for line in text.splitlines()[1:]:
        for entry in line.split(","):
            kind, _, value = entry.strip().partition(":")
            names.add(f"{'IP' if kind == 'IP Address' else kind}:{value}")
    return names


def test_certificate_names(host, cluster):
    # Its own names: a certificate is made when its node joins, and nodes that join
    # later are not in the older ones (clients reach an API server by VIP or address).
    sans = subject_alt_names(host, f"{nodefacts.KUBERNETES_PKI_DIR}/apiserver.crt")
    want = {f"IP:{cluster['provision_api_vip']}", "IP:127.0.0.1",
            f"IP:{cluster['node']['address']}", f"DNS:{cluster['node']['name']}"}
    assert want <= sans, f"apiserver certificate lacks {sorted(want - sans)}: {sorted(sans)}"


def test_certificates_not_expired(host, expired_certificates):
    expired = expired_certificates(host, nodefacts.KUBERNETES_PKI_DIR)
    assert not expired, f"expired: {expired}"


def test_external_etcd(host, cluster):
    manifest = host.file(nodefacts.API_SERVER_MANIFEST).content_string
    for n in cluster.etcd_members:
        assert nodefacts.etcd_client_url(n["address"]) in manifest
    assert not host.file(f"{nodefacts.STATIC_POD_DIR}/etcd.yaml").exists


def etcd_value(host, members: list[dict], key: str) -> bytes:
    """The raw value of ``key`` in etcd, as the API server stored it, read over etcd's
    JSON gateway with the API server's own client certificate (a control-plane node
    need not be an etcd member, nor have etcdctl); from the first member that answers."""
    pki = nodefacts.KUBERNETES_PKI_DIR  # the file names are kubeadm's for external etcd
    body = shlex.quote(json.dumps({"key": base64.b64encode(key.encode()).decode()}))
    errors = []
    for member in members:
        out = host.run(f"curl -sS --fail --max-time 5 --cacert {pki}/etcd/ca.crt "
                       f"--cert {pki}/apiserver-etcd-client.crt "
                       f"--key {pki}/apiserver-etcd-client.key "
                       f"{nodefacts.etcd_client_url(member['address'])}/v3/kv/range -d {body}")
        if out.rc == 0:
            kvs = json.loads(out.stdout).get("kvs", [])
            assert kvs, f"{key} not in etcd"
            return base64.b64decode(kvs[0]["value"])
        errors.append(f"{member['name']}: {out.stderr.strip()}")
    raise AssertionError(f"no etcd member answers: {'; '.join(errors)}")


def kubectl_here(cluster) -> str:
    """kubectl with the admin credentials, to this node's own API server."""
    return (f"{KUBECTL} --server https://{cluster['node']['address']}:"
            f"{cluster.get('provision_api_port', 6443)} -n kube-system")


def test_secrets_encrypted_at_rest(host, cluster):
    """A Secret written through this node's API server is stored in etcd encrypted with
    the cluster's key (provision/pki.py): an API server started without its encryption
    configuration stores Secrets in plain text."""
    kubectl = kubectl_here(cluster)
    name = f"provision-check-{cluster['node']['name']}"
    host.run(f"{kubectl} delete secret {name} --ignore-not-found")
    out = host.run(f"{kubectl} create secret generic {name} --from-literal=probe=check")
    assert out.rc == 0, out.stderr
    try:
        raw = etcd_value(host, cluster.etcd_members, f"/registry/secrets/kube-system/{name}")
        assert raw.startswith(ENCRYPTION_PREFIX.encode()), (
            f"stored unencrypted (it starts {raw[:12]!r}): is the API server's "
            "--encryption-provider-config in place?")
    finally:
        host.run(f"{kubectl} delete secret {name} --ignore-not-found")


def test_requests_are_audited(host, cluster):
    """A request to this node's API server is in its audit log (the policy keeps reads
    of ConfigMaps as metadata): an API server without --audit-log-path logs nothing."""
    probe = f"provision-audit-probe-{time.time_ns()}"
    out = host.run(f"{kubectl_here(cluster)} get configmap {probe}")
    assert "NotFound" in out.stderr, out.stderr  # asked and answered, so audited
    needle = shlex.quote(f'"name":"{probe}"')
    for _ in range(10):  # the log backend writes each event as it is answered
        if host.run(f"grep -qF {needle} {nodefacts.API_AUDIT_LOG}").rc == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the request for configmap {probe} is not in "
                         f"{nodefacts.API_AUDIT_LOG}: is --audit-log-path in place?")


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


def test_kubelet_kubeadm_kubectl_are_the_pinned_files(host, files_not_as_pinned):
    wrong = files_not_as_pinned(host, ["bin/kubelet", "bin/kubeadm", "bin/kubectl"])
    assert not wrong, "; ".join(wrong)
