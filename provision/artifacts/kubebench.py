"""kube-bench, the CIS Kubernetes Benchmark runner, built from its Go module like
every other binary here (``gobuild``, cached by recipe). A test tool, not part of an
artifact set: nothing serves it to nodes; the lab tier copies it to the nodes it
measures (tests/lab/test_cluster.py) and docs/security.md keeps the result.

Its benchmark definitions (``cfg/``) come from the same module version, so the
binary and the checks it runs always match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provision.artifacts import gobuild
from provision.artifacts.cache import Cache

MODULE = "github.com/aquasecurity/kube-bench"
VERSION = "v0.14.1"
# kube-bench's newest CIS benchmark; its own version map sends Kubernetes 1.32 and
# later there (cfg/config.yaml, version_mapping)
BENCHMARK = "cis-1.11"

PROGRAM = gobuild.GoProgram(
    step="kube-bench", strategy="source", module=MODULE, version=VERSION,
    packages=(("kube-bench", "."),), ldflags=("-s", "-w"))


@dataclass(frozen=True)
class KubeBench:
    binary: Path
    config_dir: Path  # the module's cfg/: benchmark definitions


def build(cache: Cache | None = None, say=lambda _m: None) -> KubeBench:
    """kube-bench from the cache, or built now (a few minutes on 2 cores, once)."""
    cache = cache or Cache()
    cache.ensure()
    log_dir = cache.root / "logs"
    record = gobuild.build_program(PROGRAM, cache, gobuild.go_version(), say, log_dir)
    env = gobuild.go_env()
    with cache.workdir("kube-bench-cfg") as work:
        source = gobuild.module_dir(MODULE, VERSION, env, log_dir / "kube-bench-cfg.log", work)
    return KubeBench(binary=cache.blob_path(record["files"]["kube-bench"]["sha256"]),
                     config_dir=source / "cfg")


__all__ = ["BENCHMARK", "KubeBench", "MODULE", "PROGRAM", "VERSION", "build"]
