"""VM disk images for the libvirt provider, built offline from a recipe in ``images/``.

A VM recipe is an image recipe (same layout and cache key as ``provision.lab.image``:
``recipe.toml``, ``rootfs/`` overlay, ``customize.sh``) whose ``recipe.toml`` says
``kind = "vm"``. Its rootfs is bootstrapped from Debian's packages with mmdebstrap
(apt resolves the dependencies of --include, which debootstrap gets wrong for
cloud-init), customized in a chroot, then written into a disk:

    <cache>/images/<recipe>-<hash>/
        root.qcow2     ext4 filesystem labelled "root" (mkfs.ext4 -d), as qcow2
        vmlinuz        the recipe's kernel and initrd, booted directly by libvirt
        initrd.img     (no partition table and no boot loader to install)
        image.json     digest, kernel command line, size, build seconds

The hash covers every file of the recipe, so editing it rebuilds and anything else
reuses. The directory is built under a temporary name and renamed into place: a
crashed build never leaves a half image where a finished one is expected.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.errors import BadInput, ProviderError
from provision.inventory.types import size_bytes
from provision.lab import image
from provision.lab.mounts import remove_tree
from provision.paths import cache_root

DEFAULT_CMDLINE = "root=LABEL=root rw console=ttyS0,115200n8 net.ifnames=0"
NICE = ("nice", "-n", "10")  # every build step runs niced


@dataclass(frozen=True)
class VMImage:
    """A built VM image: the files libvirt needs to boot it."""

    name: str  # <recipe>-<hash>: names the base volumes in a storage pool
    dir: Path
    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str
    digest: str


@dataclass(frozen=True)
class VMRecipe:
    recipe: image.Recipe
    size: int  # bytes of the base filesystem
    cmdline: str

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def digest(self) -> str:
        return self.recipe.digest

    @property
    def disk_dir(self) -> Path:
        return self.recipe.cache_dir

    def is_built(self) -> bool:
        return (self.disk_dir / "image.json").is_file()

    def built(self) -> VMImage:
        d = self.disk_dir
        meta = json.loads((d / "image.json").read_text())
        return VMImage(name=f"{self.name}-{self.digest}", dir=d, disk=d / "root.qcow2",
                       kernel=d / "vmlinuz", initrd=d / "initrd.img",
                       cmdline=meta.get("cmdline", self.cmdline), digest=self.digest)


def _size(recipe: Path, value: object) -> int:
    """The recipe's ``size``, written like an inventory size (3Gi)."""
    try:
        return size_bytes(str(value))
    except ValueError:
        raise BadInput(f"{recipe / 'recipe.toml'}: size {value!r} is not a size "
                       "(use e.g. 3Gi or 3072Mi)") from None


def available(kind: str = "vm") -> dict[str, VMRecipe]:
    """Image name -> disk image recipe, for every recipe with ``kind`` (vm or metal)."""
    out: dict[str, VMRecipe] = {}
    seen: set[Path] = set()
    for r in image.available().values():
        if r.path in seen:
            continue
        seen.add(r.path)
        data = tomllib.loads((r.path / "recipe.toml").read_text())
        if data.get("kind") != kind:
            continue
        vr = VMRecipe(recipe=r, size=_size(r.path, data.get("size", "3Gi")),
                      cmdline=data.get("kernel_cmdline", DEFAULT_CMDLINE))
        for n in (*data.get("names", ()), r.name):
            out.setdefault(n, vr)
    return out


def find_recipe(name: str, kind: str = "vm") -> VMRecipe:
    recipes = available(kind)
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        what = "VM" if kind == "vm" else kind
        raise BadInput(f"no {what} image recipe named {name!r} under {image.recipes_dir()} "
                       f"({kind} recipes have kind = \"{kind}\" in recipe.toml; known: {known})")
    return recipes[name]


def build_requirements() -> list[str]:
    """What building a VM image needs that this host lacks (empty: all there)."""
    missing = []
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"),
                      ("qemu-img", "qemu-utils")):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            missing.append(f"{tool} (apt-get install {pkg})")
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap, chroot)")
    return missing


