"""The package graph read from the derivations themselves: A depends on B when B's derivation is the nearest
selected derivation reachable through A's inputs, so an unselected wrapper between two packages keeps their
edge, and a package set of any shape (a flake, nixpkgs' ``python3Packages``) gets its edges without knowing
how it was written.

The ``.drv`` files are read from the store directly (the evaluation just wrote them): one file read each,
no Nix process, so thousands of packages and their closures take well under a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster_nix_builder.nix.errors import NixPackageSetError


def _read_string(text: str, i: int) -> tuple[str, int]:
    """The ATerm string starting at ``text[i]`` (a quote) and the index after it."""
    assert text[i] == '"'
    out: list[str] = []
    i += 1
    while True:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            c = {"n": "\n", "t": "\t", "r": "\r"}.get(text[i], text[i])
        out.append(c)
        i += 1


def _skip_list(text: str, i: int) -> int:
    """The index after the ATerm list starting at ``text[i]`` (``[``), strings read as strings."""
    depth = 0
    while True:
        c = text[i]
        if c == '"':
            _, i = _read_string(text, i)
            continue
        if c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def input_derivations(text: str) -> list[str]:
    """The ``inputDrvs`` of a ``.drv`` file's text: ``Derive([outputs],[("/nix/store/…drv",[…]),…],…)``."""
    if not text.startswith("Derive(["):
        raise ValueError("not a derivation (no 'Derive([')")
    i = _skip_list(text, len("Derive(")) + 1  # the outputs, then the comma
    if text[i] != "[":
        raise ValueError("no list of input derivations after the outputs")
    inputs, i = [], i + 1
    while text[i] != "]":
        if text[i] == "(":
            path, i = _read_string(text, i + 1)
            inputs.append(path)
            i = _skip_list(text, i + 1) + 1  # its outputs, then ')'
        else:
            i += 1  # the comma between entries
    return inputs


def read_inputs(drv_path: str) -> list[str]:
    """The input derivations of ``drv_path`` (a file in the store)."""
    try:
        return input_derivations(Path(drv_path).read_text())
    except (OSError, ValueError, IndexError) as exc:
        raise NixPackageSetError(f"Cannot read the derivation {drv_path} to find its inputs: {exc}") from None


def nearest_selected(selected: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, set[str]]:
    """For each derivation of ``selected`` (``.drv`` path -> attribute) and of ``extra`` (e.g. a flake's
    checks), the attributes whose derivations are the nearest selected ones through its inputs: the walk
    stops at a selected derivation and passes through any other. Memoised per derivation, iterative (deep
    bootstrap chains), so each ``.drv`` of the closure is read once."""
    nearest: dict[str, frozenset[str]] = {}  # unselected drv -> the attributes it leads to

    def reached_through(drv: str) -> set[str]:
        found: set[str] = set()
        for dep in read_inputs(drv):
            found |= {selected[dep]} if dep in selected else set(nearest_of(dep))
        return found

    def nearest_of(root: str) -> frozenset[str]:
        # Post-order over the unselected derivations below ``root``, without recursion.
        stack: list[tuple[str, list[str] | None]] = [(root, None)]
        while stack:
            drv, inputs = stack.pop()
            if drv in nearest:
                continue
            if inputs is None:
                inputs = read_inputs(drv)
                stack.append((drv, inputs))
                stack.extend((dep, None) for dep in inputs if dep not in selected and dep not in nearest)
                continue
            found: set[str] = set()
            for dep in inputs:
                found |= {selected[dep]} if dep in selected else nearest.get(dep, frozenset())
            nearest[drv] = frozenset(found)
        return nearest[root]

    return {drv: reached_through(drv) for drv in [*selected, *extra]}


def drop_aliases(packages: dict[str, Any]) -> dict[str, str]:
    """Remove each attribute whose derivation another selected attribute has too (a flake's ``default``): one
    asset per derivation. Returns them, alias -> the attribute kept (not ``default``, else the first by name)."""
    kept: dict[str, str] = {}
    aliases = {}
    for attr in sorted(packages, key=lambda a: (a == "default", a)):
        drv = packages[attr].get("drvPath")
        if packages[attr].get("evalFailed") or not drv:
            continue
        if drv in kept:
            aliases[attr] = kept[drv]
            del packages[attr]
        else:
            kept[drv] = attr
    return aliases


def derivation_deps(packages: dict[str, Any], checks: Mapping[str, Any], checks_path: Sequence[str] = ()) -> None:
    """Set each evaluated package's ``deps`` from its derivation (:mod:`derivations`): the selected packages
    whose derivations are nearest through its inputs; one that failed keeps its formal arguments' (a
    directory's) or none; a callPackage file's formal arguments where they reach the same packages. ``argDeps``
    and ``drvDeps`` keep both. A flake check that reaches exactly one
    package becomes that package's test; any other stands on its own as a package of the graph."""
    by_drv = {
        info["drvPath"]: attr for attr, info in packages.items() if not info.get("evalFailed") and info.get("drvPath")
    }
    check_drvs = {c["drvPath"] for c in checks.values() if not c.get("evalFailed")}
    nearest = nearest_selected(by_drv, check_drvs)
    for attr, info in packages.items():
        info["argDeps"] = list(info.get("deps") or [])
        if not info.get("evalFailed") and info.get("drvPath"):
            info["deps"] = sorted(nearest[info["drvPath"]] - {attr})
    # A callPackage file's formal arguments are its author's direct dependencies: they are the edges when they
    # reach the same packages upstream as the derivation does (the bootstrap scope's derivations take a whole
    # Python closure as inputs, which would draw every transitive dependency as a direct edge).
    drv_edges = {attr: list(info.get("deps") or []) for attr, info in packages.items()}
    for attr, info in packages.items():
        info["drvDeps"] = drv_edges[attr]
    arg_edges = {attr: info["argDeps"] for attr, info in packages.items()}
    for attr, info in packages.items():
        if info["argDeps"] and _closure(attr, arg_edges) == _closure(attr, drv_edges):
            info["deps"] = sorted(info["argDeps"])
    for name, check in sorted(checks.items()):
        reached = sorted(nearest[check["drvPath"]]) if not check.get("evalFailed") else []
        test_name = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "check"
        check = {**check, "attrPath": [*checks_path, name], "flakeCheck": name}
        if check.get("evalFailed"):  # it stands on its own, and fails alone with Nix's error (graph.py)
            own = name if name not in packages else f"check-{name}"
            packages[own] = {"file": None, "deps": [], "argDeps": [], "drvPath": None, "outputs": {}, "tests": {},
                             "evalFailed": True, "attrPath": check["attrPath"], "flakeCheck": name}  # fmt: skip
        elif len(reached) == 1 and test_name not in packages[reached[0]]["tests"]:
            packages[reached[0]]["tests"][test_name] = check
        else:
            own = name if name not in packages else f"check-{name}"
            packages[own] = {
                "file": None, "deps": reached, "argDeps": [], "drvPath": check["drvPath"], "outputs": check["outputs"],
                "description": check.get("description") or f"flake check {name}", "tests": {}, "evalFailed": False,
                "attrPath": check["attrPath"], "flakeCheck": name,
            }  # fmt: skip


def _closure(attr: str, edges: Mapping[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(edges.get(attr, ()))
    while stack:
        if (dep := stack.pop()) not in seen:
            seen.add(dep)
            stack.extend(edges.get(dep, ()))
    return seen
