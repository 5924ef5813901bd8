"""The house: imports point down only, no cycle, no module over about 400 lines, each module imports alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dagster_nix_builder"
MAX_LINES = 420  # "about 400"

# Lower layers never import higher ones. 0: Nix, no Dagster; 1: Dagster adapters; 2: following upstream;
# 3: the assembly (component, definitions, CLI).
LAYERS = {
    0: ("errors", "processes", "log_format", "nix_output", "nix_settings", "nix_cli", "graph", "outcomes", "build",
        "reporting", "flox_build", "nixpkgs_versions", "binary_cache", "package_index",
        "reproducible", "provenance", "flox_publish"),
    1: ("translator", "results", "resource", "assets", "flox", "publish"),
    2: ("pins", "git_upstream", "update", "update_*", "upstream", "upstream.*", "sensors"),
    3: ("component", "definitions", "defs", "defs.*", "cli", "__main__", "__init__"),
}


def layer_of(module: str) -> int:
    for layer, patterns in LAYERS.items():
        for pattern in patterns:
            if module == pattern or (pattern.endswith("*") and module.startswith(pattern[:-1])):
                return layer
    raise AssertionError(f"module {module} is in no layer of tests/test_layers.py: give it one")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__") or "__init__"
        found[name] = path
    return found


def internal_imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module of this package, whether the import is inside a function) for each import."""
    tree = ast.parse(path.read_text())
    package_parts = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        nested = any(
            isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef)
            for parent in ast.walk(tree)
            if node in ast.walk(parent) and parent is not node
        )
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("dagster_nix_builder"):
                target = node.module.removeprefix("dagster_nix_builder").lstrip(".")
            else:
                continue
            names = [alias.name for alias in node.names]
            if not node.module or target in {"", *()} or target == ".".join(package_parts):
                out += [(f"{target}.{n}".lstrip(".") if target else n, nested) for n in names]
            else:
                out.append((target, nested))
        else:
            for alias in node.names:
                if alias.name.startswith("dagster_nix_builder."):
                    out.append((alias.name.removeprefix("dagster_nix_builder."), nested))
    known = modules()
    return [(t, nested) for t, nested in out if t in known]


def test_every_module_has_a_layer_and_imports_point_down():
    wrong = []
    for name, path in modules().items():
        for target, _ in internal_imports(name, path):
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_no_import_cycle_and_no_import_inside_a_function():
    graph = {name: {t for t, _ in internal_imports(name, path)} for name, path in modules().items()}
    nested = [
        f"{n} imports {t} inside a function"
        for n, p in modules().items()
        for t, inner in internal_imports(n, p)
        if inner
    ]
    assert not nested, "\n".join(nested)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if not state.get(nxt):
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])


def test_the_nix_layer_imports_no_dagster():
    for name, path in modules().items():
        if layer_of(name) != 0:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            roots = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(r == "dagster" or r.startswith("dagster.") for r in roots), f"{name} imports {roots}"


def test_no_module_over_about_400_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: c for n, c in long.items() if c > MAX_LINES}, long


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_imports_alone(name: str):
    module = "dagster_nix_builder" + ("" if name == "__init__" else f".{name}")
    if name in {"__main__"}:
        pytest.skip("runs the CLI when imported")
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": "/nonexistent-unused"})
    assert proc.returncode == 0, proc.stderr[-2000:]
