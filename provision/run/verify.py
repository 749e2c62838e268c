"""Prove a stage worked: run its testinfra module against its nodes.

Checks run in a separate pytest process (so provision's own test session, or a
user's, never mixes with them), over the cluster's one SSH config, and write JUnit
XML. The result is parsed back per node and per check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import BadInput
from provision.paths import ClusterPaths, write_private
from provision.report.redact import Redactor

CHECKS_DIR = Path(__file__).resolve().parents[1] / "checks"  # provision/checks


@dataclass
class CheckResult:
    node: str
    name: str
    outcome: str  # passed | failed | skipped
    duration: float
    message: str = ""


@dataclass
class VerifyResult:
    checks: list[CheckResult] = field(default_factory=list)
    junit: Path | None = None
    error: str = ""  # pytest itself could not run (collection error, no module)

    def failed_nodes(self) -> set[str]:
        return {c.node for c in self.checks if c.outcome == "failed"}

    def passed_nodes(self, nodes: list[str]) -> set[str]:
        seen = {c.node for c in self.checks}
        return {n for n in nodes if n in seen} - self.failed_nodes()

    def first_failure(self, node: str) -> CheckResult | None:
        return next((c for c in self.checks if c.node == node and c.outcome == "failed"), None)


def check_module(name: str, checks_dir: Path | None = None) -> Path:
    path = (checks_dir or CHECKS_DIR) / f"{name}.py"
    if not path.is_file():
        raise BadInput(f"no checks module {name!r} ({path})")
    return path


PARALLEL_NODES = 4


def run_checks(paths: ClusterPaths, module: str, nodes: list[str], context: dict[str, object],
               junit: Path, timeout: float = 900,
               checks_dir: Path | None = None) -> VerifyResult:
    """Run ``provision/checks/<module>.py`` on ``nodes``; never raises for a failed check."""
    if not nodes:
        return VerifyResult()
    junit.parent.mkdir(parents=True, exist_ok=True)
    context_file = junit.with_suffix(".context.json")
    context_file.write_text(json.dumps(context, indent=1, sort_keys=True, default=str))
    argv = [
        sys.executable, "-m", "pytest", str(check_module(module, checks_dir)),
        "--hosts", ",".join(f"ssh://{n}" for n in nodes),
        "--ssh-config", str(paths.ssh_config),
        "--junitxml", str(junit),
        "-o", "junit_family=xunit2",
        "-o", "addopts=",
        "-p", "no:cacheprovider",
        "--rootdir", str(CHECKS_DIR),
        "-c", str(CHECKS_DIR / "pytest.ini"),
        "-q", "--no-header", "-rN",
        # Checks wait on SSH round trips, not CPU: one xdist worker per node (a few at
        # most) turns a stage's checks from the sum of its nodes into about the slowest.
        # Tests sharing per-run state carry an xdist_group mark and stay in one worker.
        *(["-n", str(min(len(nodes), PARALLEL_NODES)), "--dist", "loadgroup"]
          if len(nodes) > 1 else []),
    ]
    env = dict(os.environ, PROVISION_CHECK_CONTEXT=str(context_file))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return VerifyResult(error=f"checks {module} timed out after {timeout:.0f}s")
    # pytest wrote the JUnit itself: mask it before anything reads it (a failed check's
    # message can quote a file or command output), and the output we keep likewise
    redact = Redactor()
    write_private(junit.with_suffix(".out"), redact(proc.stdout + proc.stderr))
    if junit.exists():
        write_private(junit, redact(junit.read_text()))
    result = parse_junit(junit, nodes) if junit.exists() else VerifyResult()
    result.junit = junit
    if proc.returncode not in (0, 1) or not result.checks:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        result.error = f"checks {module} did not run (pytest exit {proc.returncode}): " + \
            "\n".join(tail)
    return result


def parse_junit(junit: Path, nodes: list[str]) -> VerifyResult:
    result = VerifyResult(junit=junit)
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        node = _node_of(name, nodes)
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or child.text or "").strip()[:2000]
            elif child.tag == "skipped":
                outcome = "skipped"
                message = (child.get("message") or "").strip()
        base = name.split("[", 1)[0]
        result.checks.append(
            CheckResult(node=node, name=base, outcome=outcome,
                        duration=float(case.get("time", 0) or 0), message=message)
        )
    return result


def _node_of(test_id: str, nodes: list[str]) -> str:
    """testinfra parametrizes each test by host: ``test_x[ssh://cp-1]``."""
    inside = test_id.rsplit("[", 1)[-1].rstrip("]") if "[" in test_id else ""
    inside = inside.removeprefix("ssh://")
    for node in sorted(nodes, key=len, reverse=True):
        if inside == node or inside.startswith(node + "-"):
            return node
    return inside or "?"
