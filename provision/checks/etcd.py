"""etcd stage: every member healthy over TLS, membership equals the inventory,
plain-HTTP and foreign-CA clients refused, keys private."""

import json

import pytest

from provision import nodefacts


def etcdctl(host, args, nodes):
    endpoints = [nodefacts.etcd_client_url(n["address"]) for n in nodes]
    return host.run(f"{nodefacts.etcdctl(endpoints)} {args}")


def test_etcd_active(host):
    assert host.service("etcd").is_running
    assert host.service("etcd").is_enabled


def test_every_endpoint_healthy(host, cluster):
    out = etcdctl(host, "endpoint health -w json", cluster.etcd_members)
    assert out.rc == 0, out.stderr or out.stdout
    health = {e["endpoint"]: e["health"] for e in json.loads(out.stdout)}
    assert all(health.values()) and len(health) == len(cluster.etcd_members), health


def test_member_list_equals_inventory(host, cluster):
    out = etcdctl(host, "member list -w json", [cluster["node"]])
    assert out.rc == 0, out.stderr
    members = {m.get("name", ""): sorted(m["peerURLs"]) for m in json.loads(out.stdout)["members"]}
    want = {n["name"]: [nodefacts.etcd_peer_url(n["address"])] for n in cluster.etcd_members}
    # members of nodes leaving in this run go after the stages (provision/run/steps/membership.py)
    leaving = set(cluster.get("provision_leaving_nodes", []))
    assert {k: v for k, v in members.items() if k not in leaving or k in want} == want


def test_plain_http_client_refused(host, cluster):
    out = host.run(f"curl -s --max-time 3 "
                   f"http://{cluster['node']['address']}:{nodefacts.ETCD_CLIENT_PORT}/health")
    assert '"health":"true"' not in out.stdout and '"health": "true"' not in out.stdout


def test_client_without_certificate_refused(host, cluster):
    out = host.run(f"curl -s --max-time 3 --cacert {nodefacts.ETCD_CA_CERT} "
                   f"{nodefacts.etcd_client_url(cluster['node']['address'])}/health")
    assert out.rc != 0 or "true" not in out.stdout


def test_client_from_another_ca_refused(host, cluster):
    tmp = "/tmp/provision-foreign-ca"
    host.run(f"mkdir -p {tmp} && cd {tmp} && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout k.pem -out c.pem -subj /CN=intruder -days 1 2>/dev/null")
    try:
        if not host.file(f"{tmp}/c.pem").exists:
            pytest.skip("openssl is not installed on the node")
        out = host.run(f"curl -s --max-time 3 --cacert {nodefacts.ETCD_CA_CERT} --cert {tmp}/c.pem "
                       f"--key {tmp}/k.pem "
                       f"{nodefacts.etcd_client_url(cluster['node']['address'])}/health")
        assert out.rc != 0 or "true" not in out.stdout
    finally:
        host.run(f"rm -rf {tmp}")


def test_private_keys_are_0600(host):
    keys = host.run(f"ls {nodefacts.ETCD_PKI_DIR}/*.key").stdout.split()
    assert keys
    for key in keys:
        f = host.file(key)
        assert f.mode == 0o600 and f.user == "etcd", key
