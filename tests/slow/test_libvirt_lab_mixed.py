"""A VM beside a lab machine on one lab subnet, driven by `provision up` itself.

The cluster's lab namespace ``pv-<cluster>`` holds a private libvirtd; the VM's NIC
joins the lab bridge ``br-lab`` (providers.libvirt: bridge br-lab, netns
pv-<cluster>), which the local provider's lab machine uses too. `provision up --until
machines` runs the machines stage for both providers, with its checks; the VM and
the lab machine reach each other over the lab bridge; `provision destroy`
removes both and leaves nothing. The fixture always tears everything down.
(Run with `--until os --nodes vm-1` too on 2026-11-23: passed; dropped to keep the
slow tier short, test_libvirt_vm.py proves the os stage on a VM.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from libvirtd_lab import LabLibvirtd

pytestmark = pytest.mark.slow

NET = "10.254.8"
PROVISION = str(Path(sys.executable).parent / "provision")


def inventory(cluster: str, lab: LabLibvirtd) -> str:
    return f"""\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: {cluster}
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: {NET}.10}}
network: {{subnet: {NET}.0/24}}
providers:
  local: {{apiForwardPort: 16461}}
  libvirt: {{uri: "{lab.uri}", pool: {lab.pool_name}, netns: pv-{cluster}, bridge: br-lab}}
nodes:
  - {{name: vm-1, roles: [worker], provider: libvirt, address: {NET}.21,
     machine: {{cpus: 1, memory: 1536Mi, disk: 5Gi}}}}
  - {{name: cp-1, roles: [control-plane], provider: local, address: {NET}.11,
     machine: {{cpus: 1, memory: 1536Mi}}}}
"""


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROVISION, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def mixed(slow_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from provision.lab import vmimage

    tmp = tmp_path_factory.mktemp("mixed")
    saved = {k: os.environ.get(k) for k in ("PROVISION_STATE_DIR", "PROVISION_LIBVIRT_ACCEL")}
    os.environ["PROVISION_STATE_DIR"] = str(tmp / "state")
    os.environ["PROVISION_LIBVIRT_ACCEL"] = "tcg"
    cluster = f"pvmx{os.getpid()}"
    lab = LabLibvirtd(f"pv-{cluster}")  # the cluster's lab namespace
    lab.clusters.append(cluster)
    path = tmp / "inventory.yaml"
    holder: Any = None
    try:
        vmimage.ensure_vm_image("debian-12")
        lab.start()
        path.write_text(inventory(cluster, lab))
        holder = type("Mixed", (), {"cluster": cluster, "lab": lab, "path": path, "tmp": tmp})
        yield holder
    finally:
        if path.exists() and not getattr(holder, "destroyed", False):
            proc = run("destroy", "-i", str(path), "--yes", timeout=300)
            if proc.returncode != 0:
                print("destroy during teardown failed:", proc.stdout, proc.stderr)
        lab.stop()
        from provision.lab.cleanup import sweep

        sweep(cluster)  # lab machine leftovers, if destroy failed
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_machines_stage_makes_both_on_one_subnet(mixed: Any) -> None:
    started = time.monotonic()
    proc = run("up", "-i", str(mixed.path), "--until", "machines")
    print(f"up --until machines: {time.monotonic() - started:.0f}s")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    # (The os stage on a VM is proven by test_libvirt_vm.py; on the lab machine it
    # needs the offline artifact mirror, which this test does not build.)
    # one subnet: the VM reaches the lab machine over br-lab, and back
    for node, peer in (("vm-1", f"{NET}.11"), ("cp-1", f"{NET}.21")):
        config = mixed.tmp / "state" / "clusters" / mixed.cluster / "ssh" / "config"
        ping = subprocess.run(["ssh", "-F", str(config), "-o", "ControlMaster=no", node,
                               f"ping -c 1 -W 5 {peer}"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert ping.returncode == 0, ping.stdout + ping.stderr


def test_destroy_removes_both(mixed: Any) -> None:
    from provision.lab import netns

    proc = run("destroy", "-i", str(mixed.path), "--yes", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mixed.destroyed = True
    # The VM went first (it is listed first); then the local provider removed the lab
    # namespace and ended every process in it, libvirtd included. So look at what
    # libvirtd keeps on disk: no domain definition, no volume but the base image.
    assert not list((mixed.lab.dir / "etc/libvirt/qemu").glob("*.xml"))
    assert sorted(p.name for p in (mixed.lab.dir / "pool").iterdir()
                  if not p.name.startswith("pv-base-")) == []
    assert not any(b"qemu-system" in p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline")
                   if _readable(p) and mixed.cluster.encode() in p.read_bytes())
    assert not netns.exists(f"pv-{mixed.cluster}")
    assert not netns.exists(f"pv-{mixed.cluster}-cp-1")
    from provision.lab.cleanup import leftovers

    assert leftovers(mixed.cluster) == []


def _readable(p: Path) -> bool:
    try:
        p.read_bytes()
        return True
    except OSError:
        return False
