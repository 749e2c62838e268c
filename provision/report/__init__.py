"""Run records (run.log, events.jsonl, junit/, report.json, report.html) and progress views."""

from provision.report.progress import (
    LiveProgress,
    PlainProgress,
    Progress,
    Tee,
    View,
    make_view,
)
from provision.report.records import RunRecord
from provision.report.redact import Redactor

__all__ = [
    "LiveProgress",
    "PlainProgress",
    "Progress",
    "Redactor",
    "RunRecord",
    "Tee",
    "View",
    "make_view",
]
