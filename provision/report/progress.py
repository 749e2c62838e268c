"""Progress views: a live table on a terminal, plain timestamped lines otherwise (CI).

The engine calls these from worker threads; every implementation is thread-safe.
``node_state`` takes any state string; ``ok``, ``changed``, ``skipped`` and ``failed``
are final and are shown with the node's elapsed time (``elapsed`` when the caller
knows it exactly, else measured from the node's first state in the stage).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from provision.report.records import iso

if TYPE_CHECKING:
    from provision.report.records import RunRecord

FINAL = frozenset({"ok", "changed", "skipped", "failed"})

# A line of news (artifact builds), and news about one node (providers): what long
# work says while it runs, before the run's Progress shows it.
Say = Callable[[str], None]
NodeSay = Callable[[str, str], None]


def say_nothing(_node: str, _message: str) -> None:
    """A NodeSay for callers that show no progress."""


class Progress(Protocol):
    """What a run tells about itself as it goes: ``Tee`` feeds the run record and the
    views from these calls (steps, providers and the engine only ever see this)."""

    def stage_started(self, stage: str, nodes: Sequence[str]) -> None: ...
    def node_state(self, stage: str, node: str, state: str, task: str | None = None,
                   elapsed: float | None = None) -> None: ...
    def node_result(self, stage: str, node: str, status: str, started: float,
                    finished: float, detail: str = "", task: str | None = None) -> None: ...
    def check_result(self, stage: str, node: str, check_name: str, outcome: str,
                     duration: float, message: str = "") -> None: ...
    def stage_finished(self, stage: str, status: str) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class View:
    """A progress view's interface, and a view that shows nothing."""

    def stage_started(self, stage: str, nodes: Sequence[str]) -> None:
        pass

    def node_state(self, stage: str, node: str, state: str, task: str | None = None,
                   elapsed: float | None = None) -> None:
        pass

    def stage_finished(self, stage: str, status: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Node:
    state: str = "pending"
    task: str | None = None
    since: float | None = None  # first state change in this stage
    elapsed: float | None = None  # set when final


@dataclass
class _Stage:
    started: float
    nodes: dict[str, _Node] = field(default_factory=dict)
    status: str | None = None
    elapsed: float | None = None


class _Tracker(View):
    """Shared bookkeeping: stages, nodes, elapsed times. Subclasses display it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._started = clock()
        self._stages: dict[str, _Stage] = {}

    def _stage(self, stage: str) -> _Stage:
        return self._stages.setdefault(stage, _Stage(self._clock()))

    def stage_started(self, stage: str, nodes: Sequence[str]) -> None:
        with self._lock:
            s = self._stages[stage] = _Stage(self._clock())
            for n in nodes:
                s.nodes[n] = _Node()
            self._on_stage_started(stage, list(nodes))

    def node_state(self, stage: str, node: str, state: str, task: str | None = None,
                   elapsed: float | None = None) -> None:
        with self._lock:
            now = self._clock()
            n = self._stage(stage).nodes.setdefault(node, _Node())
            if (n.state, n.task) == (state, task) and elapsed is None:
                return  # nothing new: keep CI logs short
            if n.since is None:
                n.since = now
            n.state, n.task = state, task
            if state in FINAL:
                n.elapsed = elapsed if elapsed is not None else now - n.since
            self._on_node_state(stage, node, n)

    def stage_finished(self, stage: str, status: str) -> None:
        with self._lock:
            s = self._stage(stage)
            s.status, s.elapsed = status, self._clock() - s.started
            self._on_stage_finished(stage, s)

    def _on_stage_started(self, stage: str, nodes: list[str]) -> None:
        pass

    def _on_node_state(self, stage: str, node: str, n: _Node) -> None:
        pass

    def _on_stage_finished(self, stage: str, s: _Stage) -> None:
        pass


class PlainProgress(_Tracker):
    """``2026-11-23T10:00:01Z [os] cp-1: changed (3.2s)``: one line per change."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._stream = stream

    def _emit(self, text: str) -> None:
        stamp = iso(self._clock())
        with self._lock:
            for line in text.splitlines() or [""]:
                self._stream.write(f"{stamp} {line}\n")
            self._stream.flush()

    def _on_stage_started(self, stage: str, nodes: list[str]) -> None:
        self._emit(f"[{stage}] started on {', '.join(nodes) or 'no nodes'}")

    def _on_node_state(self, stage: str, node: str, n: _Node) -> None:
        line = f"[{stage}] {node}: {n.state}"
        if n.state in FINAL and n.elapsed is not None:
            line += f" ({n.elapsed:.1f}s)"
        if n.task:
            line += f" -- {n.task}"
        self._emit(line)

    def _on_stage_finished(self, stage: str, s: _Stage) -> None:
        self._emit(f"[{stage}] {s.status} ({s.elapsed or 0.0:.1f}s)")

    def message(self, text: str) -> None:
        self._emit(text)


_STYLE = {
    "ok": "green",
    "changed": "blue",
    "skipped": "dim",
    "failed": "bold red",
    "pending": "dim",
    "running": "yellow",
}


def _secs(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{s:04.1f}s" if m else f"{s:.1f}s"


class LiveProgress(_Tracker):
    """A rich Live table refreshed 4x/s: finished stages on one line, the running ones
    with every node's state, current task and elapsed time."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._console = Console(file=stream)
        self._live = Live(
            console=self._console,
            refresh_per_second=4,
            get_renderable=self._render,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def _render(self) -> Group:
        with self._lock:
            now = self._clock()
            table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
            for col in ("stage", "node", "state", "task", "elapsed"):
                table.add_column(
                    col, no_wrap=col != "task", justify="right" if col == "elapsed" else "left"
                )
            for name, s in self._stages.items():
                took = s.elapsed if s.elapsed is not None else now - s.started
                if s.status is not None:
                    counts: dict[str, int] = {}
                    for n in s.nodes.values():
                        counts[n.state] = counts.get(n.state, 0) + 1
                    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                    table.add_row(
                        name, summary, Text(s.status, _STYLE.get(s.status, "")), "", _secs(took)
                    )
                    continue
                table.add_row(Text(name, "bold"), "", Text("running", "yellow"), "", _secs(took))
                for node, n in s.nodes.items():
                    if n.elapsed is not None:
                        node_took = _secs(n.elapsed)
                    else:
                        node_took = _secs(now - n.since) if n.since is not None else ""
                    table.add_row(
                        "", node, Text(n.state, _STYLE.get(n.state, "")), n.task or "", node_took
                    )
            total = Text(f"total {_secs(now - self._started)}", "dim")
            return Group(table, total)

    def message(self, text: str) -> None:
        with self._lock:
            self._live.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._live.refresh()
        self._live.stop()


def make_view(stream: TextIO | None = None) -> View:
    """A live view when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return LiveProgress(stream)
    return PlainProgress(stream)


class Tee:
    """Feeds one RunRecord and any number of progress views from the same calls.

    Text shown in the views goes through the record's redactor first.
    ``node_result`` and ``check_result`` reach the record in full and the views as states.
    """

    def __init__(self, record: RunRecord, *views: View) -> None:
        self.record, self.views = record, views
        self._r = record.redact

    def stage_started(self, stage: str, nodes: Sequence[str]) -> None:
        self.record.stage_started(stage, nodes)
        for v in self.views:
            v.stage_started(stage, nodes)

    def node_state(self, stage: str, node: str, state: str, task: str | None = None,
                   elapsed: float | None = None) -> None:
        self.record.node_state(stage, node, state, task)
        for v in self.views:
            v.node_state(stage, node, state, self._r(task) if task else task, elapsed)

    def node_result(self, stage: str, node: str, status: str, started: float,
                    finished: float, detail: str = "", task: str | None = None) -> None:
        self.record.node_result(stage, node, status, started, finished, detail, task)
        for v in self.views:
            v.node_state(
                stage, node, status, self._r(task) if task else task, elapsed=finished - started
            )

    def check_result(self, stage: str, node: str, check_name: str, outcome: str,
                     duration: float, message: str = "") -> None:
        self.record.check_result(stage, node, check_name, outcome, duration, message)
        if outcome == "failed":
            self._views_message(f"[{stage}] {node}: check {check_name} failed: {message}")

    def stage_finished(self, stage: str, status: str) -> None:
        self.record.stage_finished(stage, status)
        for v in self.views:
            v.stage_finished(stage, status)

    def message(self, text: str) -> None:
        self.record.message(text)
        self._views_message(text)

    def _views_message(self, text: str) -> None:
        for v in self.views:
            v.message(self._r(text))

    def close(self) -> None:
        for v in self.views:
            v.close()
