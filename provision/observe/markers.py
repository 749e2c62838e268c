"""Stage markers: the input hash each stage recorded on a node when it last converged
there (``<marker dir>/<stage>``). They live on the nodes, so the cluster itself says
what is done; one command per node reads them all, every node at once.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from provision.observe.transport import Runner

_READ_ALL = ("for f in {dir}/*; do [ -f \"$f\" ] && printf '%s %s\\n' \"${{f##*/}}\" "
             "\"$(cat \"$f\")\"; done; true")


@dataclass
class Markers:
    """What one node says: reachable or why not, and stage -> hash."""

    reachable: bool = False
    error: str = ""
    hashes: dict[str, str] = field(default_factory=dict)


def parse_markers(text: str) -> dict[str, str]:
    """``<stage> <hash>`` lines -> stage -> hash."""
    out = {}
    for line in text.splitlines():
        stage, _, digest = line.partition(" ")
        if digest.strip():
            out[stage] = digest.strip()
    return out


def read_markers(run: Runner, nodes: Sequence[str], marker_dir: str,
                 parallel: int = 16) -> dict[str, Markers]:
    """Every stage marker of every node, read in parallel; an unreachable node says so."""
    script = _READ_ALL.format(dir=shlex.quote(marker_dir))

    def read(name: str) -> tuple[str, Markers]:
        try:
            proc = run(name, script)
        except (OSError, subprocess.SubprocessError) as exc:
            return name, Markers(error=str(exc))
        if proc.returncode != 0:
            return name, Markers(error=(proc.stderr or "").strip()[-300:]
                                 or f"ssh exit {proc.returncode}")
        return name, Markers(reachable=True, hashes=parse_markers(proc.stdout))

    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(parallel, len(nodes))) as pool:
        return dict(pool.map(read, nodes))


__all__ = ["Markers", "parse_markers", "read_markers"]
