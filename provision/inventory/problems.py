"""What is wrong with an inventory, and where: the unit every check reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from provision.errors import BadInput

Severity = Literal["error", "warning"]

DOCUMENT = "<document>"  # the path of a problem about the file as a whole


@dataclass(frozen=True)
class Problem:
    """One finding, pointing at a line and column (both 1-based) of the inventory file."""

    file: str
    line: int
    column: int
    path: str  # field path in the document, e.g. "pools[0].template.memory"
    message: str
    hint: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        text = (
            f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.path}: {self.message}"
        )
        return f"{text} (hint: {self.hint})" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }


class InventoryInvalid(BadInput):
    """The inventory has at least one error. Carries every problem found (warnings too)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(self.render())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def render(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def format_path(loc: Iterable[str | int]) -> str:
    """("pools", 0, "template", "memory") -> "pools[0].template.memory"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or DOCUMENT
