"""Run records (run.log, events.jsonl, junit/, report.json, report.html) and progress views."""

from provision.report.progress import (
    LiveProgress,
    PlainProgress,
    Progress,
    Tee,
    make_progress,
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
    "make_progress",
]
