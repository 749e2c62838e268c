"""Benchmark the whole product: inventories/local.yaml to a verified HA cluster, then
day-2 commands on it. Prints JSON.

    python bench/cluster.py [-i inventories/local.yaml] [--keep] [--no-ha] [--no-day2]

Runs on a warm artifact cache (it builds the set first if needed, outside the timing),
under another cluster name and loopback port so a `make up` cluster is never touched:
time per stage and in total, the peak memory the box used during the run (sampled
from /proc/meminfo every 0.5 s), the no-op re-run, and destroy. The box is shared and
noisy: these are figures to compare, not limits. HA (issue 15's figures): the VIP
holder's hard crash, its API server's death and its partition, each under a writer
through the VIP (tests/lab/faults.py, tests/lab/apiwriter.py): the longest write gap
from the moment of the fault, and acknowledged writes lost (must be 0); the cluster is
verified whole again after each. Day 2 (issue 6's figures): add one worker by raising
the pool count, then replace cp-3 by cp-4 in one edit, under the writer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "lab"))  # the fault injector and the writer


class MemoryPeak:
    """Peak of MemTotal - MemAvailable while running, in MiB."""

    def __init__(self) -> None:
        self.peak = 0.0
        self.baseline = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _used() -> float:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
        return kib / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stage_seconds(summary: object) -> dict[str, float]:
    """Wall time of each stage a run started (its report.json): from its first start to
    its last end, so a stage that runs twice in one `up` (a replace converges the
    load balancers again after the new node joined) spans the work between."""
    report = json.loads((Path(summary.record_dir) / "report.json").read_text())  # type: ignore[attr-defined]
    return {s["name"]: round((s["finished"] or 0) - (s["started"] or 0), 1)
            for s in report["stages"] if s.get("started")}


def writer_figures(name: str, writer: object, since: float) -> dict[str, object]:
    """The writer's figures from ``since`` (the fault), then the writer closed."""
    try:
        lost = writer.lost()  # type: ignore[attr-defined]
        return {f"{name}_gap_seconds": round(writer.longest_gap(since), 1),  # type: ignore[attr-defined]
                f"{name}_writes": len(writer.writes),  # type: ignore[attr-defined]
                f"{name}_acknowledged": len(writer.acked()),  # type: ignore[attr-defined]
                f"{name}_lost": len(lost)}
    finally:
        writer.close()  # type: ignore[attr-defined]


def verified(inventory: Path, commands: object, timeout: float = 300) -> bool:
    """`verify` until it passes (a machine or a link takes a while to be whole)."""
    deadline = time.monotonic() + timeout
    while True:
        if commands.verify(inventory).status == "ok":  # type: ignore[attr-defined]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(10)


def ha(inventory: Path, commands: object) -> dict[str, object]:
    """Each fault of the VIP holder under the writer; the cluster verified after each."""
    from faults import FAULTS, vip_holder, writes_through_a_fault

    from provision.run.context import ClusterContext

    out: dict[str, object] = {}
    c = ClusterContext.open(inventory)
    for name, (inject, recover) in FAULTS.items():
        holder = vip_holder(c)
        try:
            writer, fault = writes_through_a_fault(c.paths.kubeconfig,
                                                   lambda: inject(c, holder))  # noqa: B023
            out.update(writer_figures(name, writer, fault))
        finally:
            recover(c, holder)
        out[f"{name}_status"] = "ok" if verified(inventory, commands) else "not whole again"
        if out[f"{name}_status"] != "ok":
            break
    return out


def day2(inventory: Path, commands: object) -> dict[str, object]:
    """Add a worker (pool count 2 -> 3), then replace cp-3 by cp-4 in one edit."""
    out: dict[str, object] = {}
    text = inventory.read_text()
    steps = {
        "add_worker": text.replace("count: 2", "count: 3"),
        "replace_control_plane": text.replace("count: 2", "count: 3").replace(
            "  - name: cp-3\n", "  - name: cp-4\n").replace("10.250.0.13", "10.250.0.14"),
    }
    from apiwriter import ApiWriter

    from provision.run.context import ClusterContext

    for name, edited in steps.items():
        inventory.write_text(edited)
        writer = ApiWriter(ClusterContext.open(inventory).paths.kubeconfig)
        writer.start()
        started = time.monotonic()
        try:
            summary = commands.up(inventory)  # type: ignore[attr-defined]
        finally:
            writer.stop()
        out[f"{name}_seconds"] = round(time.monotonic() - started, 1)
        out.update(writer_figures(f"{name}_writer", writer, started))
        out[f"{name}_status"] = summary.status
        out[f"{name}_stage_seconds"] = stage_seconds(summary)
        if summary.status != "ok":
            out[f"{name}_error"] = summary.error
            break
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-i", "--inventory", default=str(ROOT / "inventories/local.yaml"))
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--no-day2", action="store_true", help="skip add-worker and replace")
    ap.add_argument("--no-ha", action="store_true", help="skip the VIP holder's faults")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pvbench-"))
    os.environ["PROVISION_STATE_DIR"] = str(work / "state")
    from provision import commands
    from provision.artifacts import build
    from provision.inventory import load_inventory

    text = Path(args.inventory).read_text()
    inventory = work / "inventory.yaml"
    name = load_inventory(args.inventory).name
    inventory.write_text(text.replace(f"\nname: {name}\n", "\nname: pvbench\n")
                         .replace("apiForwardPort: 16443", "apiForwardPort: 16483"))
    build(load_inventory(inventory).kubernetes.version)  # warm cache, not timed

    result: dict[str, object] = {"inventory": args.inventory,
                                 "nodes": len(load_inventory(inventory).nodes)}
    try:
        with MemoryPeak() as mem:
            started = time.monotonic()
            summary = commands.up(inventory)
            result["up_seconds"] = round(time.monotonic() - started, 1)
        result["up_status"] = summary.status
        result["memory_baseline_mib"] = round(mem.baseline)
        result["memory_peak_mib"] = round(mem.peak)
        result["stage_seconds"] = stage_seconds(summary)
        started = time.monotonic()
        noop = commands.up(inventory)
        result["noop_up_seconds"] = round(time.monotonic() - started, 1)
        result["noop_stages"] = {s["name"]: s["status"] for s in noop.stages}
        commands.kubeconfig(inventory)  # the writer's way in: the loopback forward to the VIP
        if not args.no_ha:
            result.update(ha(inventory, commands))
        if not args.no_day2:
            result.update(day2(inventory, commands))
    finally:
        if not args.keep:
            started = time.monotonic()
            commands.destroy(inventory)
            result["destroy_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    ok = all(v == "ok" for k, v in result.items() if k.endswith("_status")) \
        and all(v == 0 for k, v in result.items() if k.endswith("_lost"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
