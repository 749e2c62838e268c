"""os stage: hostname, kernel modules, sysctls, swap off, time sync."""

import time

import pytest

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_nonlocal_bind": "1",
}


def test_hostname(host, cluster):
    name = host.run("hostname").stdout.strip()
    assert name == cluster["node"]["name"], f"the hostname is {name!r}"


MODULE_PROBES = {
    # loaded or built in (a built-in module without parameters has no /sys/module entry)
    "overlay": "grep -qw overlay /proc/filesystems",
    "br_netfilter": "test -e /proc/sys/net/bridge/bridge-nf-call-iptables",
}


@pytest.mark.parametrize("module", sorted(MODULE_PROBES))
def test_kernel_module(host, module):
    assert host.run(MODULE_PROBES[module]).rc == 0, f"{module} is not available"


@pytest.mark.parametrize("key,value", sorted(SYSCTLS.items()))
def test_sysctl(host, key, value):
    assert host.run(f"sysctl -n {key}").stdout.strip() == value


def test_swap_off(host):
    assert host.run("swapon --show --noheadings").stdout.strip() == ""


CLOCK_TOLERANCE = 5.0  # seconds (leases allow 15 s; TCG guests drift a little)


def test_clock_agrees_with_the_provisioner(host):
    """Certificates, bootstrap tokens and leases are judged by the clock: a node off by
    more than seconds sees valid ones as expired or stale leases as live."""
    before = time.time()
    remote = float(host.check_output("date +%s.%N"))
    after = time.time()
    # the node read its clock between our two readings, give or take the tolerance
    assert before - CLOCK_TOLERANCE <= remote <= after + CLOCK_TOLERANCE, \
        f"the node's clock is {remote - after:+.1f} s off the provisioner's"


def test_time_synchronised(host, in_container):
    if in_container:
        pytest.skip("a lab machine shares the host's clock (the offset is checked above)")
    out = host.run("timedatectl show -p NTPSynchronized --value").stdout.strip()
    assert out == "yes" or host.run("chronyc -n tracking").rc == 0


def test_apt_points_at_the_mirror(host, cluster):
    mirror = cluster.get("provision_mirror_url")
    if not mirror:
        pytest.skip("no artifact mirror in the variables (roles run without provision)")
    assert mirror in host.file("/etc/apt/sources.list.d/provision.list").content_string


def test_lab_machine_kernel_settings_are_shadowed(host, in_container):
    """The kubelet must read, never write, the box's kernel.*/vm.* values."""
    if not in_container:
        pytest.skip("real host")
    for key in ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "vm/panic_on_oom"):
        shadowed = host.run(f"mountpoint -q /proc/sys/{key}").rc == 0
        assert shadowed, f"/proc/sys/{key} is not shadowed"
    assert host.run("sysctl -n vm.overcommit_memory").stdout.strip() == "1"
