"""The package's dependencies point one way: commands → features → agent → model/prompts/tools → sandbox.

A test over the source (every import, also those inside functions), so an upward import or a
cycle between packages fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cwm_agent

PACKAGE_DIR = Path(cwm_agent.__file__).resolve().parent

LAYERS: list[set[str]] = [
    {"cli"},
    {"swebench", "demo", "reports", "benchmarks", "forager", "tts", "runs"},
    {"agent"},
    {"model", "prompts", "tools"},
    {"sandbox"},
    {"errors", "__init__"},
]
"""Top to bottom: a part may import its own layer and the layers below it, never one above."""

RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """`cwm_agent.swebench.batch` -> `swebench`; `cwm_agent` -> `__init__`."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def source_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> set[str]:
    """Every cwm_agent module `module` imports, at top level or inside functions."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "cwm_agent" or name.startswith("cwm_agent.")}


def dependencies() -> dict[str, set[str]]:
    """Part -> the other parts it imports."""
    deps: dict[str, set[str]] = {}
    modules = source_modules()
    for module, path in modules.items():
        part = part_of(module)
        for target in imports_of(module, path):
            # `from cwm_agent.x import name` also lists `cwm_agent.x.name`, which may be a symbol
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            other = part_of(target)
            if other != part:
                deps.setdefault(part, set()).add(other)
    return deps


def test_every_part_has_a_layer():
    parts = {part_of(module) for module in source_modules()}
    assert parts <= set(RANK), f"parts without a layer in LAYERS: {sorted(parts - set(RANK))}"


def test_no_import_points_up():
    upward = [
        f"{part} imports {other}"
        for part, others in dependencies().items()
        for other in others
        if RANK[other] < RANK[part]
    ]
    assert not upward, "imports against the layering: " + "; ".join(sorted(upward))


def test_no_cycle_between_parts():
    deps = dependencies()
    cycles = []

    def visit(part: str, path: list[str]) -> None:
        for other in sorted(deps.get(part, ())):
            if other in path:
                cycles.append(" -> ".join(path[path.index(other) :] + [other]))
            else:
                visit(other, path + [other])

    for part in sorted(deps):
        visit(part, [part])
    assert not cycles, "cycles between parts: " + "; ".join(sorted(set(cycles)))
