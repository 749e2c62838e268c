"""Lab machines end to end: create, strict SSH, a runc container inside, stop/start
keeps the disk, destroy leaves nothing. One cluster for the module, in this order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from leaks import assert_no_leaks, find_leaks

from provision.errors import BadInput
from provision.lab import cgroups, mounts, netns
from provision.paths import cache_root
from provision.providers.base import Capability, Machine, MachineState, say_nothing

pytestmark = pytest.mark.lab

NODES = ["m-1", "m-2", "m-3"]


def test_check_finds_bad_settings_before_anything_exists(lab_cluster):
    from copy import deepcopy

    p, inv = lab_cluster.provider, lab_cluster.inv
    assert p.capabilities == {Capability.CREATE, Capability.POWER, Capability.SERVICES,
                              Capability.API_FORWARD}
    assert [str(x) for x in p.validate(inv, inv.nodes)] == []
    outside = inv.nodes[0].model_copy(update={"address": "10.99.0.5"})
    bad_image = deepcopy(inv)
    bad_image.spec.providers.local.image = "no-such-image"
    problems = p.validate(inv, [outside]) + p.validate(bad_image, inv.nodes[:1])
    text = "\n".join(str(x) for x in problems)
    assert "10.99.0.5 is not a host address of the lab subnet" in text
    assert "no image recipe named 'no-such-image'" in text
    with pytest.raises(BadInput):
        p.ensure(inv, [outside], say_nothing)
    assert find_leaks(lab_cluster.name, NODES) == []  # nothing was created


def test_create_three_machines_reachable_with_strict_ssh(lab_cluster):
    p, inv = lab_cluster.provider, lab_cluster.inv
    events = []
    started = time.monotonic()
    created = p.ensure(inv, inv.nodes, lambda node, msg: events.append((node, msg)))
    print(f"3 machines SSH-reachable in {time.monotonic() - started:.1f}s")
    assert created == set(NODES)  # none was running before
    assert p.observe(inv, NODES) == {n: MachineState.RUNNING for n in NODES}
    assert {n for n, m in events if m == "SSH reachable"} == set(NODES)

    config = lab_cluster.write_ssh_config().read_text()
    assert "StrictHostKeyChecking yes" in config
    first = inv.nodes[0]
    assert f"ProxyCommand {p.ssh_endpoint(inv, first.name, first.address).proxy_command}" \
        in config
    assert "provision.lab.nsproxy connect pv-" in config
    known = lab_cluster.paths.known_hosts.read_text().splitlines()
    assert sorted(line.split()[0] for line in known) == sorted(n.address for n in inv.nodes)
    assert oct(lab_cluster.paths.ssh_private_key.stat().st_mode & 0o777) == "0o600"

    cg = p.layout(inv, first.name).cgroup
    memory = Path("/sys/fs/cgroup/memory") / cg / "memory.limit_in_bytes"
    if memory.exists():  # cgroup v1 host: the inventory's limits are on the node's group
        assert int(memory.read_text()) == 768 * 2**20
        cpu = Path("/sys/fs/cgroup/cpu") / cg
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == int(
            (cpu / "cpu.cfs_period_us").read_text())

    for node in inv.nodes:
        # is-system-running exits 1 unless "running": the output says what it is
        out = lab_cluster.ssh(node.name, "hostname; ip -4 -o addr show eth0; "
                              "systemctl is-system-running --wait", check=False).stdout
        assert out.splitlines()[0] == node.name
        assert f"inet {node.address}/24" in out
        # "degraded" names no unit: the failed ones and their logs say which and why
        failed = "" if out.splitlines()[-1] == "running" else lab_cluster.ssh(
            node.name, "systemctl --failed --no-legend --plain; "
                       "journalctl -b --no-pager -p err -n 30", check=False).stdout
        assert out.splitlines()[-1] == "running", f"{out}\nfailed units and errors:\n{failed}"


def test_node_is_ready_for_containerd_and_kubelet(lab_cluster):
    """Plain binds for containerd and kubelet, writable cgroups with the kubelet's
    cgroupRoot, and no sysctl.d applied to the box's kernel at boot."""
    out = lab_cluster.ssh("m-1", "findmnt -n -o TARGET /var/lib/containerd; "
                          "findmnt -n -o TARGET /var/lib/kubelet; "
                          "test -d /sys/fs/cgroup/memory/kubelet && echo kubelet-cgroup; "
                          "mkdir /sys/fs/cgroup/pids/probe && rmdir /sys/fs/cgroup/pids/probe "
                          "&& echo cgroups-writable; "
                          "systemctl is-enabled systemd-sysctl.service || true").stdout.split()
    assert out == ["/var/lib/containerd", "/var/lib/kubelet", "kubelet-cgroup",
                   "cgroups-writable", "masked"], out


