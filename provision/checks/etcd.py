"""etcd stage: every member healthy over TLS, membership equals the inventory,
plain-HTTP, certificate-less and foreign-CA clients refused, one leader, no alarm,
certificates in date, keys private."""

import json
import shlex
import textwrap

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


# What a client sees at a member's client port, asked from the node in one python3:
# "served <status line>" (an HTTP answer), "closed" (accepted, then closed without an
# answer), "alert <reason>" (TLS refused the request after verifying the server), or
# "handshake <reason>" / "connect <error>" (it never got that far). A refusal counts
# only when the server was there and verified: nothing listening is not a refusal.
PROBE = textwrap.dedent("""
    import socket, ssl, sys
    address, port, tls, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:6]
    try:
        s = socket.create_connection((address, port), timeout=3)
    except OSError as e:
        sys.exit(print("connect", e))
    if tls == "tls":
        ctx = ssl.create_default_context(cafile=sys.argv[6])
        if cert:
            ctx.load_cert_chain(cert, key)
        try:
            s = ctx.wrap_socket(s, server_hostname=address)
        except (ssl.SSLError, OSError) as e:
            sys.exit(print("handshake", e))
    try:
        s.sendall(b"GET /health HTTP/1.0\\r\\n\\r\\n")
        answer = s.recv(100)
    except ssl.SSLError as e:
        sys.exit(print("alert", e.reason or e))
    except OSError as e:
        sys.exit(print("closed", e))
    print("served " + answer.split(b"\\r\\n")[0].decode() if answer else "closed")
""")


def probe(host, cluster, tls: bool, cert: str = "", key: str = "") -> str:
    address = cluster["node"]["address"]
    args = [address, str(nodefacts.ETCD_CLIENT_PORT), "tls" if tls else "plain", cert, key,
            nodefacts.ETCD_CA_CERT]
    return host.run(f"python3 -c {shlex.quote(PROBE)} {shlex.join(args)}").stdout.strip()


def test_client_with_the_operator_certificate_served(host, cluster):
    """The control for the refusals below: the same probe with a good client gets an
    answer, so a refusal there is the member's doing, not the probe's."""
    answer = probe(host, cluster, tls=True, cert=nodefacts.ETCD_CLIENT_CERT,
                   key=nodefacts.ETCD_CLIENT_KEY)
    assert answer == "served HTTP/1.0 200 OK", answer


def test_plain_http_client_refused(host, cluster):
    answer = probe(host, cluster, tls=False)
    assert answer == "closed", f"a plain-HTTP client got: {answer}"


def test_client_without_certificate_refused(host, cluster):
    answer = probe(host, cluster, tls=True)
    assert answer.startswith("alert"), f"a client without a certificate got: {answer}"


def test_client_from_another_ca_refused(host, cluster):
    tmp = host.check_output("mktemp -d /tmp/provision-foreign-ca.XXXXXX")
    try:
        made = host.run(f"cd {tmp} && openssl req -x509 -newkey ec -pkeyopt "
                        "ec_paramgen_curve:prime256v1 -nodes -keyout k.pem -out c.pem "
                        "-subj /CN=intruder -days 1")
        assert made.rc == 0, f"openssl could not make a certificate: {made.stderr}"
        answer = probe(host, cluster, tls=True, cert=f"{tmp}/c.pem", key=f"{tmp}/k.pem")
        assert answer.startswith("alert"), f"a client of another CA got: {answer}"
    finally:
        host.run(f"rm -rf {tmp}")


def test_one_leader_and_no_alarm(host, cluster):
    """Every member names the same leader, which is a member; no alarm is raised
    (NOSPACE or CORRUPT make etcd refuse writes while it still answers health)."""
    out = etcdctl(host, "endpoint status -w json", cluster.etcd_members)
    assert out.rc == 0, out.stderr or out.stdout
    leaders = {s["Status"]["leader"] for s in json.loads(out.stdout)}
    # every member of the cluster, those leaving in this run too (one may lead)
    listed = etcdctl(host, "member list -w json", [cluster["node"]])
    assert listed.rc == 0, listed.stderr
    members = {m["ID"] for m in json.loads(listed.stdout)["members"]}
    assert len(leaders) == 1 and leaders <= members, \
        f"members disagree on the leader: {sorted(leaders)} (members {sorted(members)})"
    alarms = etcdctl(host, "alarm list", [cluster["node"]])
    assert alarms.rc == 0 and not alarms.stdout.strip(), alarms.stdout or alarms.stderr


def test_certificates_not_expired(host, expired_certificates):
    expired = expired_certificates(host, nodefacts.ETCD_PKI_DIR)
    assert not expired, f"expired: {expired}"


def test_private_keys_are_0600(host):
    keys = host.run(f"ls {nodefacts.ETCD_PKI_DIR}/*.key").stdout.split()
    assert keys
    for key in keys:
        f = host.file(key)
        assert f.mode == 0o600 and f.user == "etcd", key
