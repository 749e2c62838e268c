"""Progress views: plain line format, live view on a terminal, thread safety."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

from provision.report import LiveProgress, PlainProgress, RunRecord, Tee, make_view

T0 = 1795428000.0  # 2026-11-23T10:00:00Z


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines() -> None:
    out, clock = io.StringIO(), Clock()
    p = PlainProgress(out, clock=clock)
    p.stage_started("os", ["cp-1", "worker-1"])
    clock.t += 1
    p.node_state("os", "cp-1", "running", "os_baseline : packages")
    p.node_state("os", "cp-1", "running", "os_baseline : packages")  # no change: no line
    clock.t += 3.2
    p.node_state("os", "cp-1", "changed")
    p.node_state("os", "worker-1", "failed", "os_baseline : swap", elapsed=2.04)
    p.message("multi\nline")
    p.stage_finished("os", "failed")
    p.close()
    assert out.getvalue().splitlines() == [
        "2026-11-23T10:00:00Z [os] started on cp-1, worker-1",
        "2026-11-23T10:00:01Z [os] cp-1: running -- os_baseline : packages",
        "2026-11-23T10:00:04Z [os] cp-1: changed (3.2s)",
        "2026-11-23T10:00:04Z [os] worker-1: failed (2.0s) -- os_baseline : swap",
        "2026-11-23T10:00:04Z multi",
        "2026-11-23T10:00:04Z line",
        "2026-11-23T10:00:04Z [os] failed (4.2s)",
    ]


def test_make_view_picks_by_terminal() -> None:
    assert isinstance(make_view(io.StringIO()), PlainProgress)
    tty = FakeTTY()
    live = make_view(tty)
    assert isinstance(live, LiveProgress)
    live.stage_started("etcd", ["cp-1", "cp-2"])
    live.node_state("etcd", "cp-1", "running", "etcd : start")
    live.message("hello")
    live.close()
    shown = tty.getvalue()
    for word in ("etcd", "cp-1", "cp-2", "running", "etcd : start", "hello", "total"):
        assert word in shown


def test_tee_feeds_record_and_views_and_redacts(tmp_path: Path) -> None:
    out = io.StringIO()
    rec = RunRecord(tmp_path, "up", redact=["hunter2-secret"])
    tee = Tee(rec, PlainProgress(out))
    tee.stage_started("os", ["cp-1"])
    tee.node_state("os", "cp-1", "running", "login hunter2-secret")
    tee.node_result("os", "cp-1", "failed", T0, T0 + 1.5, "detail", "login")
    tee.check_result("os", "cp-1", "test_x", "failed", 0.1, "hunter2-secret leaked")
    tee.stage_finished("os", "failed")
    tee.close()
    rec.finish("failed")
    assert "hunter2-secret" not in out.getvalue()
    assert "cp-1: failed (1.5s) -- login" in out.getvalue()
    assert "check test_x failed: *** leaked" in out.getvalue()
    assert json.loads(rec.report_json.read_text())["stages"][0]["nodes"][0]["duration"] == 1.5


def test_thread_safety_smoke(tmp_path: Path) -> None:
    out = io.StringIO()
    rec = RunRecord(tmp_path, "up")
    tee = Tee(rec, PlainProgress(out))
    nodes = [f"worker-{i}" for i in range(8)]
    tee.stage_started("os", nodes)

    def work(node: str) -> None:
        for i in range(100):
            tee.node_state("os", node, "running", f"task {i}")
            rec.event({"host": node, "i": i})
            tee.check_result("os", node, f"test_{i}", "passed", 0.01)
        tee.node_result("os", node, "changed", T0, T0 + 1)

    threads = [threading.Thread(target=work, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tee.stage_finished("os", "changed")
    rec.finish("ok")

    line = re.compile(r"^\S+Z \[os\] (started on .*|worker-\d: .*|changed \(.*\))$")
    plain = out.getvalue().splitlines()
    assert len(plain) == 1 + 8 * 100 + 8 + 1
    assert all(line.match(x) for x in plain)
    assert len(rec.events.read_text().splitlines()) == 800
    data = json.loads(rec.report_json.read_text())
    assert len(data["stages"][0]["checks"]) == 800
    assert {n["status"] for n in data["stages"][0]["nodes"]} == {"changed"}
    assert all(re.match(r"^\S+Z ", x) for x in rec.log.read_text().splitlines())
