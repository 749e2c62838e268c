"""Bare-metal images for the pxe provider, built offline from a recipe in ``images/``
with ``kind = "metal"`` (bootstrapped and customized like a VM image,
provision/lab/vmimage.py):

    <cache>/images/<recipe>-<hash>/
        vmlinuz        the kernel: boots the installer from the network, the node from disk
        installer.img  the installer's initramfs (the recipe's customize.sh builds it)
        root.img.zst   the root filesystem (ext4, label root), zstd-compressed with
                       its frame checksum: the installer's zstd refuses a corrupt stream
        image.json     digest, sizes, sha256 of every file, build seconds

The root filesystem has no ``64bit`` ext4 feature: extlinux, the disk's boot loader,
cannot read such a filesystem (so a node's root partition stops growing at 16 TiB).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProviderError
from provision.lab import vmimage
from provision.lab.mounts import remove_tree
from provision.paths import cache_root

KIND = "metal"
INSTALLER = "boot/provision-installer.img"  # where customize.sh writes the installer


@dataclass(frozen=True)
class MetalImage:
    name: str  # <recipe>-<hash>
    dir: Path
    kernel: Path
    installer: Path
    root: Path  # root.img.zst
    root_size: int  # bytes of the uncompressed filesystem: the smallest partition
    digest: str

    @property
    def files(self) -> dict[str, Path]:
        """What the boot server serves, by URL name."""
        return {"vmlinuz": self.kernel, "installer.img": self.installer,
                "root.img.zst": self.root}


def built(vr: vmimage.VMRecipe) -> MetalImage | None:
    d = vr.disk_dir
    if not (d / "image.json").is_file():
        return None
    meta = json.loads((d / "image.json").read_text())
    return MetalImage(name=f"{vr.name}-{vr.digest}", dir=d, kernel=d / "vmlinuz",
                      installer=d / "installer.img", root=d / "root.img.zst",
                      root_size=int(meta["size"]), digest=vr.digest)


def find_recipe(name: str) -> vmimage.VMRecipe:
    return vmimage.find_recipe(name, KIND)


def build_requirements() -> list[str]:
    missing = vmimage.build_requirements()
    if not shutil.which("zstd"):
        missing.append("zstd (apt-get install zstd)")
    return missing


def ensure_metal_image(name: str, log: Callable[[str], None] | None = None) -> MetalImage:
    """The built image for ``name``, building it first when the recipe changed."""
    vr = find_recipe(name)
    done = built(vr)
    if done is not None:
        return done
    say = log or (lambda _m: None)
    images = cache_root() / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(images / f".{vr.name}.metal.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and reuse
        done = built(vr)
        if done is not None:
            return done
        missing = build_requirements()
        if missing:
            raise ProviderError("building the metal image needs: " + ", ".join(missing))
        _build(vr, say)
    done = built(vr)
    assert done is not None
    return done


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _build(vr: vmimage.VMRecipe, say: Callable[[str], None]) -> None:
    from provision.lab import image

    final = vr.disk_dir
    with image.staged_build(final) as tmp:
        started = time.monotonic()
        logfile = tmp / "build.log"
        rootfs = vmimage.bootstrap(vr, tmp, say)
        kernel = vmimage.kernel_of(vr, rootfs)
        installer = rootfs / INSTALLER
        if not installer.is_file():
            raise ProviderError(f"the metal recipe {vr.recipe.path} built no installer: its "
                                f"customize.sh must write /{INSTALLER}")
        shutil.copyfile(kernel, tmp / "vmlinuz")
        shutil.move(installer, tmp / "installer.img")  # not part of the node's disk
        say(f"writing the root filesystem ({vr.size >> 20} MiB ext4, zstd)")
        raw = tmp / "root.img"
        vmimage.write_ext4(rootfs, raw, vr.size, logfile, features=("^64bit",))
        image.run_logged([*vmimage.NICE, "zstd", "-q", "-T0", "-6", "--rm", str(raw),
                          "-o", str(tmp / "root.img.zst")], logfile, "metal image")
        remove_tree(rootfs)
        files = {n: tmp / n for n in ("vmlinuz", "installer.img", "root.img.zst")}
        meta = {"recipe": vr.name, "digest": vr.digest, "size": vr.size,
                "kernel": kernel.name, "sha256": {n: _sha256(p) for n, p in files.items()},
                "bytes": {n: p.stat().st_size for n, p in files.items()},
                "seconds": round(time.monotonic() - started, 1)}
        (tmp / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
    say(f"metal image ready in {meta['seconds']}s: {final}")


def main() -> None:  # python -m provision.lab.metalimage [NAME]: build, print the paths
    import sys

    img = ensure_metal_image(sys.argv[1] if len(sys.argv) > 1 else "debian-12",
                             lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: str(v) for k, v in img.__dict__.items()}, indent=2))


if __name__ == "__main__":
    main()
