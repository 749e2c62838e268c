"""The cluster's artifact mirror: where nodes get packages, binaries and images.

The provisioner serves the artifact set (nginx for the apt repository and files,
docker-registry for images) inside the cluster network, for as long as the cluster
exists: a kubelet may pull an image long after ``up`` finished (a pod rescheduled to
another node). The mirror is therefore a detached service that a provider able to
host services (``Capability.SERVICES``) runs next to its machines (for lab machines:
inside the lab namespace, on the gateway address), stopped when the cluster is
destroyed. Both artifact sources need it: online mode (``artifacts.source:
upstream``) serves the official kubeadm, kubelet and kubectl and only the images no
upstream registry has (docs/artifacts.md).
"""

from __future__ import annotations

import hashlib
import sys
import time
import urllib.request
from pathlib import Path

from provision.artifacts import assemble, build
from provision.artifacts.locks import lock_path
from provision.artifacts.oci import split_reference
from provision.artifacts.serve import in_netns
from provision.errors import BadInput, ProvisionError
from provision.inventory import Inventory
from provision.paths import ClusterPaths
from provision.providers.registry import Providers

HTTP_PORT = 8080
REGISTRY_PORT = 5000
SERVICE = "artifacts"  # the service's name beside the machines (providers/services.py)


def addresses(inv: Inventory) -> dict[str, str]:
    """Where the nodes reach the mirror: the gateway of the node subnet."""
    gateway = str(inv.network.gateway)
    return {"mirror_url": f"http://{gateway}:{HTTP_PORT}",
            "registry": f"{gateway}:{REGISTRY_PORT}"}


def file_digests(inv: Inventory) -> dict[str, str]:
    """What the mirror serves under /files/<version>/ -> its sha256 (the lock's pins):
    the roles' downloads and the checks compare against these."""
    return assemble.file_digests(inv.kubernetes.version, inv.artifacts.source)


def artifact_versions(inv: Inventory) -> dict[str, str]:
    """What the stage hash knows of the artifacts: the lock file's digest."""
    lock = lock_path(inv.kubernetes.version)
    digest = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "unlocked"
    return {"kubernetes": inv.kubernetes.version, "lock": digest}


def ensure(inv: Inventory, paths: ClusterPaths, providers: Providers,
           timeout: float = 600) -> dict[str, str]:
    """Start the mirror beside the machines (idempotent) and wait until it serves."""
    host = providers.service_host()
    if host is None:
        raise BadInput(no_service_host(inv))
    # Built (or found in the cache) before anything starts, so that a build error is
    # reported as itself and not as a mirror that never came up.
    source = inv.artifacts.source
    aset = build(inv.kubernetes.version, source=source)
    urls = addresses(inv)
    pid = host.spawn_service(inv, SERVICE, [
        sys.executable, "-m", "provision.artifacts.serve",
        "--address", str(inv.network.gateway),
        "--version", inv.kubernetes.version, "--source", source,
        "--http-port", str(HTTP_PORT), "--registry-port", str(REGISTRY_PORT),
        # every lab cluster serves on its own gateway address, often the same one
        "--name", f"cluster-{inv.name}",
    ])
    service_log = paths.machines_dir / f"service-{SERVICE}.log"
    netns = host.service_netns(inv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _serving(netns, urls, max(aset.images)):
            return urls
        if not Path(f"/proc/{pid}").exists():
            tail = service_log.read_text(errors="replace")[-2000:] if service_log.exists() else ""
            raise ProvisionError(f"the artifact mirror exited while starting; log "
                                 f"{service_log}:\n{tail}")
        time.sleep(1)
    raise ProvisionError(f"the artifact mirror did not answer within {timeout:.0f}s; "
                         f"log: {service_log}")


def no_service_host(inv: Inventory) -> str:
    return (f"{inv.source_path}: no provider of this cluster can run the artifact mirror "
            "the nodes install from (with either artifacts.source); put one node of the "
            "local provider (or of a local libvirt) in the cluster")


def _serving(netns: str | None, urls: dict[str, str], last_image: str) -> bool:
    """Both servers answer and the registry lists the image the server pushes last
    (it pushes in sorted order): every image is there."""
    repository = split_reference(last_image)[0].encode()

    def probe() -> bool:
        try:
            with urllib.request.urlopen(urls["mirror_url"] + "/apt/Packages", timeout=3):
                pass
            req = f"http://{urls['registry']}/v2/_catalog"
            with urllib.request.urlopen(req, timeout=3) as resp:
                return repository in resp.read()
        except OSError:
            return False

    return in_netns(netns, probe)


__all__ = ["HTTP_PORT", "REGISTRY_PORT", "addresses", "artifact_versions", "ensure",
           "file_digests",
           "no_service_host"]
