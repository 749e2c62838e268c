"""machines stage: every node exists, answers over SSH and can be managed."""


def test_ssh_and_root(host):
    assert host.run("id -u").stdout.strip() == "0"


def test_systemd_is_running(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), f"systemd is {state!r}"


def test_python_for_ansible(host):
    assert host.run("python3 -c 'import apt_pkg' 2>/dev/null || python3 -V").rc == 0


def test_node_address_configured(host, cluster):
    addresses = host.run("ip -o addr show").stdout
    assert f" {cluster['node']['address']}/" in addresses


def test_gateway_route(host, cluster):
    """The default route goes through the inventory's gateway (the mirror and the
    cluster's own traffic leave that way)."""
    gateway = cluster["provision_gateway"]
    routes = host.run("ip -4 route show default").stdout.split()
    assert routes[1:3] == ["via", gateway], f"default route: {' '.join(routes) or 'none'}"