def test_ssh_refuses_a_wrong_host_key(lab_cluster):
    """Strictness is real: with another key recorded for m-2, ssh refuses."""
    kh = lab_cluster.paths.known_hosts
    saved = kh.read_text()
    other = next(ln for ln in saved.splitlines() if ln.startswith(lab_cluster.node("m-1").address))
    m2 = lab_cluster.node("m-2").address
    try:
        lines = [ln for ln in saved.splitlines() if not ln.startswith(m2 + " ")]
        kh.write_text("\n".join(lines + [f"{m2} {other.split(' ', 1)[1]}"]) + "\n")
        proc = lab_cluster.ssh("m-2", "true", check=False)
        assert proc.returncode != 0
        assert "HOST IDENTIFICATION HAS CHANGED" in proc.stderr or "host key" in proc.stderr
    finally:
        kh.write_text(saved)
    lab_cluster.ssh("m-2", "true")


def test_machines_stage_checks_pass(lab_cluster, tmp_path):
    from provision.run import verify

    verify.check_module("machines")  # the stage's checks exist (else BadInput)
    from provision.clustervars import global_vars

    inv = lab_cluster.inv
    context = global_vars(inv, {})  # what the engine gives every check
    lab_cluster.write_ssh_config()  # the checks use the cluster's one ssh config
    result = verify.run_checks(lab_cluster.paths, "machines", NODES, context,
                               tmp_path / "machines.xml", timeout=300)
    assert not result.error, result.error
    assert result.checks and result.failed_nodes() == set(), result.checks


def _download_deb(package: str) -> Path:
    debs = cache_root() / "lab-tests" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True,
                       capture_output=True, timeout=300)
        found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1]


