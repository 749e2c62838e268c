"""Benchmark the whole product: inventories/local.yaml to a verified HA cluster, then
day-2 commands on it. Prints JSON.

    python bench/cluster.py [-i inventories/local.yaml] [--keep] [--no-day2]

Runs on a warm artifact cache (it builds the set first if needed, outside the timing),
under another cluster name and loopback port so a `make up` cluster is never touched:
time per stage and in total, the peak memory the box used during the run (sampled
from /proc/meminfo every 0.5 s), the no-op re-run, and destroy. The box is shared and
noisy: these are figures to compare, not limits. Day 2 (issue 6's figures): add one
worker by raising the pool count, then replace cp-3 by cp-4 in one edit.
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
    """Wall time of each stage a run started (its report.json)."""
    report = json.loads((Path(summary.record_dir) / "report.json").read_text())  # type: ignore[attr-defined]
    return {s["name"]: round((s["finished"] or 0) - (s["started"] or 0), 1)
            for s in report["stages"] if s.get("started")}


def day2(inventory: Path, commands: object) -> dict[str, object]:
    """Add a worker (pool count 2 -> 3), then replace cp-3 by cp-4 in one edit."""
    out: dict[str, object] = {}
    text = inventory.read_text()
    steps = {
        "add_worker": text.replace("count: 2", "count: 3"),
        "replace_control_plane": text.replace("count: 2", "count: 3").replace(
            "  - name: cp-3\n", "  - name: cp-4\n").replace("10.250.0.13", "10.250.0.14"),
    }
    for name, edited in steps.items():
        inventory.write_text(edited)
        started = time.monotonic()
        summary = commands.up(inventory)  # type: ignore[attr-defined]
        out[f"{name}_seconds"] = round(time.monotonic() - started, 1)
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
        if not args.no_day2:
            result.update(day2(inventory, commands))
    finally:
        if not args.keep:
            started = time.monotonic()
            commands.destroy(inventory)
            result["destroy_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    ok = all(v == "ok" for k, v in result.items() if k.endswith("_status"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
