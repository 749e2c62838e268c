"""Error types and the exit codes the CLI maps them to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a stage, a check or an operation on a host failed
EXIT_BAD_INPUT = 2  # the inventory or the command line is wrong; nothing was touched


class ProvisionError(Exception):
    """Base class: every error provision raises on purpose."""

    exit_code = EXIT_FAILED


class BadInput(ProvisionError):
    """Wrong inventory, flag or argument, found before any host is touched."""

    exit_code = EXIT_BAD_INPUT


class ClusterBusy(BadInput):
    """Another run is changing the cluster (provision/run/lock.py); nothing was touched.
    ``pid``: the holder's, when it left its note."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class StageFailed(ProvisionError):
    """A stage failed on a node: names the node, the stage, the task and the log."""

    def __init__(self, stage: str, node: str, what: str, log: str) -> None:
        self.stage, self.node, self.what, self.log = stage, node, what, log
        super().__init__(f"stage {stage!r} failed on node {node!r}: {what}\n  full log: {log}")


class ProviderError(ProvisionError):
    """A provider could not create, observe or remove a machine. ``nodes``: the
    machines it is about, when the provider knows (a failure names its node)."""

    def __init__(self, message: str, nodes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.nodes = nodes
