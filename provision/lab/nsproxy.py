"""Reach TCP services inside a lab network namespace from the host's namespace.

    python -m provision.lab.nsproxy connect NETNS HOST PORT
        enter /run/netns/NETNS, connect to HOST:PORT, relay stdin/stdout (an ssh
        ProxyCommand: ``ProxyCommand python -m provision.lab.nsproxy connect pv-c %h %p``)

    python -m provision.lab.nsproxy forward NETNS LISTEN_PORT TARGET_HOST TARGET_PORT
                                    [--daemon] [--pidfile FILE]
        listen on 127.0.0.1:LISTEN_PORT in the host's namespace; every connection is
        relayed to TARGET_HOST:TARGET_PORT inside NETNS (the kubeconfig's API address)

The listening socket is created before entering the namespace and keeps the host's
namespace; sockets created afterwards belong to the lab namespace. Needs root
(CAP_SYS_ADMIN for setns).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sys
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def proxy_command(netns: str) -> str:
    """The ssh ProxyCommand that reaches %h:%p inside ``netns`` (this interpreter)."""
    return f"{sys.executable} -m provision.lab.nsproxy connect {netns} %h %p"


def enter(netns: str) -> None:
    """Move the calling thread into a named network namespace."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        else:  # Python < 3.12
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def connect_in(netns: str, host: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection made inside ``netns``, usable from any thread of this process.

    setns changes only the calling thread's namespace, so the connection is made in a
    short-lived thread and the caller keeps its own namespace."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            enter(netns)
            box["sock"] = socket.create_connection((host, port), timeout=timeout)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=work, name=f"nsproxy-{netns}", daemon=True)
    t.start()
    t.join(timeout + 5)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if "sock" not in box:
        raise TimeoutError(f"connect to {host}:{port} in {netns} timed out")
    return box["sock"]  # type: ignore[return-value]


def _relay_stdio(sock: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    open_in = True
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(stdin, 65536)
                if not data:
                    sel.unregister(stdin)
                    open_in = False
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    n = os.write(stdout, view)
                    view = view[n:]
        if not open_in and not sel.get_map():
            return


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve_one(client: socket.socket, host: str, port: int) -> None:
    try:
        upstream = socket.create_connection((host, port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    t = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    t.start()
    _pipe(client, upstream)
    t.join()
    client.close()
    upstream.close()


def forward(netns: str, listen_port: int, host: str, port: int,
            pidfile: Path | None = None, daemon: bool = False) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))  # in the host's namespace
    listener.listen(64)
    if daemon:
        _daemonize()
    if pidfile:
        pidfile.write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    enter(netns)  # the whole process now connects inside the lab namespace
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(client, host, port), daemon=True).start()


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m provision.lab.nsproxy")
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("connect", help="relay stdin/stdout to HOST:PORT inside NETNS")
    c.add_argument("netns")
    c.add_argument("host")
    c.add_argument("port", type=int)
    f = sub.add_parser("forward", help="127.0.0.1:LISTEN_PORT -> TARGET inside NETNS")
    f.add_argument("netns")
    f.add_argument("listen_port", type=int)
    f.add_argument("target_host")
    f.add_argument("target_port", type=int)
    f.add_argument("--pidfile", type=Path)
    f.add_argument("--daemon", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.mode == "connect":
            enter(args.netns)
            sock = socket.create_connection((args.host, args.port), timeout=15)
            sock.settimeout(None)
            _relay_stdio(sock)
        else:
            forward(args.netns, args.listen_port, args.target_host, args.target_port,
                    args.pidfile, args.daemon)
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"nsproxy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
