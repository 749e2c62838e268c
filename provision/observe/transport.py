"""The one way observation reaches a node: a shell script over the cluster's SSH
configuration (provision/executors/ssh.py), behind a callable so parsers and planners
are tested without machines.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

# run(node, script) -> the finished process (never raises for a non-zero exit)
Runner = Callable[[str, str], "subprocess.CompletedProcess[str]"]

# what observations and plans serialise to (plan.json, --output json)
Json = dict[str, object]

__all__ = ["Json", "Runner"]
