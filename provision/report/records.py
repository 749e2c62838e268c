"""One run's record: ``run.log``, ``events.jsonl``, ``junit/``, ``report.json``, ``report.html``.

The engine calls a :class:`RunRecord` from worker threads; every method is thread-safe.
Timings are taken as floats (``time.time()``) from the caller and the very same floats
go to the log line and to ``report.json``, so the two always agree: a node's line in
run.log reads ``[stage] node: status 3.207s (started=<epoch> finished=<epoch>)``.

report.json: ``run_id, command, inventory, cluster, started, finished`` (ISO, UTC),
``started_epoch, finished_epoch, duration, status, error, failure`` ({stage, node,
task, check, detail, log} or null), ``stages`` [{name, status, started, finished,
duration, log, nodes [{name, status, started, finished, duration, task, detail}],
checks [{node, name, outcome, duration, message}]}], ``run_dir, log, events,
junit_dir``. Stage and node times are epoch floats; a node that never ran has
status ``not-run`` and null times; a stage never finished has status ``unfinished``.

Secrets: every line goes through the redactor before it reaches a file (a run killed
with SIGKILL leaves nothing to scrub), the run directory is 0700 and its files 0600.
Files other processes write into it (checks' JUnit and output) are made 0600 at the
record's next state change and redacted at the next check result or stage end; every
file is looked at once more when the run finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from provision import secrets
from provision.paths import private_dir
from provision.report.html import render_html
from provision.report.redact import Redactor

NODE_STATUSES = ("ok", "changed", "skipped", "failed")
CHECK_OUTCOMES = ("passed", "failed", "skipped")


def iso(ts: float, *, millis: bool = False) -> str:
    """UTC ISO 8601 with a ``Z``: ``2026-11-23T10:00:01Z`` (or ``...01.123Z``)."""
    dt = datetime.fromtimestamp(ts, UTC)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeResult:
    name: str
    status: str
    started: float
    finished: float
    task: str | None = None
    detail: str = ""


@dataclass
class CheckResult:
    node: str
    name: str
    outcome: str
    duration: float
    message: str = ""


@dataclass
class StageRecord:
    name: str
    nodes: list[str]
    started: float
    finished: float | None = None
    status: str | None = None
    results: dict[str, NodeResult] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)


class RunRecord:
    """The record of one command run, in ``<runs_dir>/<UTC timestamp>-<command>/``."""

    def __init__(
        self,
        runs_dir: Path,
        command: str,
        *,
        cluster: str = "",
        inventory: Path | str | None = None,
        redact: Iterable[str] = (),
        clock: Any = time.time,
    ) -> None:
        self.command = command
        self.cluster = cluster
        self.inventory = str(inventory) if inventory is not None else None
        self.redact = Redactor(redact)
        self._clock = clock
        self.started: float = clock()
        self.finished: float | None = None
        self.status: str | None = None
        self.error: str | None = None
        self._stages: dict[str, StageRecord] = {}
        self._lock = threading.RLock()
        self._sealed: dict[Path, int] = {}  # file -> its mtime when last redacted

        private_dir(runs_dir)
        stamp = datetime.fromtimestamp(self.started, UTC).strftime("%Y%m%dT%H%M%SZ")
        base, n = f"{stamp}-{command}", 1
        while True:
            self.run_id = base if n == 1 else f"{base}-{n}"
            self.dir = runs_dir / self.run_id
            try:
                self.dir.mkdir(mode=0o700)
                break
            except FileExistsError:
                n += 1
        self.junit_dir.mkdir(mode=0o700)
        self._log: TextIO = _append(self.log)
        self._events: TextIO = _append(self.events)
        self.log_line(f"provision {command}: cluster={cluster or '-'} inventory={self.inventory}")

    # -- paths ---------------------------------------------------------------------------

    @property
    def log(self) -> Path:
        return self.dir / "run.log"

    @property
    def events(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def junit_dir(self) -> Path:
        return self.dir / "junit"

    @property
    def report_json(self) -> Path:
        return self.dir / "report.json"

    @property
    def report_html(self) -> Path:
        return self.dir / "report.html"

    def junit_file(self, stage: str) -> Path:
        return self.junit_dir / f"{stage}.xml"

    def stage_log(self, stage: str) -> Path:
        """``ansible/<stage>.log`` in the run directory, the log a stage's failure names;
        its directory (0700) also holds each stage's ansible-runner directory."""
        path = self._ansible_log(stage)
        private_dir(path.parent)
        return path

    def _ansible_log(self, stage: str) -> Path:
        return self.dir / "ansible" / f"{stage}.log"

    # -- writing -------------------------------------------------------------------------

    def add_secret(self, secret: str) -> None:
        """A secret learnt during the run (e.g. a generated token): masked from now on,
        here and in everything else this process writes (``provision.secrets``)."""
        secrets.register(secret)

    def write_json(self, name: str, data: Any) -> Path:
        """A named JSON document beside the log (a plan, an observation)."""
        path = self.dir / name
        self._write(path, json.dumps(data, indent=2, sort_keys=True, default=str))
        return path

    def log_line(self, text: str) -> None:
        """Append to run.log; every line of ``text`` gets the current UTC timestamp."""
        stamp = iso(self._clock(), millis=True)
        lines = self.redact(text).splitlines() or [""]
        with self._lock:
            if self._log.closed:
                self._log = _append(self.log)
            self._log.write("".join(f"{stamp} {line}\n" for line in lines))
            self._log.flush()

    def event(self, event: dict[str, Any]) -> None:
        """Append one (Ansible) event to events.jsonl."""
        line = json.dumps(self.redact.data(event), default=str, sort_keys=True)
        with self._lock:
            if self._events.closed:
                self._events = _append(self.events)
            self._events.write(self.redact(line) + "\n")
            self._events.flush()

    # -- run lifecycle -------------------------------------------------------------------

    def _stage(self, stage: str, started: float | None = None) -> StageRecord:
        rec = self._stages.get(stage)
        if rec is None:
            rec = StageRecord(stage, [], self._clock() if started is None else started)
            self._stages[stage] = rec
        return rec

    def stage_started(self, stage: str, nodes: Sequence[str]) -> None:
        with self._lock:
            rec = self._stage(stage)
            rec.nodes = list(dict.fromkeys([*rec.nodes, *nodes]))
        self.log_line(f"[{stage}] started on {', '.join(nodes) or 'no nodes'}")

    def node_state(self, stage: str, node: str, state: str, task: str | None = None) -> None:
        """Progress-style state change (e.g. ``running`` a task): logged only."""
        self.log_line(f"[{stage}] {node}: {state}" + (f" -- {task}" if task else ""))
        self._seal(redact=False)  # checks may be writing their files right now

    def message(self, text: str) -> None:
        self.log_line(text)

    def node_result(self, stage: str, node: str, status: str, started: float,
                    finished: float, detail: str = "", task: str | None = None) -> None:
        """A node's final result for a stage; ``started``/``finished`` are epoch floats."""
        if status not in NODE_STATUSES:
            raise ValueError(f"node status must be one of {NODE_STATUSES}, not {status!r}")
        result = NodeResult(
            node,
            status,
            started,
            finished,
            self.redact(task) if task else task,
            self.redact(detail),
        )
        with self._lock:
            rec = self._stage(stage, started)
            if node not in rec.nodes:
                rec.nodes.append(node)
            rec.results[node] = result
        line = (
            f"[{stage}] {node}: {status} {finished - started:.3f}s"
            f" (started={started!r} finished={finished!r})"
        )
        if task:
            line += f" task: {task}"
        self.log_line(line + ("\n" + textwrap.indent(detail, "  ") if detail else ""))

    def check_result(self, stage: str, node: str, check_name: str, outcome: str,
                     duration: float, message: str = "") -> None:
        if outcome not in CHECK_OUTCOMES:
            raise ValueError(f"check outcome must be one of {CHECK_OUTCOMES}, not {outcome!r}")
        result = CheckResult(node, self.redact(check_name), outcome, duration, self.redact(message))
        with self._lock:
            self._stage(stage).checks.append(result)
        self._seal()
        line = f"[{stage}] {node}: check {check_name} {outcome} {duration:.3f}s"
        self.log_line(line + ("\n" + textwrap.indent(message, "  ") if message else ""))

    def stage_finished(self, stage: str, status: str) -> None:
        with self._lock:
            rec = self._stage(stage)
            rec.finished, rec.status = self._clock(), status
            took = rec.finished - rec.started
        self.log_line(f"[{stage}] {status} {took:.3f}s")
        self._seal()

    def close(self) -> None:
        """Progress interface: nothing to do, :meth:`finish` closes the record."""

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run: write report.json and report.html; every file of the run 0600 and
        redacted once more."""
        with self._lock:
            self.finished, self.status = self._clock(), status
            self.error = self.redact(error) if error else None
            took = self.finished - self.started
            self.log_line(f"run {status} in {took:.3f}s" + (f": {error}" if error else ""))
            data = self.report()
            self._write(self.report_json, json.dumps(data, indent=2) + "\n")
            self._write(self.report_html, render_html(data))
            self._log.close()
            self._events.close()
            self._seal(everything=True)

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished is None:
            self.finish("failed" if exc else "ok", f"{type(exc).__name__}: {exc}" if exc else None)

    # -- report --------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The report.json document (also the data behind report.html)."""
        with self._lock:
            finished = self.finished if self.finished is not None else self._clock()
            stages = [self._stage_dict(s) for s in self._stages.values()]
            data = {
                "run_id": self.run_id,
                "command": self.command,
                "inventory": self.inventory,
                "cluster": self.cluster,
                "started": iso(self.started, millis=True),
                "started_epoch": self.started,
                "finished": iso(finished, millis=True),
                "finished_epoch": finished,
                "duration": round(finished - self.started, 3),
                "status": self.status,
                "error": self.error,
                "failure": self._failure(),
                "stages": stages,
                "run_dir": str(self.dir),
                "log": str(self.log),
                "events": str(self.events),
                "junit_dir": str(self.junit_dir),
            }
            clean: dict[str, Any] = self.redact.data(data)
            return clean

    def _stage_dict(self, s: StageRecord) -> dict[str, Any]:
        stage_log = self._ansible_log(s.name)
        nodes: list[dict[str, Any]] = []
        for name in s.nodes:
            r = s.results.get(name) or NodeResult(name, "not-run", 0.0, 0.0)
            timed = r.status != "not-run"
            nodes.append(
                {
                    "name": name,
                    "status": r.status,
                    "started": r.started if timed else None,
                    "finished": r.finished if timed else None,
                    "duration": round(r.finished - r.started, 3) if timed else None,
                    "task": r.task,
                    "detail": r.detail,
                }
            )
        return {
            "name": s.name,
            "status": s.status or "unfinished",
            "started": s.started,
            "finished": s.finished,
            "duration": None if s.finished is None else round(s.finished - s.started, 3),
            "nodes": nodes,
            "checks": [vars(c).copy() for c in s.checks],
            "log": str(stage_log) if stage_log.exists() else None,
        }

    def _failure(self) -> dict[str, Any] | None:
        """The first failed node (else failed check, else the run's error), with its log."""

        def failure(
            stage: str | None,
            node: str | None,
            task: str | None = None,
            check: str | None = None,
            detail: str = "",
            log: Path | None = None,
        ) -> dict[str, Any]:
            return {
                "stage": stage,
                "node": node,
                "task": task,
                "check": check,
                "detail": detail,
                "log": str(log or self.log),
            }

        for s in self._stages.values():
            stage_log = self._ansible_log(s.name)
            for r in s.results.values():
                if r.status == "failed":
                    log = stage_log if stage_log.exists() else None
                    return failure(s.name, r.name, r.task, detail=r.detail, log=log)
            for c in s.checks:
                if c.outcome == "failed":
                    return failure(s.name, c.node, check=c.name, detail=c.message)
        if self.status == "failed" or self.error:
            return failure(None, None, detail=self.error or "")
        return None

    def _write(self, path: Path, text: str) -> None:
        """Replace ``path`` with the redacted ``text``: a fresh 0600 file, then rename."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.redact(text))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _seal(self, everything: bool = False, redact: bool = True) -> None:
        """Files others made in the run directory become 0600 (directories 0700) and
        are redacted: the checks' JUnit and output, written by verify and its pytest
        process with their own umask and no redactor. Done at every state change, so
        a killed run keeps them only for the moment between their writing and the next
        line of the record; a file is looked at again only when it changed. Without
        ``everything``, only the run directory's top and junit/ are looked at:
        ansible-runner makes its own files 0600 from redacted events. Without
        ``redact``, modes only: a file still being written is not rewritten."""
        found = (self.dir.rglob("*") if everything
                 else [*self.dir.iterdir(), *self.junit_dir.iterdir()])
        for path in found:
            try:
                st = path.lstat()
                want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
                if (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) \
                        and stat.S_IMODE(st.st_mode) != want:
                    os.chmod(path, want)
            except OSError:
                continue  # gone meanwhile (a temporary file renamed into place)
            if not stat.S_ISREG(st.st_mode):
                continue
            if redact and (everything or path.parent == self.junit_dir) \
                    and self._sealed.get(path) != st.st_mtime_ns:
                self._redact_file(path)
                with contextlib.suppress(OSError):
                    self._sealed[path] = path.lstat().st_mtime_ns

    def _redact_file(self, path: Path) -> None:
        if path in (self.report_json, self.report_html, self.log, self.events):
            return  # written here, through the redactor
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            return  # binary (an etcd snapshot) or gone
        clean = self.redact(text)
        if clean != text:
            self._write(path, clean)


def _append(path: Path) -> TextIO:
    """``path`` opened for appending, created 0600 (never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")
