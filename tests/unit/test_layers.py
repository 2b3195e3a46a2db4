"""The import layers, read from every module's source (ast): no import of a higher layer, no package
importing a sibling of its own layer, no cycle, and project imports at the top of library modules.
The order is written here and in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tinyformer"

# top to bottom; a module may import its own package, or anything on a lower layer
LAYERS: list[tuple[str, ...]] = [
    ("tinyformer.__main__",),
    ("tinyformer.cli",),  # the dispatcher: imports the chosen verb's module by name
    ("tinyformer.verbs",),
    ("tinyformer.lab", "tinyformer.lm"),  # task runs, language-model runs: side by side
    ("tinyformer.train",),  # the engine both share, the run directory with it
    ("tinyformer.model", "tinyformer.tasks", "tinyformer.data"),
    ("tinyformer.tokenizer",),
    ("tinyformer.config",),
    ("tinyformer.batch", "tinyformer.fileio"),
    ("tinyformer.errors",),
    ("tinyformer",),  # the package face: __version__ only
]
# the modules allowed imports inside functions (to start a verb without importing torch)
LAZY_ALLOWED = ("tinyformer.cli", "tinyformer.verbs")


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    for path in sorted(PACKAGE.rglob("_*.c")):  # C extensions import nothing of the project
        out[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    return out


MODULES = module_names()


def unit(module: str) -> str:
    """The layer entry a module belongs to: its longest prefix among LAYERS."""
    best = ""
    for entries in LAYERS:
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > len(best):
                best = entry
    return best


def layer(module: str) -> int:
    return next(i for i, entries in enumerate(LAYERS) if unit(module) in entries)


def imports(module: str, path: Path, source: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import in the module's source."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def add(name: str, line: int, nested: bool) -> None:
        if name == "tinyformer" or name.startswith("tinyformer."):
            while name not in MODULES and "." in name:  # a name from a module, not a module
                name = name.rpartition(".")[0]
            found.append((name, line, nested))

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno, nested)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in child.names:  # `from P import M` names module P.M when there is one
                    full = f"{base}.{alias.name}"
                    add(full if full in MODULES else base, child.lineno, nested)
            visit(child, inner)

    visit(tree, False)
    return found


def problems(sources: dict[str, str] | None = None) -> list[str]:
    sources = sources or {}
    out = []
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        graph[module] = set()
        if path.suffix != ".py":
            continue
        for target, line, nested in imports(module, path, sources.get(module)):
            if target == module:
                continue
            graph[module].add(target)
            where = f"{path.relative_to(ROOT)}:{line}"
            if layer(target) < layer(module):
                out.append(f"{where}: {module} imports {target}, a higher layer")
            elif layer(target) == layer(module) and unit(target) != unit(module):
                out.append(f"{where}: {module} imports {target}, a sibling on its own layer")
            if nested and not unit(module).startswith(LAZY_ALLOWED):
                out.append(f"{where}: {module} imports {target} inside a function")
    # cycles: depth-first search over the module graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                out.append("cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module)
    return out


def test_every_module_is_on_a_layer():
    assert [m for m in MODULES if not unit(m)] == []


def test_no_import_runs_up_a_layer_or_round_a_cycle():
    assert problems() == []


@pytest.mark.parametrize("plant, expect", [
    ("from tinyformer.verbs import train\n", "a higher layer"),
    ("from tinyformer.lm import run\n", "a sibling on its own layer"),
    ("def f():\n    from tinyformer import fileio\n", "inside a function"),
])
def test_the_check_sees_a_planted_import(plant, expect):
    source = MODULES["tinyformer.lab.setup"].read_text(encoding="utf-8") + "\n" + plant
    found = problems({"tinyformer.lab.setup": source})
    assert any("tinyformer/lab/setup.py" in p and expect in p for p in found), found


def test_the_check_sees_a_planted_cycle():
    source = MODULES["tinyformer.errors"].read_text(encoding="utf-8") + "\nfrom tinyformer import fileio\n"
    assert any(p.startswith("cycle:") and "tinyformer.errors" in p for p in problems({"tinyformer.errors": source}))
