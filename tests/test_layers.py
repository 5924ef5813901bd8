"""The house: each folder of the package a layer, whose ``__init__`` says which layers it may import ("May
import: …"); imports follow those rules, no cycle, no module over about 400 lines, each module imports alone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dagster_nix_builder"
MAX_LINES = 420  # "about 400"
PURE_NIX_LAYER = "nix"  # its modules import no Dagster
TOP = "dagster_nix_builder"  # the top-level modules (__init__, definitions): the assembly
RULE = re.compile(r"^May import: (.+)\.$", re.MULTILINE)


def layer_of(module: str) -> str:
    """A module's layer is the folder it lives in under the package (its subpackages included), or the top."""
    first = module.split(".")[0]
    return first if (PACKAGE / first / "__init__.py").is_file() else TOP


def layers() -> dict[str, set[str]]:
    """Each layer and the layers it may import, read from the ``May import:`` line of its ``__init__``."""
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    rules = {}
    for layer in [TOP, *folders]:
        init = PACKAGE / "__init__.py" if layer == TOP else PACKAGE / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        found = RULE.findall(doc)
        assert len(found) == 1, f"{init}: its docstring should say once what the layer may import ('May import: ….')"
        rule = found[0]
        if rule == "nothing else of this package":
            rules[layer] = set()
        elif rule == "every layer":
            rules[layer] = set(folders) - {layer}
        else:
            rules[layer] = {name.strip() for name in rule.split(",")}
            unknown = rules[layer] - set(folders)
            assert not unknown, f"{init}: 'May import:' names {sorted(unknown)}, which are no folders of {PACKAGE}"
    return rules


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


def test_the_layers_point_down():
    """The rules themselves: no layer may import one that may import it back (through others)."""
    rules = layers()
    assert rules[PURE_NIX_LAYER] == set(), f"{PURE_NIX_LAYER}/ is the bottom: it may import nothing else"

    def below(layer: str, seen: tuple[str, ...]) -> None:
        for lower in sorted(rules[layer]):
            assert lower not in seen, "layers that may import each other: " + " -> ".join([*seen, lower])
            below(lower, (*seen, lower))

    for layer in rules:
        below(layer, (layer,))


def test_every_module_imports_its_own_layer_and_those_its_layer_may():
    rules = layers()
    wrong = []
    for name, path in modules().items():
        own = layer_of(name)
        for target, _ in internal_imports(name, path):
            other = layer_of(target)
            if other != own and other not in rules[own]:
                allowed = sorted(rules[own]) or "nothing"
                wrong.append(f"{name} ({own}/, may import {allowed}) imports {target} ({other}/)")
    assert not wrong, "imports its layer does not allow:\n" + "\n".join(wrong)


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
    doc = ast.get_docstring(ast.parse((PACKAGE / PURE_NIX_LAYER / "__init__.py").read_text())) or ""
    assert "no Dagster import" in doc, "the Nix layer's docstring states its rule"
    for name, path in modules().items():
        if layer_of(name) != PURE_NIX_LAYER:
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
