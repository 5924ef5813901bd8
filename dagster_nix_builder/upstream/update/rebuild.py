"""The build and check steps: rebuild the source and everything downstream of it, with their tests, then
fail unless every test passed.

What is downstream is the package graph's (`graph.NixPackageGraph.downstream`, the packages' formal
arguments, asked of Nix). One `nix build` (`build.NixBuild`) builds the packages and their
`passthru.tests` (`<attr>.tests.<name>`, the derivations a materialization's asset checks build): a
package that fails fails the build step, a test that fails the check step, naming the package, the test
and the end of its log. A rebuilt package without tests has every `bin/*` run with `--version` instead
(`run_version_checks`); the settings' own `checks` run last.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixBuilderError, NixCommandError
from dagster_nix_builder.nix.graph import NixPackageGraph, load_package_graph
from dagster_nix_builder.nix.outcomes import PackageOutcome, Target, TestOutcome
from dagster_nix_builder.upstream.pins import Pins
from dagster_nix_builder.upstream.update.model import FailedTarget, Log, UpdateError, UpdateSettings, UpdateStep
from dagster_nix_builder.upstream.update.nix import nix_cli

VERSION_CHECK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Rebuilt:
    """What the build step made: attribute -> out paths, and the outcome of each test."""

    built: Mapping[str, tuple[str, ...]]
    tests: Sequence[TestOutcome]

    @property
    def untested(self) -> list[str]:
        """Rebuilt attributes without any test."""
        tested = {t.attr for t in self.tests}
        return [attr for attr in self.built if attr not in tested]


class BuildTimeoutError(UpdateError):
    """`nix build` did not finish in time and was stopped: no verdict on what it built."""


def _tail(lines: Sequence[str]) -> list[str]:
    return [f"  > {line}" for line in lines]


def load_graph(cli: NixCli) -> NixPackageGraph:
    """The package graph (at the written pins)."""
    try:
        return load_package_graph(cli)
    except NixCommandError as e:
        raise UpdateError(UpdateStep.BUILD, "evaluating the package set failed", e.messages) from e
    except NixBuilderError as e:
        raise UpdateError(UpdateStep.BUILD, f"evaluating the package set failed: {e}") from e


@dataclass(frozen=True)
class Plan:
    """What the build step builds: the source, every package downstream of it, and all their tests, as the
    package set evaluates (with the file's pins, or candidate pins passed to Nix)."""

    cli: NixCli
    graph: NixPackageGraph
    attrs: list[str]
    targets: list[Target]

    def drv_path(self, target: Target) -> str:
        """The derivation of one target."""
        package = self.graph[target.attr]
        return (package.drv_path if target.test is None else package.tests[target.test].drv_path) or ""

    def outputs(self, target: Target) -> list[str]:
        """The outputs of one target."""
        package = self.graph[target.attr]
        return list(package.outputs.values()) if target.test is None else [package.tests[target.test].out_path]

    def out_paths(self) -> list[str]:
        """Every output of every target: all valid means nothing is left to build."""
        return [path for t in self.targets for path in self.outputs(t)]


def plan(settings: UpdateSettings, repo_dir: Path, mode: str, pins: Pins | None = None) -> Plan:
    """Evaluate what the build step builds; `pins` are passed to Nix (`--arg pins`) instead of the file's."""
    source = settings.source_attr
    cli = nix_cli(settings, repo_dir, mode, pins, pass_pins=pins is not None)
    graph = load_graph(cli)
    if source not in graph:
        raise UpdateError(UpdateStep.BUILD, f"the package set has no attribute {source}")
    attrs = graph.topological_order({source, *graph.downstream(source)})
    broken = [graph[a].eval_error for a in attrs if graph[a].eval_error]
    if broken:
        raise UpdateError(UpdateStep.BUILD, "packages to rebuild do not evaluate", [e for e in broken if e])
    targets = [Target(a) for a in attrs] + [Target(a, name) for a in attrs for name in graph[a].tests]
    return Plan(cli, graph, attrs, targets)


def rebuild(settings: UpdateSettings, repo_dir: Path, mode: str, log: Log, pins: Pins | None = None) -> Rebuilt:
    """Build the source, every package downstream of it, and all their tests, in one `nix build`."""
    return run(plan(settings, repo_dir, mode, pins), settings, log)


def run(planned: Plan, settings: UpdateSettings, log: Log) -> Rebuilt:
    """Build what `planned` says in one `nix build` (nothing starts when every output is valid)."""
    attrs, graph = planned.attrs, planned.graph
    tests = [t.installable for t in planned.targets if t.test is not None]
    log(f"rebuilding {', '.join(attrs)}" + (f", with their tests {', '.join(tests)}" if tests else ""))
    outcomes = _build(NixBuild(planned.cli, graph, planned.targets, log=log), settings)
    packages = {o.attr: o for o in outcomes if isinstance(o, PackageOutcome)}
    test_outcomes = [o for o in outcomes if isinstance(o, TestOutcome)]
    failed = [packages[a] for a in attrs if not packages[a].ok]
    if failed:
        messages = [line for o in failed for line in (f"{o.attr}: {o.reason or 'failed'}", *_tail(o.log_tail))]
        # Blamed: what failed itself, not what a dependency's failure kept from building; a test failing
        # beside a failed package is its own failure too.
        own = [FailedTarget(o.attr, None, o.package.drv_path or "", o.reason or "failed", o.log_tail)
               for o in failed if not _dependency_failed(o.reason)]  # fmt: skip
        raise UpdateError(
            UpdateStep.BUILD, f"rebuilding {', '.join(o.attr for o in failed)} failed", messages,
            own + _failed_tests(test_outcomes),
        )  # fmt: skip
    built = {a: tuple(graph[a].outputs.values()) for a in attrs}
    return Rebuilt(built, test_outcomes)


def _dependency_failed(reason: str | None) -> bool:
    return (reason or "").startswith("dependency failed: ")


def _failed_tests(tests: Sequence[TestOutcome]) -> list[FailedTarget]:
    return [
        FailedTarget(t.attr, t.test.name, t.test.drv_path, t.reason or "failed", t.log_tail)
        for t in tests
        if not t.ok and not _dependency_failed(t.reason)
    ]


def _build(build: NixBuild, settings: UpdateSettings) -> list[PackageOutcome | TestOutcome]:
    """Run the build to its end, stopping Nix after `timeout_seconds`."""
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        build.terminate()

    timer = threading.Timer(settings.timeout_seconds, stop)
    timer.daemon = True
    timer.start()
    try:
        outcomes = build.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise BuildTimeoutError(
            UpdateStep.BUILD, f"nix build did not finish within {settings.timeout_seconds:g} s", build.errors
        )
    return outcomes


def check(settings: UpdateSettings, rebuilt: Rebuilt, log: Log) -> list[str]:
    """The check step: every test of the rebuilt packages passed, `--version` of the untested ones
    answers, the settings' checks pass. Returns one line per check passed."""
    failed = [t for t in rebuilt.tests if not t.ok]
    if failed:
        messages = []
        for t in failed:
            about = f" ({t.test.description})" if t.test.description else ""
            messages += [f"{t.attr}.tests.{t.test.name}{about}: {t.reason or 'failed'}", *_tail(t.log_tail)]
        raise UpdateError(
            UpdateStep.CHECK, "; ".join(f"{t.attr}: check {t.test.name} failed" for t in failed), messages,
            _failed_tests(failed),
        )
    passed = [f"{t.attr}: {t.test.name}" for t in rebuilt.tests]
    if settings.run_version_checks:
        for attr in rebuilt.untested:
            passed += _version_checks(attr, rebuilt.built[attr], log)
    for custom in settings.checks:
        name = getattr(custom, "__name__", repr(custom))
        try:
            custom(rebuilt.built)
        except Exception as e:  # a check's own failure, whatever its type, fails this step
            raise UpdateError(UpdateStep.CHECK, f"{name}: {e}") from e
        passed.append(f"{name}: ok")
    for line in passed:
        log(f"check passed: {line}")
    return passed


def _version_checks(attr: str, outs: Sequence[str], log: Log) -> list[str]:
    """`--version` of every executable in `bin/` of `outs`, in an empty environment."""
    passed = []
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    for out in outs:
        bindir = Path(out) / "bin"
        if not bindir.is_dir():
            continue
        for exe in sorted(bindir.iterdir()):
            if not os.access(exe, os.X_OK):
                continue
            log(f"$ {shlex.join([str(exe), '--version'])}")
            proc = processes.run(
                [str(exe), "--version"], capture_output=True, text=True, env=env, timeout=VERSION_CHECK_TIMEOUT_S
            )
            if proc.returncode != 0:
                raise UpdateError(
                    UpdateStep.CHECK,
                    f"{attr}: `{exe.name} --version` exited with {proc.returncode}",
                    (proc.stderr or proc.stdout).strip().splitlines()[-20:],
                )
            first = (proc.stdout or proc.stderr).strip().splitlines()[:1]
            passed.append(f"{attr}: {exe.name} --version: {first[0] if first else ''}")
    return passed


__all__ = ["BuildTimeoutError", "Plan", "Rebuilt", "check", "load_graph", "plan", "rebuild", "run"]
