"""The package's shape, as docs/architecture.md draws it: layers that import only
downwards, no import cycle between modules, no private name used across modules, and
no ``Any`` standing for an inventory, node, cluster, engine or context."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "provision"

# Bottom to top: a module may import its own layer and the ones before it.
LAYERS: list[tuple[str, ...]] = [
    ("provision", "provision.errors", "provision.paths", "provision.names"),
    ("provision.inventory", "provision.pipeline", "provision.clustervars", "provision.releases",
     "provision.nodefacts", "provision.pki"),
    ("provision.report",),
    ("provision.lab", "provision.executors"),
    ("provision.artifacts",),
    ("provision.providers",),
    ("provision.observe",),
    ("provision.plan",),
    ("provision.run",),
    ("provision.commands", "provision.cli", "provision.__main__", "provision.checks"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, found = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return found


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every provision import."""
    out = []
    package = module if tree is not None and module.count(".") >= 0 else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names
                    if a.name.startswith("provision")]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                target = ".".join(base[: len(base) - node.level + 1] + ([target] if target
                                                                        else []))
            if target.startswith("provision"):
                out.append((target, [a.name for a in node.names], node.lineno))
    return out


SOURCES = sources()


def test_every_module_has_a_layer():
    for module in SOURCES:
        layer_of(module)


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, tree in SOURCES.items():
        for target, _, line in imports(module, tree):
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module}:{line} imports {target} (a higher layer)")
    assert wrong == []


def test_no_private_name_crosses_a_module():
    wrong = []
    for module, tree in SOURCES.items():
        for target, names, line in imports(module, tree):
            for name in names:
                if name.startswith("_") and not name.endswith("__") and target != module:
                    wrong.append(f"{module}:{line} imports {name} from {target}")
            if any(part.startswith("_") and part != "__main__" for part in target.split(".")):
                wrong.append(f"{module}:{line} imports private module {target}")
    assert wrong == []


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in SOURCES}
    for module, tree in SOURCES.items():
        for target, names, _ in imports(module, tree):
            # "from package import submodule" depends on the submodule
            for name in names or [""]:
                candidate = f"{target}.{name}" if name else target
                dep = candidate if candidate in SOURCES else target
                if dep in SOURCES and dep != module:
                    graph[module].add(dep)
    # a package's __init__ re-exporting its own modules is not a cycle of design
    for module in graph:
        graph[module] = {d for d in graph[module] if not module.startswith(d + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


MODEL_WORDS = r"(inv|inventory|node|nodes|cluster|engine|ctx|context|provider|settings)"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_any_for_model_objects(path):
    pattern = re.compile(rf"\b{MODEL_WORDS}\s*:\s*(Any|Sequence\[Any\]|list\[Any\])")
    hits = [f"{path}:{i}: {line.strip()}"
            for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
