"""The package graph, asked of Nix: attributes of ``<dir>/default.nix`` and the formal arguments of
``<dir>/packages/<attr>.nix`` (via ``builtins.functionArgs`` in the shipped ``graph.nix``)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from dagster_nix_builder.nix import derivations, processes
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
    attr_path: tuple[str, ...] | None = None
    """Its attribute path from the file's or flake's top when it is not the package's (a flake check)."""
    under: str = "tests"
    """Where the package holds it: ``tests`` (nixpkgs' passthru attributes are the derivation's) or
    ``passthru.tests``."""


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
    attr_path: tuple[str, ...] | None = None
    """Its attribute path from the file's or flake's top when it is not one of the set (a flake check standing
    on its own)."""
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
                cycle = [*path[path.index(dep) :], dep]
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


def _evaluate(
    nix: NixCli, with_info: bool, only: str = "", attrs: Sequence[str] | None = None, checks: bool = True
) -> dict:
    source = nix.source
    options = {
        "kind": source.kind,
        "location": source.flake_ref if source.kind == "flake" else nix.package_dir,
        "attribute": json.dumps(nix.set_path()),
        "checksJson": json.dumps(nix.checks_path()),
        "argsJson": json.dumps(nix.function_args(), sort_keys=True),
        "selectJson": json.dumps(source.regexes()["select"]),
        "excludeJson": json.dumps(source.regexes()["exclude"]),
        "withInfo": "1" if with_info else "0",
        "withChecks": "1" if checks else "0",
        "only": only,
        "attrsJson": json.dumps(list(attrs)) if attrs is not None else "",
    }
    # --read-write-mode: the derivations are written to the store, where derivations.py reads their inputs.
    mode = ["--read-write-mode"] if with_info and not only else []
    arguments = [flag for key, value in options.items() for flag in ("--argstr", key, value)]
    command = nix.instantiate_command("--eval", "--json", "--strict", *mode, graph_nix_path(), *arguments)
    log_command(command)
    proc = processes.run(command, capture_output=True, text=True, env=nix.subprocess_env())
    if proc.returncode != 0:
        raise _eval_error(command, proc)
    return json.loads(proc.stdout)


def load_package_graph(nix: NixCli | HasNixCli) -> NixPackageGraph:
    """Evaluate the package set of ``nix`` and return its graph (see :func:`evaluate_package_set`)."""
    return graph_from_document(evaluate_package_set(nix))


def _require_location(nix: NixCli) -> None:
    source, where = nix.source, nix.package_dir
    if source.kind == "directory" and not (Path(where) / "default.nix").is_file():
        raise NixPackageSetError(f"No default.nix in Nix package-set directory {where!r}.")
    if source.kind == "file" and not Path(where).is_file():
        raise NixPackageSetError(f"No Nix file {where!r} (the package set's `file`).")
    if source.kind == "flake" and source.path is not None and not (source.path / "flake.nix").is_file():
        raise NixPackageSetError(f"No flake.nix in {str(source.path)!r} (the package set's `flake`).")


