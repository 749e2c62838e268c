"""The invalid-inventory corpus: every file states the problems it must produce.

Each file in inventories/invalid/ starts with a description and one header line per
expected problem:

    # expect: LINE:COL PATH MESSAGE
    # expect-warning: LINE:COL PATH MESSAGE

LINE:COL and PATH must match exactly; MESSAGE must appear in the rendered message
("message (hint: ...)"). The file must produce exactly these problems, no others.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.errors import EXIT_BAD_INPUT, BadInput
from provision.inventory import InventoryInvalid, Problem, load_inventory

CORPUS = Path(__file__).parent / "inventories" / "invalid"
FILES = sorted(CORPUS.glob("*.yaml"))
_EXPECT = re.compile(r"^# (expect|expect-warning): (\d+):(\d+) (\S+) (.+)$")


@dataclass(frozen=True)
class Expected:
    line: int
    column: int
    path: str
    message: str
    severity: str

    def matches(self, p: Problem) -> bool:
        rendered = f"{p.message} (hint: {p.hint})" if p.hint else p.message
        return (p.line, p.column, p.path, p.severity) == (
            self.line,
            self.column,
            self.path,
            self.severity,
        ) and self.message in rendered


def expectations(path: Path) -> list[Expected]:
    out = []
    for line in path.read_text().splitlines():
        m = _EXPECT.match(line)
        if m:
            kind, ln, col, field, message = m.groups()
            severity = "error" if kind == "expect" else "warning"
            out.append(Expected(int(ln), int(col), field, message.strip(), severity))
    return out


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("inventory validation must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_corpus_size() -> None:
    assert len(FILES) >= 35
    multi = [f for f in FILES if len(expectations(f)) > 1]
    assert len(multi) >= 4


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_invalid_inventory(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} states no expected problem"
    with pytest.raises(InventoryInvalid) as caught:
        load_inventory(path)
    problems = caught.value.problems
    unmatched = list(problems)
    missing = []
    for exp in expected:
        hit = next((p for p in unmatched if exp.matches(p)), None)
        if hit is None:
            missing.append(exp)
        else:
            unmatched.remove(hit)
    report = "\n".join(str(p) for p in problems)
    assert not missing, f"expected but not reported: {missing}\nreported:\n{report}"
    assert not unmatched, f"reported but not expected: {unmatched}\nreported:\n{report}"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_rendering(path: Path) -> None:
    with pytest.raises(BadInput) as caught:
        load_inventory(path)
    err = caught.value
    assert isinstance(err, InventoryInvalid)
    assert err.exit_code == EXIT_BAD_INPUT
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems)
    for line, p in zip(lines, err.problems, strict=True):
        assert line.startswith(f"{path}:{p.line}:{p.column}: {p.severity}: {p.path}: ")
        if p.hint:
            assert line.endswith(f" (hint: {p.hint})")
    # problems come in file order
    assert [(p.line, p.column) for p in err.problems] == sorted(
        (p.line, p.column) for p in err.problems
    )