def _copy_to_node(lab_cluster, node: str, src: Path, dest: str) -> None:
    with open(src, "rb") as f:
        proc = subprocess.run(
            ["ssh", "-F", str(lab_cluster.ssh_config), "-o", "ControlMaster=no", node,
             f"cat > {dest}"], stdin=f, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_runc_container_prints_from_inside_a_machine(lab_cluster):
    """Proves what later stages need: writable cgroups in the node and the keyring."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    assert os.path.exists(busybox), "busybox-static is a host package (make deps)"
    runc_deb = _download_deb("runc")
    _copy_to_node(lab_cluster, "m-1", runc_deb, "/tmp/runc.deb")
    lab_cluster.ssh("m-1", "dpkg -i /tmp/runc.deb >/tmp/dpkg.log 2>&1 || "
                    "{ cat /tmp/dpkg.log; exit 1; }", timeout=120)
    lab_cluster.ssh("m-1", "mkdir -p /srv/bundle/rootfs/bin /srv/bundle/rootfs/proc "
                    "/srv/bundle/rootfs/sys /srv/bundle/rootfs/dev /srv/bundle/rootfs/tmp")
    _copy_to_node(lab_cluster, "m-1", Path(busybox), "/srv/bundle/rootfs/bin/busybox")
    lab_cluster.ssh("m-1", "chmod 755 /srv/bundle/rootfs/bin/busybox && "
                    "ln -sf busybox /srv/bundle/rootfs/bin/sh && "
                    "cd /srv/bundle && rm -f config.json && runc spec")
    spec_text = lab_cluster.ssh("m-1", "cat /srv/bundle/config.json").stdout
    spec = json.loads(spec_text)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = [
        "/bin/sh", "-c",
        "echo hello-from-runc; echo cgroup: $(grep memory /proc/self/cgroup)"]
    spec_file = lab_cluster.paths.root / "config.json"
    spec_file.write_text(json.dumps(spec))
    _copy_to_node(lab_cluster, "m-1", spec_file, "/srv/bundle/config.json")
    out = lab_cluster.ssh("m-1", "cd /srv/bundle && runc run pvtest 2>&1", timeout=60).stdout
    print(out)
    assert "hello-from-runc" in out
    # The container's cgroup was created by runc inside the node's own sub-tree.
    assert "cgroup: " in out and "pvtest" in out


def test_stop_and_start_keeps_the_disk(lab_cluster):
    p, inv = lab_cluster.provider, lab_cluster.inv
    node = inv.node("m-2")
    lay = p.layout(inv, "m-2")
    lab_cluster.ssh("m-2", "echo kept-$(hostname) > /root/survivor && sync")
    p.stop(inv, node)
    assert p.observe(inv, ["m-2"]) == {"m-2": MachineState.STOPPED}
    # stopped = only the node's directory: no process, mount, namespace or cgroup
    assert not mounts.is_mounted(lay.root)
    assert not netns.exists(lay.netns)
    assert not cgroups.exists(lay.cgroup)
    assert (lay.upper / "root" / "survivor").read_text() == "kept-m-2\n"
    p.stop(inv, node)  # stopping a stopped machine is harmless

    p.start(inv, node)
    assert p.observe(inv, ["m-2"]) == {"m-2": MachineState.RUNNING}
    # same host key (strict SSH still passes), same file
    assert lab_cluster.ssh("m-2", "cat /root/survivor").stdout == "kept-m-2\n"


def test_ensure_again_reuses_running_machines(lab_cluster):
    p, inv = lab_cluster.provider, lab_cluster.inv
    before = {n: p.layout(inv, n).pid() for n in NODES}
    started = time.monotonic()
    assert p.ensure(inv, inv.nodes, say_nothing) == set()  # every one was running
    assert time.monotonic() - started < 20
    assert {n: p.layout(inv, n).pid() for n in NODES} == before


def test_api_forward_reaches_the_lab(lab_cluster):
    """127.0.0.1:<port> on the host reaches a service on the 'VIP' inside the lab."""
    p, inv = lab_cluster.provider, lab_cluster.inv
    # stand-in for the API: m-3 listens on the VIP's port with python3
    vip = str(inv.control_plane.virtual_ip)
    lab_cluster.ssh("m-3", f"ip addr add {vip}/24 dev eth0 && (nohup python3 -c \""
                    "import socket; s=socket.socket(); "
                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                    f"s.bind(('{vip}', 6443)); s.listen(); "
                    "c, _ = s.accept(); c.sendall(b'api-here'); c.close()\" "
                    ">/dev/null 2>&1 &)")
    from copy import deepcopy

    forwarded = deepcopy(inv)  # the inventory's apiForwardPort: a free one here
    forwarded.spec.providers.local.api_forward_port = _free_port()
    port = p.forward_api(forwarded)
    assert port == forwarded.providers.local.api_forward_port
    assert p.forward_api(forwarded) == port  # idempotent
    import socket

    deadline = time.monotonic() + 15
    data = b""
    while time.monotonic() < deadline and not data:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = s.recv(100)
        except OSError:
            time.sleep(0.3)
    assert data == b"api-here"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_destroy_leaves_nothing(lab_cluster):
    p, inv = lab_cluster.provider, lab_cluster.inv
    assert p.machines(inv) == {n.name: Machine(n.name, n.address, "local") for n in inv.nodes}
    assert p.observe(inv, ["m-1"]) == {"m-1": MachineState.RUNNING}
    started = time.monotonic()
    p.destroy(inv, NODES)
    print(f"destroy: {time.monotonic() - started:.1f}s")
    assert p.observe(inv, NODES) == {n: MachineState.MISSING for n in NODES}
    assert_no_leaks(lab_cluster.name, NODES)
    assert not lab_cluster.paths.machines_dir.exists()
    assert p.machines(inv) == {}
    assert lab_cluster.paths.known_hosts.read_text().strip() == ""
    p.destroy(inv, NODES)  # twice is harmless
    assert_no_leaks(lab_cluster.name, NODES)


def _lab_conftest(*names: str) -> list:
    """Names from this directory's conftest.py. `from conftest import` is ambiguous when
    pytest collects tests/lab and tests/slow together (both have a conftest module)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("lab_conftest_helpers",
                                                  Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return [getattr(module, n) for n in names]


def test_failed_ensure_is_cleaned_by_destroy(lab_host, tmp_path, monkeypatch):
    """A machine that never answers SSH in time: ensure fails (bounded), destroy cleans."""
    make_cluster_name, write_inventory = _lab_conftest("make_cluster_name", "write_inventory")

    from provision.errors import ProviderError
    from provision.inventory import load_inventory
    from provision.lab.cleanup import sweep
    from provision.providers.local import LocalProvider

    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    name = make_cluster_name()
    inv = load_inventory(write_inventory(tmp_path / "inv.yaml", name, 1, net="10.251.1"))
    provider = LocalProvider()
    provider.ssh_timeout = 0.0  # no time at all to answer SSH
    try:
        with pytest.raises(ProviderError, match="not reachable"):
            provider.ensure(inv, inv.nodes, say_nothing)
    finally:
        provider.destroy(inv, ["m-1"])
        assert_no_leaks(name, ["m-1"])
        sweep(name)


def test_sweep_removes_what_a_crashed_run_left(lab_host, tmp_path):
    """A process that created a machine and died without destroying it: the sweep that
    runs before lab tests (leftovers of dead owners) removes everything."""
    import sys

    PREFIX, _owner_alive = _lab_conftest("PREFIX", "_owner_alive")  # noqa: N806

    from provision.lab.cleanup import leftovers, sweep

    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
os.environ["PROVISION_STATE_DIR"] = {str(tmp_path / "state")!r}
from provision.inventory import load_inventory
from provision.providers.local import LocalProvider
name = "{PREFIX}%d-dead" % os.getpid()
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import write_inventory
inv = load_inventory(write_inventory(__import__("pathlib").Path({str(tmp_path)!r}) / "i.yaml",
                                     name, 1, net="10.251.2"))
LocalProvider().ensure(inv, inv.nodes, lambda _node, _message: None)
print(name, flush=True)
os._exit(0)  # "crash": no destroy
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.split()[-1]
    try:
        assert leftovers(name), "the crashed run should have left its machine running"
        assert not _owner_alive(name)
        removed = sweep(PREFIX, keep=_owner_alive)
        assert any(name in r for r in removed)
        assert_no_leaks(name, ["m-1"])
    finally:
        sweep(name)
