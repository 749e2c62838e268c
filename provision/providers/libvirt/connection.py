"""The libvirt connection: libvirt-python imported on first use (an optional
dependency: ``validate`` says how to install it), one open connection per URI, lookups
that answer None for a missing object, and every failed call turned into a
ProviderError that names the call and the VM's console log.

libvirt-python is imported inside the functions that need it, never at module level,
so the package loads (and reports the missing dependency) without it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

from provision.errors import ProviderError

if TYPE_CHECKING:
    import libvirt

T = TypeVar("T")


def missing() -> str | None:
    """Why libvirt-python cannot be used here, or None when it can."""
    try:
        import libvirt  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


class LibvirtCallFailed(ProviderError):
    pass


@contextmanager
def libvirt_call(what: str, node: str | None = None,
                 console: str | None = None) -> Iterator[None]:
    """Turn a libvirtError into a ProviderError naming the call and the console log."""
    import libvirt

    try:
        yield
    except libvirt.libvirtError as e:
        where = f" for {node}" if node else ""
        tail = ""
        if console:
            tail = f"\n  console log: {console}" + console_tail(console)
        raise LibvirtCallFailed(f"libvirt {what}{where} failed: {e}{tail}") from e


def console_tail(path: str, lines: int = 15) -> str:
    """The last lines of a console log, indented for an error message."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    | {ln}" for ln in text)


def find(lookup: Callable[[str], T], name: str) -> T | None:
    """``lookup(name)`` (``conn.lookupByName``, ``pool.storageVolLookupByName``, ...),
    or None when libvirt has no such object."""
    import libvirt

    try:
        return lookup(name)
    except libvirt.libvirtError:
        return None


def attempt(lookup: Callable[[str], T], name: str) -> T | str:
    """``lookup(name)``, or libvirt's message when it failed (for a problem's text)."""
    import libvirt

    try:
        return lookup(name)
    except libvirt.libvirtError as e:
        return e.get_error_message() or str(e)


class Connections:
    """One open connection per URI, opened on first use and again when it died."""

    def __init__(self) -> None:
        self._conns: dict[str, libvirt.virConnect] = {}
        self._lock = threading.Lock()

    def get(self, uri: str) -> libvirt.virConnect:
        why = missing()
        if why is not None:
            raise ProviderError(f"libvirt-python is not installed ({why}): "
                                "pip install 'provision[libvirt]'")
        import libvirt

        with self._lock:
            conn = self._conns.get(uri)
            if conn is not None:
                with suppress(libvirt.libvirtError):
                    if conn.isAlive():
                        return conn
            # libvirt prints every error to stderr by default; we report them ourselves.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            with libvirt_call(f"virConnectOpen({uri!r})"):
                conn = libvirt.open(uri)
            self._conns[uri] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                with suppress(Exception):  # closing a dead connection
                    conn.close()
            self._conns.clear()


def is_local(uri: str) -> bool:
    """Does the URI name a libvirtd on this host (so its files are ours to read)?"""
    u = urlparse(uri)
    return not u.hostname and "+ssh" not in u.scheme and "+tcp" not in u.scheme \
        and "+tls" not in u.scheme


def accel_override() -> str | None:
    """PROVISION_LIBVIRT_ACCEL=kvm|tcg forces the accelerator (auto otherwise)."""
    value = os.environ.get("PROVISION_LIBVIRT_ACCEL", "auto").strip().lower()
    return value if value in ("kvm", "tcg") else None


def domain_type(conn: libvirt.virConnect) -> str:
    """'kvm' when the host offers it (and it is not overridden), else 'qemu' (TCG)."""
    import libvirt

    forced = accel_override()
    if forced:
        return "kvm" if forced == "kvm" else "qemu"
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm")
        return "kvm"
    except libvirt.libvirtError:  # no KVM: TCG
        return "qemu"


__all__ = [
    "Connections", "LibvirtCallFailed", "accel_override", "attempt", "console_tail",
    "domain_type", "find", "is_local", "libvirt_call", "missing",
]
