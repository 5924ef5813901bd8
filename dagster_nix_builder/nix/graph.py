"""The package graph, asked of Nix: attributes of ``<dir>/default.nix`` and the formal arguments of
``<dir>/packages/<attr>.nix`` (via ``builtins.functionArgs`` in the shipped ``graph.nix``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.cli import NixCli, log_command
from dagster_nix_builder.nix.errors import NixDependencyCycleError, NixEvalError, NixPackageSetError, missing_name_hint
from dagster_nix_builder.nix.log_format import error_messages

# A test's name is the name of its Dagster asset check.
TEST_NAME = re.compile(r"[A-Za-z0-9_]+")


class HasNixCli(Protocol):
    """Anything that says how to run Nix, e.g. the Dagster resource."""

    def cli(self) -> NixCli: ...


def store_hash(store_path: str) -> str:
    """The 32-character hash part of a store path (``/nix/store/<hash>-name``)."""
    return Path(store_path).name.split("-", 1)[0]


@dataclass(frozen=True)
class NixTest:
    """One derivation of a package's ``passthru.tests``: its Dagster asset check. It passes when its
    output is valid, so Nix caches it by store path like any build."""

    name: str
    drv_path: str
    out_path: str
    blocking: bool = False
    """Whether packages downstream are unusable when it fails (they are then not materialized)."""
    description: str | None = None


@dataclass(frozen=True)
class NixPackage:
    """One attribute of the package set, as Nix sees it."""

    attr: str
    deps: tuple[str, ...]
    file: str | None = None
    drv_path: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None
    pname: str | None = None
    description: str | None = None
    main_program: str | None = None
    executables: tuple[str, ...] | None = None
    tests: Mapping[str, NixTest] = field(default_factory=dict)
    """The package's ``passthru.tests`` by name."""
    eval_error: str | None = None
    """Why the package's derivation failed to evaluate (then ``drv_path`` and ``outputs`` are a stand-in
    that is never valid, so building the package fails with Nix's error); None when it evaluates."""

    @property
    def drv_hash(self) -> str | None:
        """Hash part of the derivation path: changes whenever the expression or a source changes."""
        return store_hash(self.drv_path) if self.drv_path else None

    @property
    def out_path(self) -> str | None:
        """The ``out`` output path (or the first output)."""
        if "out" in self.outputs:
            return self.outputs["out"]
        return next(iter(self.outputs.values()), None)

    @property
    def is_python(self) -> bool:
        """Python packages of the set have a ``dist`` output holding the wheel."""
        return "dist" in self.outputs


@dataclass(frozen=True)
class NixPackageGraph:
    """All packages of a package-set directory, keyed by attribute name."""

    nix_dir: str
    packages: Mapping[str, NixPackage]

    def __getitem__(self, attr: str) -> NixPackage:
        return self.packages[attr]

    def __contains__(self, attr: object) -> bool:
        return attr in self.packages

    def __iter__(self):
        return iter(self.packages)

    def __len__(self) -> int:
        return len(self.packages)

    def topological_order(self, attrs: Iterable[str] | None = None) -> list[str]:
        """``attrs`` (default: all) ordered so every package comes after its dependencies."""
        wanted = set(self.packages if attrs is None else attrs)
        return [a for a in _toposort(self.packages) if a in wanted]

    def upstream(self, attr: str) -> set[str]:
        """All transitive dependencies of ``attr`` (excluding itself)."""
        seen: set[str] = set()
        stack = list(self.packages[attr].deps)
        while stack:
            a = stack.pop()
            if a not in seen:
                seen.add(a)
                stack.extend(self.packages[a].deps)
        return seen

    def downstream(self, attr: str) -> set[str]:
        """All packages that transitively depend on ``attr``."""
        return {a for a in self.packages if attr in self.upstream(a)}

    def require(self, targets: Iterable[tuple[str, str | None]]) -> None:
        """Raise :class:`NixPackageSetError` naming the first of ``targets`` (attribute, test name or None)
        that is not in the graph: an unknown package (and the known ones) or test (and the package's)."""
        targets = list(targets)
        unknown = sorted({attr for attr, _ in targets if attr not in self.packages})
        if unknown:
            raise NixPackageSetError(
                f"Unknown Nix package(s) {', '.join(map(repr, unknown))} in {self.nix_dir}; "
                f"known: {', '.join(sorted(self.packages))}"
            )
        for attr, test in targets:
            package = self.packages[attr]
            if test is not None and test not in package.tests:
                raise NixPackageSetError(
                    f"Package {attr} has no test {test!r} (passthru.tests of {package.file or attr}: "
                    f"{', '.join(package.tests) or 'none'})"
                )

    def by_drv_path(self) -> dict[str, str]:
        """Map derivation path -> attribute."""
        return {p.drv_path: a for a, p in self.packages.items() if p.drv_path}


