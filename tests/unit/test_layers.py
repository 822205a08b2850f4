"""The package structure, measured from the import statements themselves (ast, lazy imports and
``TYPE_CHECKING`` blocks included), independently of import-linter's own graph."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["cli", "api", "router", "policies", "experts", "core"]
# Which top-level package may import which (docs/architecture.md).
ALLOWED = {
    "cli": {"api", "router", "policies", "experts", "core"},
    "api": {"router", "core"},
    "router": {"policies", "experts", "core"},
    "policies": {"core"},
    "experts": {"core"},
    "core": set(),
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0] + ".__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    top, units, why = defaultdict(set), defaultdict(set), defaultdict(list)
    for module, path in mods.items():
        for target in _imports(module, path, mods):
            a, b = module.split(".")[0], target.split(".")[0]
            if a != b:
                top[a].add(b)
                why[(a, b)].append(f"{module} -> {target}")
            if _unit(module) != _unit(target):
                units[_unit(module)].add(_unit(target))
    return mods, top, units, why


def test_top_level_arrows_point_down_only(graph):
    _, top, _, why = graph
    wrong = [line for a, targets in top.items() for b in targets - ALLOWED[a] for line in why[(a, b)]]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
    assert not _cycles(top)


def test_no_two_units_import_each_other(graph):
    _, _, units, _ = graph
    assert _cycles(units) == []


def test_the_scan_sees_a_cycle_when_there_is_one():
    # The check itself must be able to fail.
    assert _cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}) == [["a.x", "a.y", "a.z"]]


def test_modules_stay_small_and_router_parts_say_what_they_own(graph):
    mods, *_ = graph
    big = {m: n for m, p in mods.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert not big, f"modules over ~400 lines: {big}"
    for sub in sorted(p.parent for p in (ROOT / "router").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "May import" in doc or "imports nothing" in (doc or ""), f"router/{sub.name} lacks its docstring"
