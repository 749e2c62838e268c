"""Benchmark the artifact build: cold and warm time, cache size. Prints JSON.

    python bench/artifacts.py                # warm: the default cache (builds it if cold)
    python bench/artifacts.py --cold         # also a cold build in a fresh, temporary
                                             # cache (Go modules, Go build cache and all)
    python bench/artifacts.py --cold --keep DIR   # cold cache in DIR, kept afterwards
    make bench BENCH_COLD=1                  # the same through make (env BENCH_COLD=1)

A cold build downloads every Go module and .deb and compiles everything: tens of
minutes on 2 cores, so it runs only when asked. Its result is also written to
bench/results/artifacts-cold.json, and a warm-only run reports that last cold
measurement (with when it was taken) under "cold", so `make bench` always shows
both times and the cache size. The warm build must stay under 30 s (issue 4).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision import paths  # noqa: E402
from provision.artifacts import build  # noqa: E402
from provision.artifacts.cache import Cache  # noqa: E402

COLD_RECORD = Path(__file__).resolve().parent / "results" / "artifacts-cold.json"


def du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def sizes() -> dict[str, int]:
    root = paths.cache_root()
    out = {
        "artifacts_bytes": du(root / "artifacts"),
        "go_mod_bytes": du(root / "go" / "mod"),
        "go_build_bytes": du(root / "go" / "build"),
    }
    out["total_bytes"] = sum(out.values())
    out["total_gib"] = round(out["total_bytes"] / 2**30, 2)
    return out


def timed(version: str | None) -> tuple[float, dict]:
    t = time.monotonic()
    aset = build(version, progress=lambda m: print(m, file=sys.stderr, flush=True))
    return round(time.monotonic() - t, 1), aset.timings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default=None)
    ap.add_argument("--cold", action="store_true",
                    default=os.environ.get("BENCH_COLD", "") not in ("", "0"))
    ap.add_argument("--keep", type=Path, default=None, help="cold cache directory to keep")
    args = ap.parse_args()
    result: dict = {"version": args.version or "default", "cache_root": str(paths.cache_root())}
    if args.cold:
        cold_dir = args.keep or Path(tempfile.mkdtemp(prefix="provision-bench-cold."))
        old = os.environ.get("PROVISION_CACHE_DIR")
        os.environ["PROVISION_CACHE_DIR"] = str(cold_dir)
        try:
            result["cold_seconds"], result["cold_steps"] = timed(args.version)
            result["cold_then_warm_seconds"], _ = timed(args.version)
            result["cold_cache"] = sizes()
            cold = {k: result[k] for k in ("cold_seconds", "cold_steps",
                                           "cold_then_warm_seconds", "cold_cache")}
            cold["measured_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            cold["loadavg_at_end"] = os.getloadavg()
            COLD_RECORD.parent.mkdir(parents=True, exist_ok=True)
            COLD_RECORD.write_text(json.dumps(cold, indent=1) + "\n")
        finally:
            if old is None:
                os.environ.pop("PROVISION_CACHE_DIR", None)
            else:
                os.environ["PROVISION_CACHE_DIR"] = old
            if args.keep is None:
                # Go's module cache is read-only on disk; make it removable first.
                for dirpath, dirs, _files in os.walk(cold_dir):
                    for d in dirs:
                        os.chmod(os.path.join(dirpath, d), 0o755)
                shutil.rmtree(cold_dir, ignore_errors=True)
    if not args.cold:
        result["cold"] = (json.loads(COLD_RECORD.read_text()) if COLD_RECORD.exists() else
                          {"measured": False,
                           "how": "python bench/artifacts.py --cold (tens of minutes)"})
    timed(args.version)  # make sure the default cache is complete
    result["warm_seconds"], result["warm_steps"] = timed(args.version)
    result["cache"] = sizes()
    result["artifacts_blob_bytes"] = du(Cache().blobs)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