def evaluate_package_set(nix: NixCli | HasNixCli) -> dict[str, Any]:
    """Evaluate the package set of ``nix``: a JSON document of what ``graph.nix`` said (``nix_dir``,
    ``packages`` with their dependencies read from the derivations, a flake's ``checks`` attached to them,
    ``eval_errors`` of packages that failed to evaluate, ``takes``: the arguments a directory's function takes),
    which :func:`graph_from_document` reads without Nix (a component keeps it as its state).

    A package that fails to evaluate fails alone: ``throw`` and ``assert`` are caught in Nix; an ``abort`` or a
    missing attribute, which end a whole evaluation, are found by evaluating halves of the set.

    Raises:
        NixPackageSetError: the location is missing, a JSON file it reads is invalid (names file and line),
            or a test's name cannot be a check name (names the file).
        NixEvalError: Nix failed to evaluate the set itself (names file and line for syntax errors).
        NixDependencyCycleError: the packages' formal arguments form a cycle.
        NixVersionError: the Nix is older than the oldest supported.
    """
    if not isinstance(nix, NixCli):
        nix = nix.cli()
    nix.nix_version()  # fail first, and clearly, on a Nix too old for what follows
    nix.check_json_inputs()
    _require_location(nix)
    errors: dict[str, str] = {}
    try:
        data = _evaluate(nix, with_info=True)
    except NixEvalError as info_error:
        # A cycle makes forcing the derivations recurse forever; ask for the bare graph to say so clearly.
        try:
            bare = _evaluate(nix, with_info=False, checks=False)
        except NixEvalError:
            raise info_error from None
        _toposort(_packages(bare["packages"]))
        data = {**bare, "checks": _evaluate(nix, with_info=True, attrs=[])["checks"]}
        data["packages"] = _isolate(nix, bare["packages"], list(bare["packages"]), errors)
    packages = data["packages"]
    skipped = sorted(attr for attr, info in packages.items() if info.get("notDerivation"))
    for attr in skipped:
        del packages[attr]
    package_graph_from_json(
        nix.package_dir, packages
    )  # a cycle or a bad test name fails here, before any message query
    errors.update({a: _eval_error_of(nix, a) for a in packages if packages[a].get("evalFailed") and a not in errors})
    aliases = derivations.drop_aliases(packages)
    derivations.derivation_deps(packages, data.get("checks") or {}, nix.checks_path())
    errors.update({a: _check_error_of(nix, info) for a, info in packages.items() if info.get("flakeCheck")
                   and info.get("evalFailed")})  # fmt: skip
    return {
        "nix_dir": nix.package_dir, "kind": nix.kind, "packages": packages, "eval_errors": errors,
        "takes": data.get("takes") or [], "skipped": skipped, "aliases": aliases,
    }  # fmt: skip


def _isolate(nix: NixCli, bare: Mapping[str, Any], names: list[str], errors: dict[str, str]) -> dict[str, Any]:
    """Evaluate ``names`` in halves until each evaluation that fails names one package: that package failed
    with Nix's message (an ``abort`` or a missing attribute, which ``tryEval`` does not catch)."""
    try:
        return _evaluate(nix, with_info=True, attrs=names, checks=False)["packages"]
    except NixEvalError as exc:
        if len(names) > 1:
            half = len(names) // 2
            return {**_isolate(nix, bare, names[:half], errors), **_isolate(nix, bare, names[half:], errors)}
        where = f" at {exc.file}:{exc.line}" if exc.file and exc.line else ""
        errors[names[0]] = f"{names[0]} failed to evaluate{where}: " + ("\n".join(exc.messages) or "(no message)")
        return {names[0]: {**bare[names[0]], "evalFailed": True, "outputs": {}, "tests": {}}}


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


def _eval_error_of(nix: NixCli, attr: str) -> str:
    """Nix's error for one package whose evaluation graph.nix caught (``tryEval`` hides the message)."""
    try:
        _evaluate(nix, with_info=True, only=attr)
    except NixEvalError as e:
        where = f" at {e.file}:{e.line}" if e.file and e.line else ""
        return f"{attr} failed to evaluate{where}: " + ("\n".join(e.messages) or "(Nix printed no message)")
    return f"{attr} failed to evaluate (an error Nix does not repeat on its own)"


def _check_error_of(nix: NixCli, info: Mapping[str, Any]) -> str:
    """Nix's error for a flake check graph.nix caught: its derivation evaluated alone."""
    installable = nix.installable(tuple(info["attrPath"]))
    command = nix.nix_command("eval", "--no-write-lock-file", "--raw", f"{installable}.drvPath")
    proc = processes.run(command, capture_output=True, text=True, env=nix.subprocess_env())
    messages = error_messages(proc.stderr).messages if proc.returncode else []
    said = "\n".join(messages) or "(Nix printed no message)"
    return f"flake check {info['flakeCheck']} failed to evaluate: {said}"


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
            attr_path=tuple(info["attrPath"]) if info.get("attrPath") else None,
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
            attr_path=tuple(test["attrPath"]) if test.get("attrPath") else None,
            under=test.get("under") or "tests",
        )
    return tests
