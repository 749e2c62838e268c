"""What is wrong with an inventory, and where: the unit every check reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Literal

from provision.errors import BadInput

Severity = Literal["error", "warning"]

DOCUMENT = "<document>"  # the path of a problem about the file as a whole


def printable(text: str) -> str:
    """text with every character a terminal would act on (escape sequences, newlines,
    bidi controls) written as a Python escape, so a message is one inert line."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def shown(text: str, limit: int = 60) -> str:
    """User text quoted for a message: escaped, and cut when long."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else f"{quoted[: limit - 5]}...{quoted[0]}"


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

    def __post_init__(self) -> None:
        # messages quote the file's keys and values: they must never reach a terminal raw
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                object.__setattr__(self, f.name, printable(value))

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
            name = part if len(part) <= 60 else part[:57] + "..."  # an unknown key, maybe long
            out += f".{name}" if out else name
    return out or DOCUMENT
