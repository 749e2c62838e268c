"""Benchmark lab machines: image build (cold, reuse), 5 nodes to SSH, destroy. Prints JSON.

    sudo .venv/bin/python bench/machines.py [-i inventories/local.yaml] [--skip-cold]

The cold build goes to a temporary cache (the shared image cache is never deleted);
the cluster is the inventory's nodes under a unique name and a temporary state
directory, so a running `local` cluster is not touched. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _timed(fn):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    fn()
    return round(time.monotonic() - started, 2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-i", "--inventory", default=str(REPO / "inventories" / "local.yaml"))
    ap.add_argument("--skip-cold", action="store_true", help="do not measure a cold build")
    args = ap.parse_args()

    from provision.lab import image
    from provision.lab.cleanup import leftovers, sweep

    result: dict[str, object] = {"host_cpus": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    try:
        img = "debian-12"
        if not args.skip_cold:
            os.environ["PROVISION_CACHE_DIR"] = str(work / "cache")
            result["image_build_cold_s"] = _timed(lambda: image.ensure_image(img))
            du = sum(f.stat().st_size for f in image.find_recipe(img).rootfs.rglob("*")
                     if f.is_file() and not f.is_symlink())
            result["image_size_mb"] = round(du / 2**20)
            shutil.rmtree(work / "cache", ignore_errors=True)
            del os.environ["PROVISION_CACHE_DIR"]
        image.ensure_image(img)  # the shared cache, built once if needed
        result["image_reuse_s"] = _timed(lambda: image.ensure_image(img))

        from provision.inventory import load_inventory
        from provision.providers.base import say_nothing
        from provision.providers.registry import load

        name = f"pvbench-{os.getpid()}"
        text = re.sub(r"(?m)^name:.*$", f"name: {name}", Path(args.inventory).read_text())
        (work / "inventory.yaml").write_text(text)
        os.environ["PROVISION_STATE_DIR"] = str(work / "state")
        inv = load_inventory(work / "inventory.yaml")
        local = inv.nodes_for_provider("local")
        names = [n.name for n in local]
        provider = load("local")
        result["nodes"] = len(local)
        try:
            result["nodes_ssh_reachable_s"] = _timed(
                lambda: provider.ensure(inv, local, say_nothing))
            result["ensure_again_s"] = _timed(lambda: provider.ensure(inv, local, say_nothing))
            node = local[-1]
            result["stop_one_s"] = _timed(lambda: provider.stop(inv, node))
            result["start_one_to_ssh_s"] = _timed(lambda: provider.start(inv, node))
            result["destroy_s"] = _timed(lambda: provider.destroy(inv, names))
            result["leftovers"] = leftovers(name)
        finally:
            provider.destroy(inv, names)
            sweep(name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
