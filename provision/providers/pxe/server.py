"""The boot HTTP server: iPXE scripts, the installer, the node image and the install
callbacks, for one cluster's bare-metal machines (provision/providers/pxe/boot.py
describes the files it reads and writes).

    python -m provision.providers.pxe.server --root DIR --image DIR --address A --port P

Runs detached beside dnsmasq (the provider starts both, in the provisioning network's
namespace when there is one). Everything of one install is reached through its token
(``/install/<token>/...``), a random 192-bit value only that machine's iPXE script
names; a token is gone once its machine reported, so the seed (which holds the node's
SSH host key) is served during the install only. Every request is appended to the
node's ``events/<node>.log``: the provider reports the last step a machine reached.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from provision.providers.pxe.boot import BootServer, Record, boot_script, node_script

IMAGE_FILES = ("vmlinuz", "installer.img", "root.img.zst")
SEED_FILES = ("meta-data", "user-data", "network-config")
MAX_UPLOAD = 4 << 20  # an installer log


class Handler(BaseHTTPRequestHandler):
    server_version = "provision-boot"
    root: Path
    image: Path
    url: str
    cmdline: str

    # --- lookups ---------------------------------------------------------------------

    def _records(self) -> dict[str, Record]:
        return BootServer.records_in(self.root)

    def _by_mac(self, key: str) -> Record | None:
        return next((r for r in self._records().values()
                     if r.mac.replace(":", "-") == key.lower()), None)

    def _by_token(self, token: str) -> Record | None:
        if not token:
            return None
        return next((r for r in self._records().values() if r.token == token), None)

    def _event(self, record: Record, step: str, detail: str = "") -> None:
        path = self.root / "events" / f"{record.node}.log"
        with path.open("a") as f:
            f.write(f"{time.time():.3f} {step} {detail}".rstrip() + "\n")

    # --- answers ---------------------------------------------------------------------

    def _text(self, body: str, status: int = 200) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, path: Path) -> None:
        if not path.is_file():
            self._text("not found\n", HTTPStatus.NOT_FOUND)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with path.open("rb") as f:
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if parts == ["boot.ipxe"]:
            self._text(boot_script(self.url))
            return
        if len(parts) == 2 and parts[0] == "node" and parts[1].endswith(".ipxe"):
            record = self._by_mac(parts[1].removesuffix(".ipxe"))
            if record is not None:
                self._event(record, "ipxe-script", record.phase)
            self._text(node_script(self.url, record, self.cmdline))
            return
        if len(parts) >= 3 and parts[0] == "install":
            record = self._by_token(parts[1])
            if record is None or record.phase != "install":
                self._text("unknown install\n", HTTPStatus.NOT_FOUND)
                return
            what = "/".join(parts[2:])
            install = self.root / "installs" / record.token
            if what in IMAGE_FILES:
                step = {"vmlinuz": "kernel", "installer.img": "initrd",
                        "root.img.zst": "image"}[what]
                self._event(record, step)
                self._file(self.image / what)
                return
            if what == "config":
                self._event(record, "config")
                self._file(install / "config")
                return
            if len(parts) == 4 and parts[2] == "seed" and parts[3] in SEED_FILES:
                self._event(record, "seed", parts[3])
                self._file(install / "seed" / parts[3])
                return
        self._text("not found\n", HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        record = self._by_token(parts[1]) if len(parts) == 3 and parts[0] == "install" else None
        if record is None or record.phase != "install" or parts[2] not in ("log", "done",
                                                                           "failed"):
            self._text("unknown install\n", HTTPStatus.NOT_FOUND)
            return
        length = min(int(self.headers.get("Content-Length") or 0), MAX_UPLOAD)
        body = self.rfile.read(length)
        install = self.root / "installs" / record.token
        if parts[2] == "log":
            (install / "log").write_bytes(body)
            self._event(record, "log")
        else:
            result = parts[2] + "\n" + body.decode(errors="replace").strip() + "\n"
            tmp = install / "result.tmp"
            tmp.write_text(result)
            tmp.replace(install / "result")
            self._event(record, parts[2], body.decode(errors="replace").strip()[:200])
        self._text("ok\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cmdline", default="")
    args = parser.parse_args()
    Handler.root = args.root
    Handler.image = args.image
    Handler.url = f"http://{args.address}:{args.port}"
    Handler.cmdline = args.cmdline
    server = ThreadingHTTPServer((args.address, args.port), Handler)
    server.daemon_threads = True
    print(f"serving: {Handler.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
