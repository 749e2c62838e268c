"""YAML loading that remembers where every key and value came from.

The file is untrusted input: it is read within limits (size, nesting, numbers), YAML
tags are refused, and an alias is shared rather than copied, so a small file cannot
make the provisioner build a huge structure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer, MaxDepthExceededError
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import Node, ScalarNode
from ruamel.yaml.reader import ReaderError

from provision.inventory.problems import DOCUMENT, Problem, format_path, shown

Loc = tuple[str | int, ...]

# Limits far above any real inventory (a 1000-node cluster written node by node with
# BMCs is about 200 KiB, 6 levels deep, 20 000 values): past them the file is refused.
MAX_BYTES = 256 * 1024
MAX_DEPTH = 20  # nested mappings and lists
MAX_VALUES = 100_000  # keys and values once aliases are expanded
MAX_DIGITS = 64  # of an integer (int() refuses 4300 and more)


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


class YAMLSyntaxError(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


class _Refused(MarkedYAMLError):
    """Valid YAML this loader does not accept (a tag, a limit); problem is the message."""

    def __init__(self, mark: Any, message: str, hint: str) -> None:
        super().__init__(problem=message, problem_mark=mark)
        self.hint = hint


class _Composer(Composer):
    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if not isinstance(event, AliasEvent) and event.tag is not None:
            raise _Refused(
                event.start_mark,
                f"YAML tag {shown(str(event.tag))}: an inventory uses no tags",
                "remove the tag (the '!...' before the value); quote the value to make it a string",
            )
        return super().compose_node(parent, index)


class _Constructor(RoundTripConstructor):
    def _int(self, node: ScalarNode) -> Any:
        if len(node.value) > MAX_DIGITS:
            raise _Refused(
                node.start_mark,
                f"a number of {len(node.value)} digits",
                "no field takes a number this large: write the value the field needs",
            )
        return self.construct_yaml_int(node)

    def _timestamp(self, node: ScalarNode) -> str:
        return str(node.value)  # YAML 1.2 has no dates: 2024-01-01 is a string

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError):  # a scalar ruamel cannot convert
            raise _Refused(
                node.start_mark, "this value cannot be read", "quote it to make it a string"
            ) from None


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor._int)
_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor._timestamp)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Plain:
    """ruamel's commented YAML as plain data, recording every position.

    A node reached again through an alias is the same plain object, not a copy: its
    positions are those of its anchor, and for the alias's place the alias itself.
    """

    def __init__(self, file: str, pos: Positions) -> None:
        self.file = file
        self.pos = pos
        self.done: dict[int, Any] = {}  # id of a ruamel node -> its plain value
        self.height: dict[int, int] = {}  # id of a ruamel node -> levels below it

    def refuse(self, loc: Loc, at: tuple[int, int], message: str, hint: str) -> YAMLSyntaxError:
        line, col = at
        return YAMLSyntaxError(Problem(self.file, line, col, format_path(loc), message, hint))

    def text(self, value: str, loc: Loc, at: tuple[int, int]) -> str:
        bad = _CONTROL.search(value)
        if bad:  # written as an escape in a quoted string ("\0", "\e"): no field takes one
            char = f"U+{ord(bad.group()):04X}"
            raise self.refuse(loc, at, f"control character {char} in a quoted string", "remove it")
        return str(value)

    def convert(self, value: Any, loc: Loc, depth: int) -> Any:
        if isinstance(value, CommentedMap | CommentedSeq):
            # the parser counts the levels written; aliases can stack more
            if depth + self.height.get(id(value), 0) > MAX_DEPTH:
                raise self.refuse(
                    loc,
                    self.pos.value(loc),
                    f"nested more than {MAX_DEPTH} levels deep through aliases",
                    "an inventory nests a few levels: flatten the structure",
                )
            if id(value) in self.done:
                return self.done[id(value)]
            out: Any = {} if isinstance(value, CommentedMap) else []
            self.done[id(value)] = out
            if isinstance(value, CommentedMap):
                self.mapping(value, out, loc, depth)
            else:
                for i, v in enumerate(value):
                    child = (*loc, i)
                    il, ic = value.lc.item(i)
                    self.pos.values[child] = (il + 1, ic + 1)
                    out.append(self.convert(v, child, depth + 1))
            children = value.values() if isinstance(value, CommentedMap) else value
            self.height[id(value)] = 1 + max(
                (self.height.get(id(v), 0) for v in children), default=0
            )
            return out
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return self.text(value, loc, self.pos.value(loc))
        return value

    def mapping(self, value: CommentedMap, out: dict[str, Any], loc: Loc, depth: int) -> None:
        for k, v in value.items():
            if k in value.lc.data:
                kl, kc = value.lc.key(k)
                vl, vc = value.lc.value(k)
            else:  # merged in from an anchor (<<: *name): point at the merging mapping
                kl, kc = vl, vc = value.lc.line, value.lc.col
            key = self.text(k, loc, (kl + 1, kc + 1)) if isinstance(k, str) else str(k)
            child = (*loc, key)
            self.pos.keys[child] = (kl + 1, kc + 1)
            self.pos.values[child] = (vl + 1, vc + 1)
            out[key] = self.convert(v, child, depth + 1)


def _syntax_error(
    file: str, line: int, col: int, message: str, hint: str | None = None
) -> YAMLSyntaxError:
    """An error about the document as a whole, at a line and column."""
    return YAMLSyntaxError(Problem(file, line, col, DOCUMENT, message, hint))


def too_many_values(doc: Document, file: str) -> YAMLSyntaxError | None:
    """The error for a document whose aliases expand past MAX_VALUES, at the top-level
    key where the count runs over; the data is shared, so counting it costs little."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, dict | list):
            return 1
        if id(value) not in sizes:
            children = value.values() if isinstance(value, dict) else value
            sizes[id(value)] = 1 + sum(size(v) for v in children)
        return sizes[id(value)]

    total = 0
    for key, value in doc.data.items() if isinstance(doc.data, dict) else []:
        total += 1 + size(value)
        if total > MAX_VALUES:
            line, col = doc.positions.value((key,))
            return YAMLSyntaxError(
                Problem(
                    file,
                    line,
                    col,
                    str(key),
                    f"more than {MAX_VALUES} values, aliases expanded",
                    "an inventory holds a few thousand; an alias (*name) repeats its whole "
                    "anchor: repeat less, and use pools for many nodes",
                )
            )
    return None


def too_large(file: str) -> YAMLSyntaxError:
    return _syntax_error(
        file,
        1,
        1,
        f"the file is larger than {MAX_BYTES // 1024} KiB",
        "an inventory of a thousand nodes takes about 200 KiB: use pools for many identical nodes",
    )


def parse_yaml(text: str, file: str) -> Document:
    """Parse YAML 1.2 (no yes/no booleans, no sexagesimal numbers) with positions."""
    if len(text) > MAX_BYTES:
        raise too_large(file)
    yaml = YAML(typ="rt")
    yaml.Composer = _Composer
    yaml.Constructor = _Constructor
    yaml.max_depth = MAX_DEPTH
    try:
        root = yaml.load(text)
    except (_Refused, MaxDepthExceededError) as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if isinstance(e, _Refused):
            raise _syntax_error(file, line, col, str(e.problem), e.hint) from None
        raise _syntax_error(
            file,
            line,
            col,
            f"nested more than {MAX_DEPTH} levels deep",
            "an inventory nests a few levels: close the brackets or fix the indentation",
        ) from None
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
    return Document(_Plain(file, pos).convert(root, (), 1), pos)
