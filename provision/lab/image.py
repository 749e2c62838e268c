"""Node images for lab machines, built from a recipe in ``images/<recipe>/``.

A recipe directory holds ``recipe.toml`` (suite, mirror, packages, the image names it
answers to), ``rootfs/`` (files copied into the image as they are) and
``customize.sh`` (run chrooted in the new rootfs). The image is cached under
``cache_root()/images/<recipe>-<hash>/rootfs`` where the hash covers every file of the
recipe: editing the recipe rebuilds, anything else reuses. Builds happen in a
temporary directory renamed into place, so a crashed build never leaves a half image
where a finished one is expected.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provision.errors import BadInput, ProviderError
from provision.lab.mounts import remove_tree
from provision.paths import cache_root, data_dir


def recipes_dir() -> Path:
    return data_dir("images")


@dataclass(frozen=True)
class Recipe:
    name: str  # directory name under images/
    path: Path
    suite: str
    variant: str
    mirror: str
    packages: tuple[str, ...]
    names: tuple[str, ...]
    kind: str = "rootfs"  # "rootfs": a directory nspawn boots; other kinds (vm) build on it

    @property
    def digest(self) -> str:
        """Hash of every file in the recipe directory: path, mode and content."""
        h = hashlib.sha256()
        for f in sorted(p for p in self.path.rglob("*") if p.is_file() or p.is_symlink()):
            rel = f.relative_to(self.path).as_posix()
            h.update(rel.encode() + b"\0")
            if f.is_symlink():
                h.update(b"link:" + os.readlink(f).encode())
            else:
                h.update(oct(f.stat().st_mode & 0o7777).encode() + b"\0")
                h.update(f.read_bytes())
            h.update(b"\0")
        return h.hexdigest()[:16]

    @property
    def cache_dir(self) -> Path:
        return cache_root() / "images" / f"{self.name}-{self.digest}"

    @property
    def rootfs(self) -> Path:
        return self.cache_dir / "rootfs"

    def is_built(self) -> bool:
        return (self.cache_dir / "built").is_file()


def _load(path: Path) -> Recipe:
    data = tomllib.loads((path / "recipe.toml").read_text())
    return Recipe(
        name=path.name,
        path=path,
        suite=data.get("suite", "bookworm"),
        variant=data.get("variant", "minbase"),
        mirror=data.get("mirror", "http://deb.debian.org/debian"),
        packages=tuple(data.get("packages", ())),
        names=tuple(data.get("names", ())) + (path.name,),
        kind=data.get("kind", "rootfs"),
    )


def available(kind: str | None = None) -> dict[str, Recipe]:
    """Every image name the recipes (of ``kind``, or all) answer to (``debian-12`` ->
    images/node for rootfs). Every recipe is listed at least under its directory name."""
    out: dict[str, Recipe] = {}
    root = recipes_dir()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if (d / "recipe.toml").is_file():
            r = _load(d)
            if kind is not None and r.kind != kind:
                continue
            for n in r.names:
                out.setdefault(n, r)
    return out


def find_recipe(image: str, kind: str = "rootfs") -> Recipe:
    recipes = available(kind)
    if image not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise BadInput(
            f"no image recipe named {image!r} under {recipes_dir()} (known: {known})"
        )
    return recipes[image]


def ensure_image(image: str, log: Callable[[str], None] | None = None) -> Path:
    """Return the rootfs of ``image``, building it first when the recipe changed."""
    recipe = find_recipe(image)
    if recipe.is_built():
        return recipe.rootfs
    images = cache_root() / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(images / f".{recipe.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others reuse
        if recipe.is_built():
            return recipe.rootfs
        build(recipe, log)
    return recipe.rootfs


def build(recipe: Recipe, log: Callable[[str], None] | None = None) -> None:
    say = log or (lambda _m: None)
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None
    )
    if debootstrap is None:
        raise ProviderError(
            "building the node image needs debootstrap, which is not installed: "
            "apt-get install debootstrap"
        )
    if os.geteuid() != 0:
        raise ProviderError("building the node image needs root (debootstrap, chroot)")
    final = recipe.cache_dir
    with staged_build(final) as tmp:
        started = time.monotonic()
        logfile = tmp / "build.log"
        rootfs = tmp / "rootfs"
        say(f"building image {recipe.name}-{recipe.digest} (debootstrap {recipe.suite})")
        cmd = [
            "nice", "-n", "10", debootstrap, f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}", recipe.suite, str(rootfs),
            recipe.mirror,
        ]
        run_logged(cmd, logfile)
        apply_recipe_files(recipe.path, rootfs, logfile)
        (tmp / "recipe.digest").write_text(recipe.digest + "\n")
        (tmp / "built").write_text(f"{time.monotonic() - started:.1f}\n")
    say(f"image ready: {final / 'rootfs'}")


@contextmanager
def staged_build(final: Path) -> Iterator[Path]:
    """Build ``final`` in a fresh temporary sibling directory (yielded; the build logs to
    its ``build.log``) renamed into place when the block ends. A failed build leaves
    nothing under ``final`` but its log as ``<final>.failed.log``."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    logfile = tmp / "build.log"
    try:
        yield tmp
        remove_tree(final)  # a stale, unfinished image under the final name
        os.rename(tmp, final)
    except BaseException:
        if logfile.exists():
            shutil.copyfile(logfile, final.with_name(f"{final.name}.failed.log"))
        remove_tree(tmp)
        raise


def apply_recipe_files(
    recipe_path: Path,
    rootfs: Path,
    logfile: Path,
    what: str = "image",
    prefix: Sequence[str] = (),
) -> None:
    """Copy the recipe's ``rootfs/`` overlay into ``rootfs``, then run its ``customize.sh``
    chrooted there (``prefix`` goes before ``chroot``, e.g. ``nice -n 10``)."""
    overlay = recipe_path / "rootfs"
    if overlay.is_dir():
        shutil.copytree(overlay, rootfs, symlinks=True, dirs_exist_ok=True)
    customize = recipe_path / "customize.sh"
    if customize.is_file():
        shutil.copy2(customize, rootfs / "customize.sh")
        try:
            run_logged([*prefix, "chroot", str(rootfs), "/bin/sh", "/customize.sh"], logfile, what)
        finally:
            (rootfs / "customize.sh").unlink(missing_ok=True)


def run_logged(cmd: list[str], logfile: Path, what: str = "image") -> None:
    """Run one build step, its output appended to ``logfile``; a failure raises
    ProviderError naming the step (the command, past a leading ``nice -n N``) and the
    log's last lines."""
    with open(logfile, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise ProviderError(
            f"{what} build step failed ({cmd[0] if cmd[0] != 'nice' else cmd[3]}, "
            f"exit {proc.returncode}):\n  " + "\n  ".join(tail)
        )