def ensure_vm_image(name: str, log: Callable[[str], None] | None = None) -> VMImage:
    """The built image for ``name``, building it first when the recipe changed."""
    vr = find_recipe(name)
    if vr.is_built():
        return vr.built()
    say = log or (lambda _m: None)
    images = cache_root() / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(images / f".{vr.name}.disk.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and reuse
        if vr.is_built():
            return vr.built()
        missing = build_requirements()
        if missing:
            raise ProviderError("building the VM image needs: " + ", ".join(missing))
        _build(vr, say)
    return vr.built()


def bootstrap(vr: VMRecipe, tmp: Path, say: Callable[[str], None]) -> Path:
    """The recipe's rootfs in ``tmp/rootfs``, bootstrapped and customized (the log is
    ``tmp/build.log``)."""
    r = vr.recipe
    rootfs = tmp / "rootfs"
    logfile = tmp / "build.log"
    say(f"building {r.kind} image {vr.name}-{vr.digest} (mmdebstrap {r.suite}, "
        f"{len(r.packages)} packages)")
    # mmdebstrap resolves --include with apt (debootstrap cannot configure
    # cloud-init's Python dependencies in the right order).
    _run([*NICE, "mmdebstrap", "--mode=root", f"--variant={r.variant}",
          f"--include={','.join(r.packages)}", r.suite, str(rootfs), r.mirror], logfile)
    image.apply_recipe_files(r.path, rootfs, logfile, f"{r.kind} image", NICE)
    return rootfs


def kernel_of(vr: VMRecipe, rootfs: Path) -> Path:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ProviderError(f"the recipe {vr.recipe.path} installed no kernel in "
                            f"{rootfs / 'boot'}: add a linux-image package to its packages")
    return kernels[-1]


def write_ext4(rootfs: Path, raw: Path, size: int, logfile: Path,
               features: tuple[str, ...] = ()) -> None:
    """``rootfs`` as an ext4 filesystem labelled root in the file ``raw``."""
    with open(raw, "wb") as f:
        f.truncate(size)
    options = ["-O", ",".join(features)] if features else []
    _run([*NICE, "mkfs.ext4", "-q", "-F", "-L", "root", *options, "-d", str(rootfs),
          "-E", "root_owner=0:0", str(raw)], logfile)


def _build(vr: VMRecipe, say: Callable[[str], None]) -> None:
    final = vr.disk_dir
    with image.staged_build(final) as tmp:
        started = time.monotonic()
        logfile = tmp / "build.log"
        rootfs = bootstrap(vr, tmp, say)
        kernel = kernel_of(vr, rootfs)
        initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
        if not initrds:
            raise ProviderError(f"the VM recipe {vr.recipe.path} built no initrd: add "
                                "initramfs-tools to its packages")
        shutil.copyfile(kernel, tmp / "vmlinuz")
        shutil.copyfile(initrds[-1], tmp / "initrd.img")
        say(f"writing the root filesystem ({vr.size >> 20} MiB ext4 -> qcow2)")
        raw = tmp / "root.raw"
        write_ext4(rootfs, raw, vr.size, logfile)
        _run([*NICE, "qemu-img", "convert", "-f", "raw", "-O", "qcow2",
              str(raw), str(tmp / "root.qcow2")], logfile)
        raw.unlink()
        remove_tree(rootfs)  # the disk holds it now
        meta = {"recipe": vr.name, "digest": vr.digest, "cmdline": vr.cmdline,
                "size": vr.size, "kernel": kernel.name,
                "seconds": round(time.monotonic() - started, 1)}
        (tmp / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
    say(f"VM image ready in {meta['seconds']}s: {final}")


def _run(cmd: list[str], logfile: Path) -> None:
    image.run_logged(cmd, logfile, "disk image")


def main() -> None:  # python -m provision.lab.vmimage [NAME]: build and print the paths
    import sys

    img = ensure_vm_image(sys.argv[1] if len(sys.argv) > 1 else "debian-12",
                          lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: str(v) for k, v in img.__dict__.items()}, indent=2))


if __name__ == "__main__":
    main()
