"""The package's layering, checked on every module's imports (function-level ones too).

A module imports from its own layer or below; among the stages, a later stage may use an
earlier stage's public names (distill -> teach), never the reverse; no import cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import robodistill

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "robodistill": ROOT / "robodistill",
    "robodistill.envs": ROOT / "envs",
    "robodistill.policies": ROOT / "policies",
    "robodistill.deploy": ROOT / "deploy",
}

LAYERS: list[tuple[str, ...]] = [
    # components: simulators, torch modules, the torch-free runtime (no orchestration)
    ("envs", "policies", "deploy", ""),
    ("config", "errors"),
    ("core", "data"),
    ("training",),
    # the stages, in pipeline order: each may use the ones before it
    ("collect",),
    ("teach",),
    ("distill",),
    ("evaluate",),
    ("export",),
    ("control",),
    ("stages", "report"),
    ("pipeline", "cli"),
]
"""Lowest first. An entry names a top-level module or subpackage of ``robodistill``
(``""`` is the package's own ``__init__``). The one declaration of the layering."""

RANK = {group: i for i, layer in enumerate(LAYERS) for group in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if prefix == "robodistill" and path.relative_to(folder).parts[0] in {
                "envs",
                "policies",
                "deploy",
            }:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module or a name inside one) refers to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Our modules that ``module`` imports anywhere in its file (top-level or in functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("robodistill") else None
            if target and target != module:
                found.add(target)
    # "from robodistill.x import y" also names the package robodistill.x; keep the deepest.
    return {t for t in found if not any(o != t and o.startswith(t + ".") for o in found)}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_belongs_to_a_declared_layer():
    unknown = sorted(m for m in MODULES if _group(m) not in RANK)
    assert not unknown, f"modules in no layer of LAYERS: {unknown}; add their group there"


def test_no_import_goes_up_a_layer():
    upward = [
        f"{m} ({_group(m) or 'robodistill'}) imports {t} ({_group(t)})"
        for m, targets in GRAPH.items()
        for t in targets
        if RANK[_group(t)] > RANK[_group(m)]
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    # Tarjan's strongly connected components; any component of 2+ modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(
    "importer, imported, allowed",
    [("distill", "teach", True), ("teach", "distill", False), ("core", "training", False)],
)
def test_the_layer_rule_itself(importer, imported, allowed):
    assert (RANK[imported] <= RANK[importer]) is allowed


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    module = "robodistill.core.fake_for_test"
    path = tmp_path / "fake_for_test.py"
    path.write_text(
        "def f():\n    from robodistill.training import selection\n"
        "from ..data import store\nimport robodistill.stages\n"
    )
    monkeypatch.setitem(MODULES, module, path)
    assert imports_of(module) == {
        "robodistill.training.selection",
        "robodistill.data.store",
        "robodistill.stages",
    }


def test_no_module_is_past_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules past 600 lines: {long}"


def test_the_package_docstring_names_real_modules():
    for name in ("config", "core", "data", "training", "teach", "distill", "stages"):
        assert f"``{name}" in (robodistill.__doc__ or ""), name
