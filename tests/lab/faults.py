"""Faults of the API virtual IP's holder on a live lab cluster, and a writer through
the VIP that measures each from the moment it is injected. Shared by the HA tests
(tests/lab/test_cluster.py, which assert) and the bench (bench/cluster.py, which
reports the figures).

Each fault is a pair: ``inject(c, node)`` breaks the node, ``recover(c, node)`` undoes
what the fault did (the cluster then heals by itself; callers wait until `verify`
passes):

* ``crash``: the machine's init SIGKILLed, no shutdown, no VRRP goodbye; recovered by
  the local provider stopping what is left and starting the machine again;
* ``api_server_death``: the API server's static pod manifest moved away and the process
  SIGKILLed; keepalived's check script gives the VIP up; recovered by putting the
  manifest back;
* ``partition``: the node's link down; recovered by setting it up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from apiwriter import ApiWriter

from provision.executors import ssh
from provision.lab import nspawn
from provision.names import node_object
from provision.providers.base import say_nothing
from provision.run.context import ClusterContext

MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
PARKED = "/etc/kubernetes/kube-apiserver.yaml.away"


def vip_holder(c: ClusterContext, skip: str = "") -> str:
    """The one control-plane node holding the VIP (``skip``: a node cut off or down)."""
    vip = str(c.inventory.control_plane.virtual_ip)
    holders = [n.name for n in c.inventory.control_plane_nodes if n.name != skip
               and f"inet {vip}/" in ssh.run_on_node(c.paths, n.name, "ip -4 -o addr",
                                                      timeout=20).stdout]
    if len(holders) != 1:
        raise AssertionError(f"exactly one node must hold the VIP, found {holders}")
    return holders[0]


def wait_for_vip_elsewhere(c: ClusterContext, holder: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(AssertionError):
            now = vip_holder(c, skip=holder)
            if now != holder:
                return now
        if time.monotonic() > deadline:
            raise AssertionError(f"the VIP did not leave {holder} within {timeout:.0f}s")
        time.sleep(1)


def writes_through_a_fault(kubeconfig: Path, inject: Callable[[], object],
                           after: float = 3.0) -> tuple[ApiWriter, float]:
    """Numbered writes through the VIP (apiwriter.py) from before ``inject()`` until
    ``after`` seconds of writes were acknowledged after it (or 90 s passed); returns
    the writer, stopped, and the moment of the fault (time.monotonic())."""
    writer = ApiWriter(kubeconfig)
    writer.start()
    try:
        time.sleep(2)
        if not writer.acked():
            raise AssertionError(f"no write acknowledged before the fault: {writer.writes[-1:]}")
        fault = time.monotonic()
        inject()
        deadline = fault + 90
        while time.monotonic() < deadline:
            resumed = [w.acked for w in writer.acked() if w.acked > fault]
            if resumed and resumed[-1] - resumed[0] >= after:
                break
            time.sleep(0.5)
    finally:
        writer.stop()
    return writer, fault


def _on(c: ClusterContext, node: str, script: str) -> None:
    proc = ssh.run_on_node(c.paths, node, script, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"{node}: {script!r} exited {proc.returncode}: {proc.stderr}")


def crash(c: ClusterContext, node: str) -> None:
    local = c.providers.get("local")
    os.kill(nspawn.leader(local.layout(c.inventory, node).pid()), signal.SIGKILL)


def recover_crash(c: ClusterContext, node: str) -> None:
    local = c.providers.get("local")
    local.stop(c.inventory, c.inventory.node(node))  # what the crash left mounted
    local.ensure(c.inventory, [c.inventory.node(node)], say_nothing)


def api_server_death(c: ClusterContext, node: str) -> None:
    _on(c, node, f"mv {MANIFEST} {PARKED} && pkill -9 -x kube-apiserver")


def recover_api_server_death(c: ClusterContext, node: str) -> None:
    _on(c, node, f"[ -f {MANIFEST} ] || mv {PARKED} {MANIFEST}")


def _link(c: ClusterContext, node: str, state: str) -> None:
    subprocess.run(["ip", "netns", "exec", node_object(c.inventory.name, node),
                    "ip", "link", "set", "eth0", state], check=True)


def partition(c: ClusterContext, node: str) -> None:
    _link(c, node, "down")


def recover_partition(c: ClusterContext, node: str) -> None:
    _link(c, node, "up")


Fault = Callable[[ClusterContext, str], None]
# name -> (inject, recover)
FAULTS: dict[str, tuple[Fault, Fault]] = {
    "crash": (crash, recover_crash),
    "api_server_death": (api_server_death, recover_api_server_death),
    "partition": (partition, recover_partition),
}
