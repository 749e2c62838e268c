"""The container images of a release, named exactly as kubeadm and flannel expect.

Every image is built with ``oci.py`` from binaries this build produced and, where a
program needs more than itself (kube-proxy and flanneld call iptables, nft, conntrack,
ipset; flannel's init containers call ``cp``), files from pinned Debian packages
unpacked with ``dpkg-deb -x``. Layers: a shared base (passwd, group, nsswitch, /tmp,
a CA bundle), the Debian tools layer where needed, then the program.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from provision.artifacts import debs, oci, versions
from provision.artifacts.cache import Cache, recipe_key

# Bump when the image recipes below change: it is part of the cache key.
RECIPE_VERSION = 3

LIB_PATH = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"

# Our tag of an upstream name: no registry but ours has it, so online mode, where the
# nodes pull every other image from its upstream registry, still builds and serves it.
FLANNEL_CNI_IMAGE = f"ghcr.io/flannel-io/flannel-cni-plugin:{versions.FLANNEL_CNI_IMAGE_TAG}"


@dataclass(frozen=True)
class ImageDef:
    ref: str  # registry.k8s.io/kube-apiserver:v1.37.2
    binary: str  # artifact name of the program
    path: str  # where it goes in the image
    entrypoint: tuple[str, ...]
    user: str = ""
    tools: bool = False  # needs the Debian tools layer


def image_defs(rel: versions.Release) -> list[ImageDef]:
    k = rel.kubernetes
    defs = [
        ImageDef(f"registry.k8s.io/{b}:{k}", b, f"/usr/local/bin/{b}", (f"/usr/local/bin/{b}",))
        for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    ]
    defs += [
        ImageDef(f"registry.k8s.io/kube-proxy:{k}", "kube-proxy", "/usr/local/bin/kube-proxy",
                 ("/usr/local/bin/kube-proxy",), tools=True),
        ImageDef(f"registry.k8s.io/pause:{rel.pause}", "pause", "/pause", ("/pause",),
                 user="65535:65535"),
        # Root with only NET_BIND_SERVICE (kubeadm's CoreDNS deployment drops all other
        # capabilities); upstream instead runs as 65532 with a file capability.
        ImageDef(f"registry.k8s.io/coredns/coredns:{rel.coredns}", "coredns", "/coredns",
                 ("/coredns",)),
        ImageDef(f"ghcr.io/flannel-io/flannel:{versions.FLANNEL_VERSION}", "flanneld",
                 "/opt/bin/flanneld", ("/opt/bin/flanneld",), tools=True),
        ImageDef(FLANNEL_CNI_IMAGE, "flannel", "/flannel", ("/flannel",), tools=True),
    ]
    return defs


def own_image_defs(rel: versions.Release) -> list[ImageDef]:
    """The images of a release that exist only in our registry."""
    return [d for d in image_defs(rel) if d.ref == FLANNEL_CNI_IMAGE]


PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
NSSWITCH = "hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\n"

# iptables' update-alternatives links (postinst does not run): nft backend, Debian
# 12's default, the same the nodes use.
IPTABLES_LINKS = {
    f"/usr/sbin/{fam}{suffix}": f"{fam}-nft{suffix}"
    for fam in ("iptables", "ip6tables")
    for suffix in ("", "-save", "-restore")
}
BUSYBOX_APPLETS = ("sh", "cp", "mv", "rm", "ls", "cat", "mkdir", "echo", "sleep", "test",
                   "chmod", "ln", "grep", "sed", "env", "true", "false")
STRIP_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
              "usr/share/locale", "usr/share/bug", "etc/init.d", "usr/share/bash-completion")


def _ca_bundle(ca_deb: Path, work: Path) -> bytes:
    root = work / "ca"
    debs.extract([ca_deb], root)
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    return b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certs)


def base_layer(ca_bundle: bytes) -> oci.LayerSpec:
    s = oci.LayerSpec()
    s.add_file("/etc/passwd", PASSWD.encode())
    s.add_file("/etc/group", GROUP.encode())
    s.add_file("/etc/nsswitch.conf", NSSWITCH.encode())
    s.add_file("/etc/ssl/certs/ca-certificates.crt", ca_bundle)
    s.add_dir("/tmp", 0o1777)
    s.add_dir("/root", 0o700)
    s.add_dir("/home/nonroot", 0o700)
    s.add_dir("/var/run", 0o755)
    s.add_dir("/run", 0o755)
    return s


def tools_layer(tool_debs: list[Path], work: Path) -> oci.LayerSpec:
    root = work / "tools"
    debs.extract(tool_debs, root)
    for d in STRIP_DIRS:
        shutil.rmtree(root / d, ignore_errors=True)
    for link, target in IPTABLES_LINKS.items():
        p = root / link.lstrip("/")
        p.unlink(missing_ok=True)
        p.symlink_to(target)
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    for applet in BUSYBOX_APPLETS:
        p = bindir / applet
        if not p.exists() and not p.is_symlink():
            p.symlink_to("busybox")
    spec = oci.LayerSpec()
    spec.add_tree(root)
    return spec


def build_images(defs: list[ImageDef], binaries: dict[str, str], image_debs: dict[str, dict],
                 ca_deb_sha: str, cache: Cache, progress) -> dict:
    """defs: from image_defs; binaries: {name: blob sha}; image_debs: fetch record files.
    Returns the record {"images": {ref: manifest digest}, "files": {...every blob...}}."""
    key = recipe_key({
        "v": RECIPE_VERSION,
        "defs": [d.__dict__ for d in defs],
        "bins": {d.binary: binaries[d.binary] for d in defs},
        "debs": sorted((n, i["sha256"]) for n, i in image_debs.items()),
        "ca": ca_deb_sha,
    })
    rec = cache.get_record("images", key)
    if rec is not None:
        progress(f"images: cached ({len(rec['images'])})")
        return rec
    progress(f"images: writing {len(defs)} images")
    with cache.workdir("images") as work:
        base = oci.write_layer(base_layer(_ca_bundle(cache.blob_path(ca_deb_sha), work)), cache)
        tool_paths = []
        for _name, info in sorted(image_debs.items()):
            p = work / info["filename"]
            os.link(cache.blob_path(info["sha256"]), p)
            tool_paths.append(p)
        tools = oci.write_layer(tools_layer(tool_paths, work), cache)
        images: dict[str, str] = {}
        files: dict[str, dict] = {}
        for d in defs:
            prog = oci.LayerSpec()
            prog.add_file(d.path, cache.blob_path(binaries[d.binary]), 0o755)
            layers = [base] + ([tools] if d.tools else []) + [oci.write_layer(prog, cache)]
            env = [f"PATH={oci.DEFAULT_PATH}"]
            if d.tools:
                env.append(f"LD_LIBRARY_PATH={LIB_PATH}")
            img = oci.build_image(layers, oci.ImageConfig(entrypoint=d.entrypoint,
                                                          env=tuple(env), user=d.user), cache)
            images[d.ref] = img.manifest_digest
            files[d.ref] = {"sha256": img.manifest_digest}
            files[d.ref + "#config"] = {"sha256": img.config_digest}
            for i, lay in enumerate(layers):
                files[f"{d.ref}#layer{i}"] = {"sha256": lay.digest}
            progress(f"images: {d.ref} sha256:{img.manifest_digest[:12]}")
    rec = {"images": images, "files": files}
    cache.put_record("images", key, rec)
    return rec
