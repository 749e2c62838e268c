"""Run records (run.log, events.jsonl, junit/, report.json, report.html) and progress views."""

from provision.report.progress import (
    LiveProgress,
    NodeSay,
    PlainProgress,
    Progress,
    Say,
    Tee,
    View,
    make_view,
    say_nothing,
)
from provision.report.records import RunRecord
from provision.report.redact import Redactor

__all__ = [
    "LiveProgress",
    "NodeSay",
    "PlainProgress",
    "Progress",
    "Redactor",
    "RunRecord",
    "Say",
    "Tee",
    "View",
    "make_view",
    "say_nothing",
]
