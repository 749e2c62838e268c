"""Benchmark libvirt VMs under TCG: image build (cold, cached), one VM create-to-SSH,
reuse, destroy. Prints JSON.

    sudo .venv/bin/python bench/vm.py [--skip-cold] [--join]

``--join`` also builds the slow tier's cluster (tests/slow/vmcluster.py: lab machine
cp-1 + worker VM vm-1) with `provision up` and reports every stage, the VM's
create-to-SSH and its join to Ready (workers + network stages), then destroys it.
That takes 15-25 minutes here, so `make bench` leaves it out.

The cold build goes to a temporary cache (the shared image cache is never deleted).
The VM runs in a private libvirtd inside a network namespace this script creates
(tests/slow/libvirtd_lab.py), under a unique cluster name and a temporary state
directory; everything is torn down at the end, also on failure. TCG is forced: on
the build box KVM guests hang (FINDINGS). Needs root, libvirtd, qemu-system-x86.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "slow"))

INVENTORY = """\
apiVersion: provision.dev/v1alpha1
kind: Cluster
name: {name}
kubernetes: {{version: v1.37.2}}
controlPlane: {{virtualIP: 10.254.9.10}}
network: {{subnet: 10.254.9.0/24}}
providers:
  libvirt: {{uri: "{uri}", pool: {pool}, netns: {netns}}}
  static: {{}}
nodes:
  - {{name: vm-1, roles: [worker], provider: libvirt, address: 10.254.9.21,
     machine: {{cpus: 1, memory: 1Gi, disk: 5Gi}}}}
  - {{name: cp-1, roles: [control-plane], provider: static, address: 10.254.9.11}}
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-cold", action="store_true", help="do not measure a cold build")
    ap.add_argument("--join", action="store_true",
                    help="also time a VM joining a lab cluster as a worker (15-25 min)")
    args = ap.parse_args()
    os.environ["PROVISION_LIBVIRT_ACCEL"] = "tcg"

    from libvirtd_lab import LabLibvirtd

    from provision.inventory import parse_inventory
    from provision.lab import vmimage
    from provision.providers.base import say_nothing
    from provision.providers.libvirt import LibvirtProvider

    out: dict[str, object] = {"accel": "tcg", "cpus_on_host": os.cpu_count()}
    if not args.skip_cold:
        cold = Path(tempfile.mkdtemp(prefix="pv-bench-vmcache-"))
        saved = os.environ.get("PROVISION_CACHE_DIR")
        os.environ["PROVISION_CACHE_DIR"] = str(cold)
        try:
            started = time.monotonic()
            vmimage.ensure_vm_image("debian-12")
            out["image_build_cold_s"] = round(time.monotonic() - started, 1)
        finally:
            shutil.rmtree(cold, ignore_errors=True)
            if saved is None:
                os.environ.pop("PROVISION_CACHE_DIR", None)
            else:
                os.environ["PROVISION_CACHE_DIR"] = saved
    started = time.monotonic()
    img = vmimage.ensure_vm_image("debian-12", lambda m: print(m, file=sys.stderr))
    out["image_ready_s"] = round(time.monotonic() - started, 1)  # cached: ~0
    out["image_size_mib"] = img.disk.stat().st_size >> 20

    pid = os.getpid()
    lab = LabLibvirtd(f"pvlv{pid}")
    cluster = f"pvbench{pid}"
    lab.clusters.append(cluster)
    state = Path(tempfile.mkdtemp(prefix="pv-bench-vmstate-"))
    os.environ["PROVISION_STATE_DIR"] = str(state)
    p = LibvirtProvider()
    inv = None
    try:
        started = time.monotonic()
        lab.start()
        out["libvirtd_start_s"] = round(time.monotonic() - started, 1)
        s = lab.inventory()
        inv = parse_inventory(INVENTORY.format(name=cluster, uri=s["uri"], pool=s["pool"],
                                               netns=s["netns"]))
        vms = inv.nodes_for_provider("libvirt")
        vm_names = [n.name for n in vms]
        events: list[tuple[float, str]] = []
        started = time.monotonic()
        p.ensure(inv, vms, lambda _n, m: events.append((time.monotonic() - started, m)))
        out["vm_create_to_ssh_s"] = round(time.monotonic() - started, 1)
        out["vm_defined_s"] = round(next(t for t, m in events if m.startswith("starting")), 1)
        started = time.monotonic()
        p.ensure(inv, vms, say_nothing)
        out["vm_reuse_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        p.destroy(inv, vm_names)
        out["vm_destroy_s"] = round(time.monotonic() - started, 1)
        out["leftovers"] = lab.leftovers()
    finally:
        if inv is not None:
            try:
                p.destroy(inv, [n.name for n in inv.nodes_for_provider("libvirt")])
            except Exception as e:  # noqa: BLE001 - the lab teardown still runs
                print(f"destroy failed: {e}", file=sys.stderr)
        p.close()
        lab.stop()
        shutil.rmtree(state, ignore_errors=True)
    if args.join:
        out["join"] = join()
    print(json.dumps(out, indent=2))
    return 0


def join() -> dict[str, object]:
    """cp-1 (lab machine) + vm-1 (worker VM) through `provision up`; stage timings."""
    from vmcluster import vm_cluster

    from provision import commands

    base = Path(tempfile.mkdtemp(prefix="pv-bench-join-"))
    res: dict[str, object] = {}
    try:
        # pvvm<pid>: the slow tier's sweep removes it if this process dies
        with vm_cluster(base, f"pvvm{os.getpid()}") as vc:
            summary = commands.up(vc.path)
            vc.record_up(summary)
            res["status"] = summary.status
            if summary.status != "ok":
                res["error"] = summary.error
            else:
                commands.kubeconfig(vc.path)
                res["ready"] = vc.ready_nodes()
            started = time.monotonic()
            commands.destroy(vc.path)
            vc.destroyed = True
            vc.timings["destroy"] = round(time.monotonic() - started, 1)
            res.update(vc.timings)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
