"""The offline artifact set: Go builds, OCI images, apt repository, lock files, serving.

Python API (the CLI's `provision artifacts build|status` call these):

    build(version=None, progress=None, *, update_lock=False) -> ArtifactSet
    status(version=None) -> list[ArtifactStatus]
    ArtifactServer(artifacts, address, http_port=8080, registry_port=5000,
                   netns=None).start() / .stop()      (also a context manager)
    supported_kubernetes_versions() -> tuple[str, ...]

See docs/artifacts.md.
"""

from provision.artifacts.assemble import Artifact, ArtifactSet, ArtifactStatus, build, status
from provision.artifacts.errors import (
    ArtifactError,
    ChecksumMismatch,
    DiskFull,
    ServeError,
    ToolchainMissing,
    UnsupportedVersion,
)
from provision.artifacts.versions import (
    DEFAULT_KUBERNETES_VERSION,
    supported_kubernetes_versions,
)


def __getattr__(name: str):
    # serve.py pulls in more; load it only when asked for.
    if name == "ArtifactServer":
        from provision.artifacts.serve import ArtifactServer

        return ArtifactServer
    raise AttributeError(name)


__all__ = [
    "DEFAULT_KUBERNETES_VERSION",
    "Artifact",
    "ArtifactError",
    "ArtifactServer",
    "ArtifactSet",
    "ArtifactStatus",
    "ChecksumMismatch",
    "DiskFull",
    "ServeError",
    "ToolchainMissing",
    "UnsupportedVersion",
    "build",
    "status",
    "supported_kubernetes_versions",
]
