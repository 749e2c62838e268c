#!/usr/bin/env python3
"""Write a one-layer OCI image layout tar holding busybox-static.

Used by the kubelet-in-nspawn experiment to get a pause image and a workload
image without any registry: `ctr -n k8s.io images import OUT.tar`.

    oci_busybox.py BUSYBOX_BINARY OUT.tar IMAGE_REF [--pause]

--pause makes the entrypoint a tiny PID-1 loop that exits on SIGTERM (busybox
`sleep` as PID 1 would ignore it and the kubelet would wait for SIGKILL).
"""
import argparse
import gzip
import hashlib
import io
import json
import tarfile
import time

APPLETS = ["sh", "sleep", "echo", "cat", "ls", "date", "hostname", "wget", "nc",
           "nslookup", "ip", "ping", "true", "env", "id", "ps"]


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def _layer(busybox: str) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            layer.addfile(info)
        info = layer.gettarinfo(busybox, arcname="bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        with open(busybox, "rb") as f:
            layer.addfile(info, f)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            layer.addfile(link)
        passwd = "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        for name, text in (("etc/passwd", passwd),
                           ("etc/group", "root:x:0:\nnobody:x:65534:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            layer.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return gzip.compress(raw.getvalue(), mtime=0), diff_id


def build(busybox: str, out: str, ref: str, pause: bool) -> None:
    layer, diff_id = _layer(busybox)
    if pause:
        entrypoint = ["/bin/sh", "-c",
                      "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done"]
        cmd = None
    else:
        entrypoint = None
        cmd = ["/bin/sh"]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "config": {"Env": ["PATH=/bin"], "Entrypoint": entrypoint, "Cmd": cmd,
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(out, "w") as tar:
        layer_digest, layer_size = _blob(tar, layer)
        config_digest, config_size = _blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = _blob(tar, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest_size,
                           "annotations": {"org.opencontainers.image.ref.name": ref,
                                           "io.containerd.image.name": ref}}],
        }
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("busybox")
    p.add_argument("out")
    p.add_argument("ref")
    p.add_argument("--pause", action="store_true")
    a = p.parse_args()
    build(a.busybox, a.out, a.ref, a.pause)
