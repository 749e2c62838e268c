"""Benchmark bare metal under TCG: machines powered off with empty disks, through their
BMC emulators (tests/slow/metallab.py), to installed nodes answering SSH, then (with
``--join``) to Kubernetes workers. Prints JSON.

    sudo .venv/bin/python bench/metal.py [--join]

Per machine, from the boot server's own records (events/<node>.log and dnsmasq's
log): power-on to DHCP, to the installer loaded (initrd), the image written (from its
download to the seed), the installer's done, and the first boot from disk to SSH.
Then two machines at once (one Redfish, one IPMI): the ratio of their wall time to
one machine's shows the parallelism on this 2-core box. ``--join`` builds the cluster
of the slow tier (lab machine cp-1 + one pxe worker) with `provision up` and reports
power-on to the worker's Ready (the workers and network stages done): 15-25 minutes,
so `make bench` leaves it out. Everything is torn down, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "slow"))


def steps(events: list[str]) -> dict[str, float]:
    """First time of each step of the machine's last install."""
    out: dict[str, float] = {}
    for line in events:
        when, step = line.split()[:2]
        if step == "power-on":
            out = {}
        out.setdefault(step, float(when))
    return out


def install(bmcs: tuple[str, ...], cluster: str) -> dict[str, object]:
    from metallab import metal_lab

    from provision.inventory import load_inventory
    from provision.providers.machine import ensure_lab_bridge
    from provision.providers.registry import load
    from provision.report import say_nothing

    with tempfile.TemporaryDirectory(prefix="pvbench-metal-") as tmp, \
            metal_lab(Path(tmp), cluster, bmcs=bmcs) as ml:
        inv = load_inventory(ml.path)
        ensure_lab_bridge(inv)
        started = time.monotonic()
        load("pxe").ensure(inv, [n for n in inv.nodes if n.provider == "pxe"], say_nothing)
        wall = round(time.monotonic() - started, 1)
        out: dict[str, object] = {"wall_s": wall}
        for m in ml.machines:
            s = steps(ml.events(m.name))
            t0 = s["power-on"]
            out[m.name] = {"bmc": m.bmc,
                           **{f"{k}_s": round(v - t0, 1) for k, v in s.items()}}
        return out


def join(cluster: str) -> dict[str, object]:
    from metallab import metal_lab

    from provision import commands

    with tempfile.TemporaryDirectory(prefix="pvbench-metal-") as tmp, \
            metal_lab(Path(tmp), cluster, bmcs=("redfish",)) as ml:
        started = time.monotonic()
        summary = commands.up(ml.path)
        report = json.loads((Path(summary.record_dir) / "report.json").read_text())
        stages = {s["name"]: s for s in report["stages"]}
        s = steps(ml.events("metal-1"))
        ready_at = stages["network"]["finished"] if "network" in stages else None
        return {"status": summary.status, "up_s": round(time.monotonic() - started, 1),
                "stage_s": {k: v["duration"] for k, v in stages.items()},
                "power_on_to_ready_s": round(ready_at - s["power-on"], 1) if ready_at else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--join", action="store_true",
                    help="also time a pxe worker joining a cluster (15-25 min)")
    args = ap.parse_args()
    pid = os.getpid()
    result: dict[str, object] = {"accel": "tcg", "cpus_on_host": os.cpu_count()}
    result["one_machine"] = install(("redfish",), f"pvbm{pid}")
    result["two_machines"] = install(("redfish", "ipmi"), f"pvbm{pid}")
    one = result["one_machine"]["wall_s"]  # type: ignore[index]
    two = result["two_machines"]["wall_s"]  # type: ignore[index]
    result["two_to_one_ratio"] = round(two / one, 2)
    if args.join:
        result["join"] = join(f"pvbm{pid}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
