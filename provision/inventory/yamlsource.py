"""YAML loading that remembers where every key and value came from."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from provision.inventory.problems import DOCUMENT, Problem

Loc = tuple[str | int, ...]


@dataclass
class Positions:
    """1-based (line, column) of every value, and of every mapping key, by document path."""

    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def value(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """Where the value at loc starts; for a path that does not exist, its nearest parent."""
        path = tuple(loc)
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))

    def key(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """Where the key of loc is written (the list item for an index); else as value()."""
        path = tuple(loc)
        if path in self.keys:
            return self.keys[path]
        return self.value(path)

    def has(self, loc: Sequence[str | int]) -> bool:
        return tuple(loc) in self.values


@dataclass
class Document:
    data: Any  # plain dicts, lists and scalars
    positions: Positions


def _plain(value: Any, loc: Loc, pos: Positions) -> Any:
    """ruamel's commented YAML value as plain data, recording every position."""
    if isinstance(value, CommentedMap):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else str(k)
            child = (*loc, key)
            if k in value.lc.data:
                kl, kc = value.lc.key(k)
                vl, vc = value.lc.value(k)
            else:  # merged in from an anchor (<<: *name): point at the merging mapping
                kl, kc = vl, vc = value.lc.line, value.lc.col
            pos.keys[child] = (kl + 1, kc + 1)
            pos.values[child] = (vl + 1, vc + 1)
            out[key] = _plain(v, child, pos)
        return out
    if isinstance(value, CommentedSeq):
        items = []
        for i, v in enumerate(value):
            child = (*loc, i)
            il, ic = value.lc.item(i)
            pos.values[child] = (il + 1, ic + 1)
            items.append(_plain(v, child, pos))
        return items
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


class YAMLSyntaxError(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def _syntax_error(
    file: str, line: int, col: int, message: str, hint: str | None = None
) -> YAMLSyntaxError:
    """An error about the document as a whole, at a line and column."""
    return YAMLSyntaxError(Problem(file, line, col, DOCUMENT, message, hint))


def parse_yaml(text: str, file: str) -> Document:
    """Parse YAML 1.2 (no yes/no booleans, no sexagesimal numbers) with positions."""
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        dup = re.match(r'found duplicate key "(.*?)" with value', str(e.problem or ""))
        if dup:  # its own message: ruamel's would repeat both values, maybe a secret
            raise _syntax_error(
                file,
                line,
                col,
                f"key {dup.group(1)!r} appears twice in the same mapping",
                "keep one of them",
            ) from None
        what = str(e.problem or e.context or "")
        cm = e.context_mark
        if e.context and e.problem and cm is not None:
            where = f"line {cm.line + 1}, column {cm.column + 1}"
            if what.startswith("but "):
                what = f"{e.context} (from {where}), {what}"
            else:
                what += f" ({e.context} that starts at {where})"
        raise _syntax_error(
            file,
            line,
            col,
            f"YAML syntax error: {what}",
            "fix the YAML syntax here (indentation, ':' after keys, matching brackets and quotes)",
        ) from None
    except ReaderError as e:  # a character YAML does not allow; position is an offset
        before = text[: e.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        raise _syntax_error(
            file,
            line,
            col,
            f"character U+{e.character:04X} is not allowed in YAML"
            if isinstance(e.character, int)
            else f"the file is not valid {e.encoding}",
            "remove it (a control character, often from a copy-paste)",
        ) from None
    except YAMLError as e:  # errors without a position
        raise _syntax_error(file, 1, 1, f"YAML error: {e}") from None
    pos = Positions()
    if isinstance(root, CommentedMap | CommentedSeq):
        pos.values[()] = (root.lc.line + 1, root.lc.col + 1)
    else:
        pos.values[()] = (1, 1)
    return Document(_plain(root, (), pos), pos)
