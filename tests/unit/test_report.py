"""Run records: report.json, report.html, timings vs the log, redaction."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from provision.report import RunRecord

T0 = 1795428000.0  # 2026-11-23T10:00:00Z

KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBa7Zr2cXNvbWVzZWNyZXRrZXltYXRlcmlhbGhlcmU=\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
KEY_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"
TOKEN = "s3cr3t-bootstrap-token-abcdef"


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sample_run(tmp_path: Path, **kw: object) -> RunRecord:
    """Two stages, three nodes, checks; the second stage fails on worker-1."""
    clock = Clock()
    rec = RunRecord(tmp_path, "up", cluster="lab", inventory="/x/inv.yaml", clock=clock, **kw)  # type: ignore[arg-type]
    rec.stage_started("os", ["cp-1", "worker-1"])
    rec.node_result("os", "cp-1", "changed", T0 + 0.25, T0 + 3.4567891)
    rec.node_result("os", "worker-1", "skipped", T0 + 0.3, T0 + 1.1)
    rec.check_result("os", "cp-1", "test_swap_off", "passed", 0.12)
    rec.check_result("os", "worker-1", "test_swap_off", "passed", 0.1)
    clock.t = T0 + 4
    rec.stage_finished("os", "changed")
    rec.stage_started("runtime", ["cp-1", "worker-1", "worker-2"])
    rec.node_result("runtime", "cp-1", "ok", T0 + 4.01, T0 + 9.5)
    rec.node_result(
        "runtime",
        "worker-1",
        "failed",
        T0 + 4.02,
        T0 + 8.25,
        detail="apt-get install containerd: exit 100 <E>",
        task="containerd : install",
    )
    rec.check_result("runtime", "cp-1", "test_containerd_running", "passed", 0.5)
    rec.check_result("runtime", "cp-1", "test_crictl_info", "skipped", 0.0, "not reached")
    clock.t = T0 + 10
    rec.stage_finished("runtime", "failed")
    rec.finish("failed", "stage 'runtime' failed on node 'worker-1'")
    return rec


def test_run_directory_name_and_suffix(tmp_path: Path) -> None:
    a = RunRecord(tmp_path, "up", clock=Clock())
    b = RunRecord(tmp_path, "up", clock=Clock())
    assert a.dir.name == "20261123T100000Z-up"
    assert b.dir.name == "20261123T100000Z-up-2"
    assert a.run_id == a.dir.name
    assert a.log == a.dir / "run.log" and a.events == a.dir / "events.jsonl"
    assert a.junit_dir.is_dir() and a.report_json.name == "report.json"
    assert a.stage_log("os").parent.is_dir()


def test_report_json_contents(tmp_path: Path) -> None:
    rec = sample_run(tmp_path)
    data = json.loads(rec.report_json.read_text())
    assert data["run_id"] == rec.run_id
    assert (data["command"], data["cluster"], data["inventory"]) == ("up", "lab", "/x/inv.yaml")
    assert data["started"] == "2026-11-23T10:00:00.000Z"
    assert data["finished"] == "2026-11-23T10:00:10.000Z"
    assert (data["started_epoch"], data["finished_epoch"], data["duration"]) == (T0, T0 + 10, 10)
    assert data["status"] == "failed"
    assert data["error"] == "stage 'runtime' failed on node 'worker-1'"
    assert data["log"] == str(rec.log)
    assert [s["name"] for s in data["stages"]] == ["os", "runtime"]
    os_stage, rt = data["stages"]
    assert os_stage["status"] == "changed" and rt["status"] == "failed"
    assert os_stage["log"] is None  # no Ansible output was written for it
    assert os_stage["nodes"][0] == {
        "name": "cp-1",
        "status": "changed",
        "started": T0 + 0.25,
        "finished": T0 + 3.4567891,
        "duration": 3.207,
        "task": None,
        "detail": "",
    }
    worker2 = rt["nodes"][2]
    assert worker2["name"] == "worker-2" and worker2["status"] == "not-run"
    assert worker2["duration"] is None
    assert rt["checks"][1] == {
        "node": "cp-1",
        "name": "test_crictl_info",
        "outcome": "skipped",
        "duration": 0.0,
        "message": "not reached",
    }
    assert data["failure"] == {
        "stage": "runtime",
        "node": "worker-1",
        "task": "containerd : install",
        "check": None,
        "detail": "apt-get install containerd: exit 100 <E>",
        "log": str(rec.log),
    }


def test_timings_in_report_equal_the_log(tmp_path: Path) -> None:
    rec = sample_run(tmp_path)
    data = json.loads(rec.report_json.read_text())
    pattern = re.compile(
        r"^\S+Z \[(\S+)\] (\S+): (\w+) ([\d.]+)s \(started=([\d.]+) finished=([\d.]+)\)", re.M
    )
    logged = {(m[1], m[2]): m.groups()[2:] for m in pattern.finditer(rec.log.read_text())}
    nodes = [(s["name"], n) for s in data["stages"] for n in s["nodes"] if n["started"]]
    assert len(logged) == len(nodes) == 4
    for stage, n in nodes:
        status, took, started, finished = logged[(stage, n["name"])]
        assert status == n["status"]
        assert float(started) == n["started"] and float(finished) == n["finished"]
        assert float(took) == pytest.approx(n["duration"], abs=0.0005)


class StrictHTML(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_well_formed_complete_and_self_contained(tmp_path: Path) -> None:
    rec = RunRecord(tmp_path, "up", cluster="lab<&>", clock=Clock())
    rec.stage_started("os", ["cp-1"])
    rec.node_result("os", "cp-1", "failed", T0, T0 + 1, detail="<script>alert(1)</script>")
    rec.check_result("os", "cp-1", "test_a", "failed", 0.2, "assert 'a' == \"b\" & <c>")
    rec.stage_finished("os", "failed")
    rec.finish("failed", "boom")
    html = rec.report_html.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html

    full = sample_run(tmp_path / "b").report_html.read_text()
    parser = StrictHTML()
    parser.feed(full)
    parser.close()
    assert parser.stack == []
    text = " ".join(parser.text)
    for word in ["os", "runtime", "cp-1", "worker-1", "worker-2", "test_swap_off",
                 "test_containerd_running", "test_crictl_info", "containerd : install",
                 "apt-get install containerd: exit 100 <E>", "lab", "up"]:  # fmt: skip
        assert word in text, word
    assert "://" not in full
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "img", "iframe", "object")
        assert "src" not in attrs and "href" not in attrs
    # bars: one per stage and per node that ran, positioned within the run
    bars = re.findall(r'class="bar st-(\w+)" style="left: ([\d.]+)%; width: ([\d.]+)%', full)
    assert len(bars) == 2 + 4
    assert all(float(left) + float(width) <= 100.001 for _, left, width in bars)


def test_secrets_never_reach_any_file(tmp_path: Path) -> None:
    clock = Clock()
    rec = RunRecord(tmp_path, "up", redact=[TOKEN], clock=clock)
    rec.log_line(f"joining with {TOKEN}\n{KEY}")
    rec.event({"event": "runner_on_ok", "stdout": KEY, TOKEN: {"nested": [TOKEN, 1]}})
    rec.event({"stdout": KEY[:120]})  # a key cut short, without its END line
    rec.stage_started("os", ["cp-1"])
    rec.node_result("os", "cp-1", "failed", T0, T0 + 1, detail=KEY, task=f"use {TOKEN}")
    rec.check_result("os", "cp-1", "test_key", "failed", 0.1, message=f"{KEY} != {TOKEN}")
    rec.stage_log("os").write_text(f"TASK [x] {TOKEN}\n{KEY}")  # written by the executor
    (rec.junit_dir / "os.xml").write_text(f"<testsuite><failure>{TOKEN}</failure></testsuite>")
    rec.stage_finished("os", "failed")
    rec.finish("failed", f"failed: {KEY}")

    files = [p for p in rec.dir.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for path in files:
        text = path.read_text()
        for secret in (TOKEN, KEY_BODY, "PRIVATE KEY"):
            assert secret not in text, f"{secret!r} in {path}"
    assert "***" in rec.log.read_text() and "***" in rec.report_html.read_text()
    for line in rec.events.read_text().splitlines():
        json.loads(line)  # still valid JSON
    report = json.loads(rec.report_json.read_text())
    assert report["stages"][0]["log"] == str(rec.stage_log("os"))
    assert report["failure"]["log"] == str(rec.stage_log("os"))


def test_context_manager_records_the_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RunRecord(tmp_path, "verify", clock=Clock()) as rec:
        raise RuntimeError("ssh unreachable")
    data = json.loads(rec.report_json.read_text())
    assert data["status"] == "failed"
    assert data["error"] == "RuntimeError: ssh unreachable"
    assert data["failure"]["log"] == str(rec.log)


def test_unknown_status_is_rejected(tmp_path: Path) -> None:
    rec = RunRecord(tmp_path, "up", clock=Clock())
    with pytest.raises(ValueError):
        rec.node_result("os", "cp-1", "done", T0, T0)
    with pytest.raises(ValueError):
        rec.check_result("os", "cp-1", "test_a", "error", 0.1)
