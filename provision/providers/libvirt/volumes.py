"""Volumes in the inventory's storage pool.

Per VM: ``pv-<cluster>-<node>.qcow2`` (an overlay on the base disk, at the node's
disk size) and ``pv-<cluster>-<node>-seed.iso`` (the NoCloud seed). Shared by every VM
made from one image, a cache that destroy never removes: ``pv-base-<recipe>-<hash>``
``.qcow2`` / ``.vmlinuz`` / ``.initrd`` (libvirt boots the kernel directly). Data is
streamed through the connection, so a remote libvirt host works too.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from provision import names
from provision.lab.vmimage import VMImage
from provision.providers.base import NodeSay
from provision.providers.libvirt.connection import find, libvirt_call

if TYPE_CHECKING:
    import libvirt

# writes bytes or a file's content into a volume (tests replace it: test:/// cannot)
Upload = Callable[["libvirt.virConnect", "libvirt.virStorageVol", bytes | Path], None]


def base_volume_names(img: VMImage) -> dict[str, str]:
    base = f"{names.PREFIX}base-{img.name}"
    return {"disk": f"{base}.qcow2", "kernel": f"{base}.vmlinuz", "initrd": f"{base}.initrd"}


def volume_xml(name: str, capacity: int, fmt: str, backing: str | None = None,
               sparse: bool = False) -> str:
    allocation = "<allocation>0</allocation>" if sparse else ""
    backing_store = (f"<backingStore><path>{backing}</path><format type='qcow2'/>"
                     "</backingStore>" if backing else "")
    return (f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"{allocation}<target><format type='{fmt}'/></target>{backing_store}</volume>")


def upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, src: bytes | Path) -> None:
    """Stream bytes or a file into a volume (works for remote libvirt hosts too)."""
    stream = conn.newStream(0)
    try:
        size = len(src) if isinstance(src, bytes) else src.stat().st_size
        vol.upload(stream, 0, size, 0)
        if isinstance(src, bytes):
            view = memoryview(src)
            while view:
                n = stream.send(view[: 1 << 20].tobytes())
                view = view[n:]
        else:
            with open(src, "rb") as f:
                stream.sendAll(lambda _s, nbytes, fh: fh.read(nbytes), f)
        stream.finish()
    except BaseException:
        with suppress(Exception):  # already failed
            stream.abort()
        raise


def ensure_base_volumes(conn: libvirt.virConnect, pool: libvirt.virStoragePool,
                        img: VMImage, send: Upload, say: NodeSay) -> dict[str, str]:
    """The image's disk, kernel and initrd as volumes of the pool (uploaded once);
    returns their paths. The initrd goes last: its presence at full size means the set
    is complete."""
    volume_names = base_volume_names(img)
    files = {"disk": img.disk, "kernel": img.kernel, "initrd": img.initrd}
    with libvirt_call(f"virStoragePoolRefresh({pool.name()})"):
        pool.refresh(0)
    done = find(pool.storageVolLookupByName, volume_names["initrd"])
    complete = done is not None and done.info()[1] == files["initrd"].stat().st_size
    out = {}
    for key in ("disk", "kernel", "initrd"):
        name, src = volume_names[key], files[key]
        vol = find(pool.storageVolLookupByName, name)
        if vol is not None and not complete:
            with libvirt_call(f"virStorageVolDelete({name})"):
                vol.delete(0)
            vol = None
        if vol is None:
            size = src.stat().st_size
            say("*", f"uploading {name} ({size >> 20} MiB) to pool {pool.name()}")
            vol = create(pool, name, volume_xml(name, size, "raw", sparse=True))
            with libvirt_call(f"virStorageVolUpload({name})"):
                send(conn, vol, src)
        out[key] = vol.path()
    return out


def create(pool: libvirt.virStoragePool, name: str, xml: str) -> libvirt.virStorageVol:
    with libvirt_call(f"virStorageVolCreateXML({name})"):
        return pool.createXML(xml, 0)


def replace(pool: libvirt.virStoragePool, name: str, xml: str) -> libvirt.virStorageVol:
    """A new volume ``name``; one left from an earlier attempt is deleted first."""
    delete(pool, [name])
    return create(pool, name, xml)


def delete(pool: libvirt.virStoragePool, volume_names: list[str],
           node: str | None = None) -> None:
    """The volumes that exist of ``volume_names``."""
    for name in volume_names:
        vol = find(pool.storageVolLookupByName, name)
        if vol is not None:
            with libvirt_call(f"virStorageVolDelete({name})", node):
                vol.delete(0)


def refreshed_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    """The pool with a fresh volume list, or None when it is missing or unusable."""
    import libvirt

    try:
        pool = conn.storagePoolLookupByName(name)
        pool.refresh(0)
    except libvirt.libvirtError:
        return None
    return pool


__all__ = [
    "Upload", "base_volume_names", "create", "delete", "ensure_base_volumes",
    "refreshed_pool", "replace", "upload", "volume_xml",
]
