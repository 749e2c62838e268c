"""Pipelines as data: the ordered stages in ``pipelines/<name>.yaml``.

A stage names the nodes it targets (by role), the stages it needs, how it
converges (the provider, or Ansible roles) and the testinfra module that proves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision.errors import BadInput
from provision.paths import data_dir

NODE_ROLES = ("control-plane", "etcd", "worker")
STAGE_GROUPS = ("control_plane", "etcd", "workers", "kube_nodes")  # clustervars.groups


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    targets: tuple[str, ...]
    verify: str
    requires: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    # Work of a serial stage that does not depend on the order: "role" or
    # "role:tasks_file" (roles/<role>/tasks/<tasks_file>.yml), run on every target
    # node together before the serial play (which then sees provision_prepared).
    prepare: tuple[str, ...] = ()
    provider_action: str | None = None
    serial: int = 0
    run_once: bool = False
    # The inventory groups (provision/clustervars.GROUPS, plus kube_nodes) whose
    # membership the stage's roles read; None: every node. Only they enter the stage
    # hash, so adding a worker does not re-converge etcd on the control plane.
    sees: tuple[str, ...] | None = None

    @property
    def role_names(self) -> tuple[str, ...]:
        """Every role whose files decide what the stage does (its input hash)."""
        names = [entry.split(":")[0] for entry in self.prepare] + list(self.roles)
        return tuple(dict.fromkeys(names))

    def targets_node(self, node_roles: set[str]) -> bool:
        return "all" in self.targets or bool(node_roles & set(self.targets))


@dataclass(frozen=True)
class Pipeline:
    name: str
    description: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)
    source: Path | None = None

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise BadInput(f"unknown stage {name!r}; stages are: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def narrowed(self, until: str | None = None, only: str | None = None) -> list[Stage]:
        """The stages a run executes, in order, after --until / --only."""
        if only and until:
            raise BadInput("--only and --until cannot be combined: --only runs one stage")
        if only:
            return [self.stage(only)]
        if until:
            last = self.names.index(self.stage(until).name)
            return list(self.stages[: last + 1])
        return list(self.stages)


def pipelines_dir() -> Path:
    return data_dir("pipelines")


def load_pipeline(name: str = "cluster", directory: Path | None = None) -> Pipeline:
    path = (directory or pipelines_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise BadInput(f"no pipeline {name!r}: {path} does not exist")
    data = yaml.safe_load(path.read_text())
    return parse_pipeline(data, path)


def parse_pipeline(data: Any, path: Path) -> Pipeline:
    def bad(where: str, what: str) -> BadInput:
        return BadInput(f"{path}: {where}: {what}")

    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise bad("top level", "expected a mapping with a 'stages' list")
    stages: list[Stage] = []
    seen: set[str] = set()
    known_keys = {"name", "description", "targets", "requires", "converge", "verify",
                  "serial", "run_once", "sees"}
    for i, raw in enumerate(data["stages"]):
        where = f"stages[{i}]"
        if not isinstance(raw, dict) or "name" not in raw:
            raise bad(where, "each stage needs at least a name")
        unknown = set(raw) - known_keys
        if unknown:
            raise bad(where, f"unknown keys {sorted(unknown)}; allowed: {sorted(known_keys)}")
        name = str(raw["name"])
        targets = tuple(raw.get("targets") or ["all"])
        for target in targets:
            if target != "all" and target not in NODE_ROLES:
                raise bad(f"{where}.targets", f"{target!r} is not a node role or 'all'")
        requires = tuple(raw.get("requires") or ())
        for need in requires:
            if need not in seen:
                raise bad(f"{where}.requires", f"{need!r} must be an earlier stage")
        converge = raw.get("converge") or {}
        roles = tuple(converge.get("roles") or ())
        provider_action = converge.get("provider")
        if bool(roles) == bool(provider_action):
            raise bad(f"{where}.converge", "give exactly one of 'roles' or 'provider'")
        prepare = tuple(str(entry) for entry in converge.get("prepare") or ())
        if prepare and not roles:
            raise bad(f"{where}.converge.prepare", "only a stage of roles can prepare")
        for entry in prepare:
            if not re.fullmatch(r"[a-z0-9_]+(:[a-z0-9_]+)?", entry):
                raise bad(f"{where}.converge.prepare",
                          f"{entry!r}: expected 'role' or 'role:tasks_file'")
        sees = raw.get("sees")
        if sees is not None and (not isinstance(sees, list)
                                 or not set(sees) <= set(STAGE_GROUPS)):
            raise bad(f"{where}.sees", f"a list of groups among {sorted(STAGE_GROUPS)}")
        stages.append(
            Stage(
                name=name,
                description=str(raw.get("description", "")),
                targets=targets,
                verify=str(raw.get("verify", name.replace("-", "_"))),
                requires=requires,
                roles=roles,
                prepare=prepare,
                provider_action=provider_action,
                serial=int(raw.get("serial", 0)),
                run_once=bool(raw.get("run_once", False)),
                sees=tuple(sees) if sees is not None else None,
            )
        )
        seen.add(name)
    return Pipeline(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        stages=tuple(stages),
        source=path,
    )
