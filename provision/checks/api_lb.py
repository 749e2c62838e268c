"""api-lb stage: keepalived holds the API VIP on exactly one node, haproxy balances
TCP to every API server (VIP failover itself is exercised by the HA lab test)."""

import pytest


def test_services_active(host):
    for name in ("haproxy", "keepalived"):
        assert host.service(name).is_running, name
        assert host.service(name).is_enabled, name


def test_haproxy_listens_on_the_vip(host, cluster):
    sockets = host.run(f"ss -Hltn 'sport = :{cluster.get('provision_api_port', 6443)}'").stdout
    assert cluster.api_endpoint in sockets, sockets


def test_haproxy_has_every_api_server(host, cluster, haproxy_servers):
    """Exactly the control-plane nodes, each at its address and the API server's port
    (a server aimed at a wrong address is never UP, whatever its name says)."""
    port = cluster.get("provision_api_port", 6443)  # the VIP's port, on another address
    servers = {name: row.get("addr", "?") for name, row in haproxy_servers(host).items()}
    want = {n["name"]: f"{n['address']}:{port}" for n in cluster.with_role("control-plane")}
    assert servers == want, f"haproxy's API backend is {servers}, expected {want}"


def test_exactly_one_node_holds_the_vip(host, cluster, other_host):
    cps = cluster.with_role("control-plane")
    if cluster["node"]["name"] != cps[0]["name"]:
        pytest.skip("checked once, from the first control-plane node")
    vip = f" {cluster['provision_api_vip']}/"
    holders = [n["name"] for n in cps
               if vip in other_host(n["name"]).run("ip -o addr show").stdout]
    assert len(holders) == 1, f"VIP held by {holders or 'nobody'}"


def test_vip_reachable_from_this_node(host, cluster):
    """The VIP is reachable from every control-plane node (TCP connect to haproxy)."""
    vip, port = cluster["provision_api_vip"], cluster.get("provision_api_port", 6443)
    out = host.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{vip}/{port}'")
    assert out.rc == 0, f"cannot connect to {vip}:{port}"
