"""report.html: one self-contained page (inline CSS, no script, no external URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def human(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m 05s``, ``1h 02m``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def _timeline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar per stage and per stage x node, positioned in percent of the whole run."""
    t0, total = report["started_epoch"], max(report["duration"], 1e-6)

    def bar(started: float | None, finished: float | None) -> dict[str, float] | None:
        if started is None:
            return None
        end = finished if finished is not None else report["finished_epoch"]
        left = min(max((started - t0) / total * 100, 0.0), 100.0)
        width = min(max((end - started) / total * 100, 0.3), 100.0 - left)
        return {"left": round(left, 3), "width": round(max(width, 0.0), 3)}

    rows = []
    for stage in report["stages"]:
        rows.append(
            {
                "stage": stage["name"],
                "node": None,
                "status": stage["status"],
                "duration": stage["duration"],
                "bar": bar(stage["started"], stage["finished"]),
            }
        )
        for node in stage["nodes"]:
            rows.append(
                {
                    "stage": stage["name"],
                    "node": node["name"],
                    "status": node["status"],
                    "duration": node["duration"],
                    "bar": bar(node["started"], node["finished"]),
                }
            )
    return rows


def render_html(report: dict[str, Any]) -> str:
    """Render report.json data (already redacted) to the HTML page."""
    total = report["duration"]
    ticks = [{"left": p, "label": human(total * p / 100)} for p in (0, 25, 50, 75, 100)]
    return _ENV.get_template("report.html.j2").render(
        r=report, rows=_timeline(report), ticks=ticks, human=human
    )