def _toposort(packages: Mapping[str, NixPackage]) -> list[str]:
    """Dependencies first; iterative, so long chains (thousands of packages) don't hit the recursion limit."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(packages):
        if state.get(root):
            continue
        path = [root]
        stack = [iter(sorted(packages[root].deps))]
        state[root] = 1
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(done)
                continue
            if state.get(dep) == 2:
                continue
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], dep]
                raise NixDependencyCycleError(cycle, {a: packages[a].file for a in cycle if packages[a].file})  # type: ignore[misc]
            state[dep] = 1
            path.append(dep)
            stack.append(iter(sorted(packages[dep].deps)))
    return order


def graph_nix_path() -> str:
    """Path of the ``graph.nix`` helper shipped in this package."""
    return str(resources.files("dagster_nix_builder.nix").joinpath("graph.nix"))


def _eval_error(command: Sequence[str], proc: subprocess.CompletedProcess[str]) -> NixEvalError:
    errors = error_messages(proc.stderr)
    where = errors.where
    hint = missing_name_hint(errors.messages)
    return NixEvalError(
        command,
        proc.returncode,
        [*errors.messages, *([hint] if hint else [])],
        file=where.file if where else None,
        line=where.line if where else None,
        column=where.column if where else None,
    )


def _evaluate(nix: NixCli, nix_dir: str, with_info: bool, only: str = "") -> dict:
    command = nix.instantiate_command(
        "--eval",
        "--json",
        "--strict",
        graph_nix_path(),
        "--argstr",
        "dir",
        nix_dir,
        "--argstr",
        "argsJson",
        json.dumps(nix.package_args(), sort_keys=True),
        "--argstr",
        "withInfo",
        "1" if with_info else "0",
        *(["--argstr", "only", only] if only else []),
    )
    log_command(command)
    proc = processes.run(command, capture_output=True, text=True, env=nix.subprocess_env())
    if proc.returncode != 0:
        raise _eval_error(command, proc)
    return json.loads(proc.stdout)


def load_package_graph(nix: NixCli | HasNixCli) -> NixPackageGraph:
    """Evaluate the package set of ``nix.nix_dir`` and return its graph (see :func:`evaluate_package_set`)."""
    return graph_from_document(evaluate_package_set(nix))


def evaluate_package_set(nix: NixCli | HasNixCli) -> dict[str, Any]:
    """Evaluate the package set of ``nix.nix_dir``: a JSON document of what ``graph.nix`` said (``nix_dir``,
    ``packages``, and ``eval_errors`` of packages whose derivation throws), which :func:`graph_from_document`
    reads without Nix (a component keeps it as its state).

    Raises:
        NixPackageSetError: the directory has no ``default.nix``, a JSON file it reads is invalid (names
            file and line), or a test's name cannot be a check name (names the file).
        NixEvalError: Nix failed to evaluate (names file and line for syntax errors).
        NixDependencyCycleError: the packages' formal arguments form a cycle.
        NixVersionError: the Nix is older than the oldest supported.
    """
    if not isinstance(nix, NixCli):
        nix = nix.cli()
    nix.nix_version()  # fail first, and clearly, on a Nix too old for what follows
    nix_dir = nix.package_dir
    nix.check_json_inputs()
    if not (Path(nix_dir) / "default.nix").is_file():
        raise NixPackageSetError(f"No default.nix in Nix package-set directory {nix_dir!r}.")
    try:
        data = _evaluate(nix, nix_dir, with_info=True)
    except NixEvalError as info_error:
        # A cycle makes forcing the derivations recurse forever; ask for the bare graph to say so clearly.
        try:
            bare = _evaluate(nix, nix_dir, with_info=False)
        except NixEvalError:
            raise info_error from None
        _toposort(_packages(bare))
        raise
    package_graph_from_json(nix_dir, data)  # a cycle or a bad test name fails here, before any message query
    errors = {attr: _eval_error_of(nix, nix_dir, attr) for attr in data if data[attr].get("evalFailed")}
    return {"nix_dir": nix_dir, "packages": data, "eval_errors": errors}


def tree_digest(path: Path, *, exclude: Iterable[str] = (), suffixes: Iterable[str] = ()) -> str:
    """Content hash of the file ``path`` or of every file under it (relative paths and bytes, sorted order),
    leaving out ``.git`` and any file or directory named in ``exclude`` or ending in one of ``suffixes``."""
    skip, ends = {".git", *exclude}, tuple(suffixes)
    digest = hashlib.sha256()
    files = [path] if not path.is_dir() else []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.endswith(ends))
        files += [Path(root) / n for n in sorted(names) if n not in skip and not n.endswith(ends)]
    for file in files:
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        try:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        except OSError as exc:  # a dangling out-link, a missing file: its absence is its content
            digest.update(f"unreadable: {exc.__class__.__name__}".encode())
    return digest.hexdigest()


def local_sources(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the packages of an :func:`evaluate_package_set` document take from outside the package-set
    directory: each one's ``passthru.localSources`` (``root``, ``include``, ``exclude``, ``excludeSuffixes``:
    the rules of its ``builtins.path`` filter, e.g. this project's own package), in a stable order."""
    found = [info["localSources"] for info in document.get("packages", {}).values() if info.get("localSources")]
    return sorted(found, key=lambda spec: json.dumps(spec, sort_keys=True))


