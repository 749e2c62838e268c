"""python -m provision.artifacts build|status [--version V] [--source S] [--update-lock]
python -m provision.artifacts fetch-upstream|pin-upstream [--version V] [--base-url URL]

A stand-in until the lead wires `provision artifacts build|status` into the CLI."""

from __future__ import annotations

import argparse
import json
import sys
import time

from provision.artifacts import build, status
from provision.artifacts.assemble import SOURCES
from provision.errors import ProvisionError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m provision.artifacts")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--update-lock", action="store_true")
    s = sub.add_parser("status")
    s.add_argument("--json", action="store_true")
    for p in (b, s):
        p.add_argument("--version", default=None)
        p.add_argument("--source", choices=SOURCES, default="offline",
                       help="the inventory's artifacts.source (upstream: online mode)")
    for name, what in (("fetch-upstream", "download the official files (online mode)"),
                       ("pin-upstream", "write the official sha256 files into the lock")):
        u = sub.add_parser(name, help=what)
        u.add_argument("--version", default=None)
        u.add_argument("--base-url", default=None,
                       help="instead of https://dl.k8s.io (also $PROVISION_UPSTREAM_URL)")
    args = ap.parse_args(argv)
    try:
        if args.cmd in ("fetch-upstream", "pin-upstream"):
            from provision.artifacts import upstream

            say = lambda m: print(m, flush=True)  # noqa: E731
            if args.cmd == "pin-upstream":
                upstream.pin(args.version, say, base_url=args.base_url)
            else:
                for name, path in upstream.fetch(args.version, say,
                                                 base_url=args.base_url).items():
                    print(f"{name} {path}")
        elif args.cmd == "build":
            t0 = time.monotonic()
            aset = build(args.version, progress=lambda m: print(m, flush=True),
                         source=args.source, update_lock=args.update_lock)
            print(json.dumps({"kubernetes": aset.kubernetes, "artifacts": len(aset.artifacts),
                              "images": aset.images, "timings": aset.timings,
                              "seconds": round(time.monotonic() - t0, 1)}, indent=1))
        else:
            rows = status(args.version, source=args.source)
            if args.json:
                print(json.dumps([r.__dict__ for r in rows], indent=1))
            else:
                for r in rows:
                    mark = "present" if r.present else "MISSING"
                    print(f"{mark:8} {r.kind:6} {r.name:60} {r.version:28} {r.sha256[:12]}")
            return 0 if all(r.present for r in rows) else 1
    except ProvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
