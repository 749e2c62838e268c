"""load_inventory: file -> validated, expanded `Inventory`, or every problem at once."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from provision.inventory.model import (
    ClusterSpec,
    ControlPlaneSpec,
    EtcdSpec,
    Inventory,
    KubernetesSpec,
    NetworkSpec,
    NodeSpec,
    PoolSpec,
    ProvidersSpec,
    expand_nodes,
)
from provision.inventory.problems import DOCUMENT, InventoryInvalid, Problem
from provision.inventory.rules import Sections, semantic_problems
from provision.inventory.schema_errors import problem_from_error
from provision.inventory.yamlsource import (
    MAX_BYTES,
    Document,
    Loc,
    YAMLSyntaxError,
    parse_yaml,
    too_large,
    too_many_values,
)


def load_inventory(path: str | Path) -> Inventory:
    """Read, validate and expand an inventory file.

    Raises InventoryInvalid (a BadInput) listing every error and warning when there is
    at least one error. Warnings alone are kept on `Inventory.warnings`.
    """
    file = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # no more: the file may be huge, or endless
        if len(raw) > MAX_BYTES:
            raise InventoryInvalid([too_large(file).problem])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InventoryInvalid(
            [
                Problem(
                    file,
                    1,
                    1,
                    DOCUMENT,
                    f"cannot read the inventory: {reason}",
                    "check the -i/--inventory path",
                )
            ]
        ) from None
    return parse_inventory(text, file, source_path=Path(path))


def parse_inventory(
    text: str, file: str = "<inventory>", source_path: Path | None = None
) -> Inventory:
    """Like load_inventory, for inventory text already in memory."""
    spec, problems = check_inventory(text, file)
    if spec is None or any(p.severity == "error" for p in problems):
        raise InventoryInvalid(problems)
    return Inventory(
        spec=spec,
        nodes=expand_nodes(spec),
        source_path=source_path.resolve() if source_path else None,
        warnings=problems,
    )


def check_inventory(
    text: str, file: str = "<inventory>"
) -> tuple[ClusterSpec | None, list[Problem]]:
    """All problems of an inventory, sorted by position; the spec when the schema passed."""
    try:
        doc = parse_yaml(text, file)
    except YAMLSyntaxError as e:
        return None, [e.problem]
    if doc.data is None:
        return None, [
            Problem(
                file,
                1,
                1,
                DOCUMENT,
                "the inventory is empty",
                "start from inventories/local.yaml",
            )
        ]
    if not isinstance(doc.data, dict):
        line, col = doc.positions.value(())
        return None, [
            Problem(
                file,
                line,
                col,
                DOCUMENT,
                "the inventory must be a mapping of fields (apiVersion, kind, name, ...)",
                "start from inventories/local.yaml",
            )
        ]
    # Top-level x-* keys are free for YAML anchors (x-defaults: &cp {...}), as in Compose.
    doc.data = {k: v for k, v in doc.data.items() if not k.startswith("x-")}
    expanded = too_many_values(doc, file)
    if expanded:
        return None, [expanded.problem]
    spec: ClusterSpec | None = None
    problems: list[Problem] = []
    pruned: list[Loc] = []
    try:
        spec = ClusterSpec.model_validate(doc.data)
        sections = Sections(
            kubernetes=spec.kubernetes,
            control_plane=spec.control_plane,
            etcd=spec.etcd,
            network=spec.network,
            providers=spec.providers,
            nodes=list(enumerate(spec.nodes)),
            pools=list(enumerate(spec.pools)),
        )
    except ValidationError as e:
        errors = e.errors(include_url=False)
        problems = [problem_from_error(err, ClusterSpec, doc.positions, file) for err in errors]
        sections, pruned = _valid_sections(doc, errors)
    left_out = _Branches(pruned)
    for problem, loc in semantic_problems(sections, doc.positions, file):
        # a check on a field that was left out would only repeat its error
        if not left_out.touches(loc):
            problems.append(problem)
    problems.sort(key=lambda p: (p.line, p.column))
    return spec, problems


# Fields no cross-field check reads: when one is wrong, it is left out and the rest of
# its section is still checked. ("*" stands for a list index.)
_INERT: tuple[Loc, ...] = (
    ("kubernetes", "cni"),
    ("kubernetes", "clusterDomain"),
    ("controlPlane", "port"),
    ("ssh",),
    ("artifacts",),
    ("providers", "local"),
    ("providers", "static"),
    ("providers", "libvirt", "uri"),
    ("providers", "libvirt", "network"),
    ("providers", "libvirt", "pool"),
    ("providers", "libvirt", "image"),
    ("providers", "pxe", "image"),
    ("providers", "pxe", "bootTimeout"),
    ("nodes", "*", "machine"),
    ("nodes", "*", "mac"),
    ("nodes", "*", "bmc"),
    ("pools", "*", "template"),
    ("pools", "*", "macs"),
    ("pools", "*", "bmcs"),
)


def _matches(loc: Loc, prefix: Loc) -> bool:
    return len(loc) >= len(prefix) and all(
        p == "*" and isinstance(x, int) or p == x for x, p in zip(loc, prefix, strict=False)
    )


def _prunable(err: ErrorDetails) -> Loc | None:
    """The path to leave out so the rest of its section can still be checked."""
    loc: Loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return loc
    if err["type"] == "missing":
        return None
    for prefix in _INERT:
        if _matches(loc, prefix):
            return loc[: len(prefix)]
    return None


def _remove(data: Any, loc: Loc) -> None:
    for part in loc[:-1]:
        data = data[part]
    if isinstance(data, dict):
        data.pop(loc[-1], None)


def _valid_sections(doc: Document, errors: list[ErrorDetails]) -> tuple[Sections, list[Loc]]:
    """Re-validate, one by one, what the errors did not touch: leave out wrong fields that
    no cross-field check reads, drop sections and list items with other errors."""
    data: dict[str, Any] = copy.deepcopy(doc.data)
    pruned: list[Loc] = []
    bad: list[Loc] = []
    for err in errors:
        cut = _prunable(err)
        if cut is None:
            bad.append(tuple(err["loc"]))
        else:
            pruned.append(cut)
    pruned = list(dict.fromkeys(pruned))  # once each, in order
    for cut in sorted(pruned, key=len, reverse=True):
        _remove(data, cut)
    bad_branches = _Branches(bad)

    def ok(loc: Loc) -> bool:
        return not bad_branches.below(loc)

    def section(key: str, model: type[BaseModel], required: bool) -> Any:
        if not ok((key,)) or (required and key not in data):
            return None
        try:
            return model.model_validate(data.get(key) or {})
        except ValidationError:
            return None

    def items(key: str, model: type[BaseModel]) -> tuple[list[tuple[int, Any]], bool]:
        value = data.get(key, [])
        if not isinstance(value, list):
            return [], False
        good = []
        for i, v in enumerate(value):
            if ok((key, i)):
                with contextlib.suppress(ValidationError):
                    good.append((i, model.model_validate(v)))
        return good, len(good) == len(value)

    nodes, nodes_complete = items("nodes", NodeSpec)
    pools, pools_complete = items("pools", PoolSpec)
    sections = Sections(
        kubernetes=section("kubernetes", KubernetesSpec, True),
        control_plane=section("controlPlane", ControlPlaneSpec, True),
        etcd=section("etcd", EtcdSpec, False),
        network=section("network", NetworkSpec, True),
        providers=section("providers", ProvidersSpec, False),
        nodes=nodes,
        pools=pools,
        complete=nodes_complete and pools_complete,
    )
    return sections, pruned


class _Branches:
    """Document paths, asked about in time proportional to one path (thousands of
    errors must not make the checks quadratic)."""

    def __init__(self, paths: list[Loc]) -> None:
        self.paths = set(paths)
        self.prefixes = {path[:n] for path in paths for n in range(len(path) + 1)}

    def below(self, loc: Loc) -> bool:
        """A path lies at or under loc."""
        return loc in self.prefixes

    def touches(self, loc: Loc) -> bool:
        """A path lies at or under loc, or above it."""
        return self.below(loc) or any(loc[:n] in self.paths for n in range(len(loc)))