def local_sources_digest(sources: Iterable[Mapping[str, Any]]) -> str:
    """Content hash of the files ``sources`` select, by the rules their Nix filter applies: every path of
    ``include`` under ``root`` (a directory with all beneath it) but names in ``exclude`` (at any depth) and
    names ending in one of ``excludeSuffixes``. Without Nix, so a component's fingerprint can include it."""
    digest = hashlib.sha256()
    for spec in sources:
        digest.update(json.dumps(spec, sort_keys=True).encode())
        exclude, suffixes = spec.get("exclude", ()), spec.get("excludeSuffixes", ())
        for top in spec.get("include", ()):
            path = Path(spec["root"]) / top
            taken = path.exists() and path.name not in exclude and not path.name.endswith(tuple(suffixes))
            digest.update(f"{top}\0".encode())
            digest.update(tree_digest(path, exclude=exclude, suffixes=suffixes).encode() if taken else b"absent")
    return digest.hexdigest()


def graph_from_document(document: Mapping[str, Any]) -> NixPackageGraph:
    """The graph of an :func:`evaluate_package_set` document, without Nix."""
    return package_graph_from_json(document["nix_dir"], document["packages"], document.get("eval_errors"))


def package_graph_from_json(
    nix_dir: str, data: Mapping[str, Mapping], eval_errors: Mapping[str, str] | None = None
) -> NixPackageGraph:
    """The graph of ``data``, the JSON ``graph.nix`` gives (e.g. recorded), without asking Nix; a package
    it marks ``evalFailed`` gets its message from ``eval_errors`` (else a generic one).

    Raises:
        NixDependencyCycleError: the packages' formal arguments form a cycle.
        NixPackageSetError: a test's name cannot be a check name.
    """
    packages = _packages(data)
    _toposort(packages)
    for attr, package in packages.items():
        if data[attr].get("evalFailed"):
            error = (eval_errors or {}).get(attr) or f"{attr} failed to evaluate"
            packages[attr] = replace(package, eval_error=error)
    return NixPackageGraph(nix_dir=nix_dir, packages=packages)


def _eval_error_of(nix: NixCli, nix_dir: str, attr: str) -> str:
    """Nix's error for one package whose evaluation graph.nix caught (``tryEval`` hides the message)."""
    try:
        _evaluate(nix, nix_dir, with_info=True, only=attr)
    except NixEvalError as e:
        where = f" at {e.file}:{e.line}" if e.file and e.line else ""
        return f"{attr} failed to evaluate{where}: " + ("\n".join(e.messages) or "(Nix printed no message)")
    return f"{attr} failed to evaluate (an error Nix does not repeat on its own)"


def _packages(data: Mapping[str, Mapping]) -> dict[str, NixPackage]:
    packages = {}
    for attr, info in data.items():
        executables = info.get("executables")
        packages[attr] = NixPackage(
            attr=attr,
            deps=tuple(info.get("deps", ())),
            file=info.get("file"),
            drv_path=info.get("drvPath"),
            outputs=dict(info.get("outputs") or {}),
            version=info.get("version"),
            pname=info.get("pname"),
            description=info.get("description"),
            main_program=info.get("mainProgram"),
            executables=tuple(executables) if isinstance(executables, list) else None,
            tests=_tests(attr, info),
        )
    return packages


def _tests(attr: str, info: Mapping) -> dict[str, NixTest]:
    tests = {}
    for name, test in sorted((info.get("tests") or {}).items()):
        if not TEST_NAME.fullmatch(name):
            fixed = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "test"
            raise NixPackageSetError(
                f"{info.get('file') or attr}: passthru.tests.{name} cannot be a check name: it must be letters, "
                f"digits and '_' ([A-Za-z0-9_]+), since it names the Dagster asset check. Rename it, e.g. to {fixed}."
            )
        tests[name] = NixTest(
            name=name,
            drv_path=test["drvPath"],
            # graph.nix gives `outputs` ({"out": path}): an attribute set with `outPath` would be a string in JSON.
            out_path=(test.get("outputs") or {}).get("out") or next(iter((test.get("outputs") or {}).values()), ""),
            blocking=bool(test.get("blocking")),
            description=test.get("description"),
        )
    return tests
