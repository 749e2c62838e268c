"""Errors of the artifact set: each says what went wrong and what to do."""

from __future__ import annotations

from provision.errors import BadInput, ProvisionError


class ArtifactError(ProvisionError):
    """An artifact could not be built, fetched, verified or served."""


class UnsupportedVersion(BadInput):
    def __init__(self, version: str, supported: tuple[str, ...]) -> None:
        self.version, self.supported = version, supported
        super().__init__(
            f"Kubernetes {version!r} is not supported by this provision: "
            f"supported versions are {', '.join(supported)}"
        )


class NotPinned(BadInput):
    """Online mode, but the lock pins no checksum for an official file: nothing is
    downloaded (an unchecked download could be anything)."""


class ToolchainMissing(ArtifactError):
    """`go` (or another build tool) is absent or too old."""


class ChecksumMismatch(ArtifactError):
    def __init__(self, name: str, expected: str, actual: str, lock: str,
                 url: str = "") -> None:
        self.name, self.expected, self.actual, self.lock = name, expected, actual, lock
        self.url = url
        if url:  # a downloaded official file: never "fix" this by re-pinning blindly
            super().__init__(
                f"checksum mismatch for {name} downloaded from {url}:\n"
                f"  lock file {lock} pins sha256 {expected}\n"
                f"  the download has      sha256 {actual}\n"
                "  The file was deleted and is NOT used. A changed official file means a "
                "broken or tampered download (or mirror): check the URL and the project's "
                "published checksum before touching the lock."
            )
            return
        super().__init__(
            f"checksum mismatch for {name}:\n"
            f"  lock file {lock} pins sha256 {expected}\n"
            f"  this build produced   sha256 {actual}\n"
            "  The artifact is NOT used. If the change is intended (new toolchain, "
            "new upstream package), rebuild with --update-lock and commit the lock file."
        )


class DiskFull(ArtifactError):
    pass


class ServeError(ArtifactError):
    pass
