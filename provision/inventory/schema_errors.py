"""Turn pydantic validation errors into `Problem`s with a position, a message and a hint."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from provision.inventory.problems import Problem, format_path
from provision.inventory.types import ERROR_TYPE, show_value
from provision.inventory.yamlsource import Positions


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (list, tuple, set, frozenset, dict, typing.Union, types.UnionType):
        out: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            out.extend(_models_in(arg))
        return out
    return []


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the mapping at loc (a document path), if any."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue  # list index: same model as the list's items
        field = next(
            (f for name, f in model.model_fields.items() if (f.alias or name) == part), None
        )
        if field is None:
            return None
        found = _models_in(field.annotation)
        model = found[0] if found else None
    return model


def field_info(root: type[BaseModel], loc: Sequence[str | int]) -> Any:
    parent = model_at(root, loc[:-1])
    if parent is None or not loc:
        return None
    return next(
        (f for name, f in parent.model_fields.items() if (f.alias or name) == loc[-1]), None
    )


def allowed_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _norm(key: str) -> str:
    return re.sub(r"[-_\s]", "", key).lower()


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest choice: first ignoring case, '-' and '_', then by similarity."""
    for choice in choices:
        if _norm(choice) == _norm(word):
            return choice
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(word.lower(), lowered, 1, 0.6)]
    return close[0] if close else None


def _show(value: Any) -> str:
    return "a boolean" if isinstance(value, bool) else show_value(value)


_PATTERN_HINTS = {
    "user": "a Unix user name like root or debian",
    "clusterDomain": "a DNS domain like cluster.local",
}


def problem_from_error(
    err: ErrorDetails, root: type[BaseModel], positions: Positions, file: str
) -> Problem:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    value = err.get("input")
    path = format_path(loc)
    line, col = positions.value(loc)
    hint: str | None = None

    if kind == "missing":
        line, col = positions.value(loc[:-1])
        name = loc[-1]
        message = f"missing required field '{name}'"
        info = field_info(root, loc)
        desc = (info.description or "").split(". ")[0].rstrip(".") if info else ""
        hint = f"add '{name}:'" + (f" ({desc})" if desc else "")
    elif kind == "extra_forbidden":
        line, col = positions.key(loc)
        name = str(loc[-1])
        message = f"unknown field {show_value(name)}"
        parent = model_at(root, loc[:-1])
        choices = allowed_keys(parent) if parent else []
        best = suggest(name, choices)
        if best:
            hint = f"did you mean '{best}'?"
        elif choices:
            hint = "allowed fields here: " + ", ".join(choices)
        else:
            hint = "this section takes no fields"
    elif kind == ERROR_TYPE:
        message = str(ctx.get("message"))
        hint = ctx.get("hint")
    elif kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        message = f"{_show(value)} is not allowed here: expected {expected}"
        best = suggest(str(value), options) if isinstance(value, str) else None
        if best:
            hint = f"did you mean '{best}'?"
        elif len(options) == 1:
            hint = f"write '{options[0]}'"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"expected a whole number, got {_show(value)}"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"expected true or false, got {_show(value)}"
    elif kind == "string_type":
        message = f"expected a string, got {_show(value)}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            hint = f"quote it: '{value}'"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping of fields, got {_show(value)}"
        hint = "write 'key: value' lines indented under it, or {key: value, ...}"
    elif kind == "list_type":
        message = f"expected a list, got {_show(value)}"
        hint = "write '- item' lines indented under it, or [a, b]"
    elif kind == "too_short":
        message = "must not be empty"
        if loc and loc[-1] == "roles":
            hint = "list at least one of control-plane, etcd, worker"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {
            "greater_than_equal": ("at least", "ge"),
            "greater_than": ("more than", "gt"),
            "less_than_equal": ("at most", "le"),
            "less_than": ("less than", "lt"),
        }[kind]
        message = f"must be {words[0]} {ctx.get(words[1])}, got {_show(value)}"
    elif kind == "string_pattern_mismatch":
        message = f"{_show(value)} is not valid here"
        what = _PATTERN_HINTS.get(str(loc[-1]) if loc else "")
        hint = f"write {what}" if what else f"it must match {ctx.get('pattern')}"
    else:
        message = err["msg"]
    return Problem(file, line, col, path, message, hint)
