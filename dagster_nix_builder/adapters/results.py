"""From outcomes to Dagster results: the one ``stream()`` of every backend.

A backend (the Nix build, Flox) yields :class:`~dagster_nix_builder.nix.build.PackageOutcome` and
:class:`~dagster_nix_builder.nix.build.TestOutcome` as they finish; :func:`stream` orders them
(:class:`~dagster_nix_builder.nix.reporting.ReportQueue`), adds out-links, and yields a ``MaterializeResult`` per
package and an ``AssetCheckResult`` per test, each the moment it may be reported; it raises at the end if
anything failed or was held back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    MaterializeResult,
    MetadataValue,
)

from dagster_nix_builder.adapters.history import recorded_builds
from dagster_nix_builder.adapters.translator import ATTR_KEY
from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixBuildError
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph, store_hash
from dagster_nix_builder.nix.outcomes import Outcome, PackageOutcome, Target, TestOutcome
from dagster_nix_builder.nix.progress import Progress
from dagster_nix_builder.nix.reporting import ReportQueue
from dagster_nix_builder.nix.source import describe_source, read_source

Result = MaterializeResult | AssetCheckResult


def selected_targets(
    context: AssetExecutionContext, graph: NixPackageGraph
) -> tuple[list[Target], dict[str, AssetKey]]:
    """The packages and tests selected in ``context`` (as build targets) and the asset key of each package."""
    specs = context.assets_def.specs_by_key
    keys: dict[str, AssetKey] = {}
    for key in specs:  # all of them: ``keys`` holds only the selected assets (none, for checks alone)
        attr = specs[key].metadata.get(ATTR_KEY)
        keys[str(attr if attr is not None else key.to_user_string())] = key
    attr_of = {key: attr for attr, key in keys.items()}
    targets = [Target(attr_of[key]) for key in context.selected_asset_keys]
    targets += [Target(attr_of[check.asset_key], check.name) for check in context.selected_asset_check_keys]
    graph.require([(t.attr, t.test) for t in targets])  # the package set, evaluated now, may have changed
    return targets, keys


def nix_builds(
    cli: NixCli, graph: NixPackageGraph, targets: Sequence[Target], log: Callable[[str], None]
) -> list[NixBuild]:
    """The Nix builds of ``targets`` (not started): one of everything, except that tests selected without
    their package (a check run again) whose outputs are valid are rebuilt (``--rebuild``) by a second one,
    so Nix runs them again."""
    packages = {t.attr for t in targets if t.test is None}
    check_only = [t for t in targets if t.test is not None and t.attr not in packages]
    invalid = cli.invalid_paths([graph[t.attr].tests[t.test].out_path for t in check_only if t.test])
    again = [t for t in check_only if t.test and graph[t.attr].tests[t.test].out_path not in invalid]
    first = [t for t in targets if t not in again]
    builds = [NixBuild(cli, graph, first, log=log)] if first else []
    if again:
        builds.append(NixBuild(cli, graph, again, rebuild=True, log=log))
    return builds


def build_and_stream(cli: NixCli, graph: NixPackageGraph, context: AssetExecutionContext) -> Iterator[Result]:
    """Build what ``context`` selects with Nix (see :func:`nix_builds`) and yield its results."""
    targets, keys = selected_targets(context, graph)
    builds = nix_builds(cli, graph, targets, context.log.info)
    progress = Progress(targets, recorded_builds(context.instance, targets, keys), jobs=cli.max_jobs)

    def outcomes() -> Iterator[Outcome]:
        for build in builds:
            yield from build.outcomes()

    try:
        yield from stream(cli, graph, targets, keys, outcomes(), context.log.info, [b.command for b in builds],
                          progress)
    finally:
        for build in builds:
            build.terminate()  # also when Dagster itself interrupts the stream


def stream(
    cli: NixCli,
    graph: NixPackageGraph,
    targets: Sequence[Target],
    keys: Mapping[str, AssetKey],
    outcomes: Iterable[Outcome],
    log: Callable[[str], None],
    commands: Sequence[Sequence[str]] = (),
    progress: Progress | None = None,
) -> Iterator[Result]:
    """Dagster results of ``outcomes``, in an allowed order (see :mod:`.reporting`); raises
    :class:`NixBuildError` at the end naming everything that failed or was held back. With ``progress``, logs
    its lines as outcomes finish and its summary table at the end."""
    queue = ReportQueue(graph, targets)
    path_info = PathInfo(cli, [graph[t.attr] for t in targets if t.test is None])
    for outcome in outcomes:
        if not outcome.ok:
            test = f"check {outcome.test.name} of " if isinstance(outcome, TestOutcome) else ""
            log(f"{test}{outcome.attr} failed: {outcome.reason}")
        if progress is not None and (line := progress.add(outcome)):
            log(line)
        for ready in queue.add(outcome):
            yield result_of(cli, graph, ready, keys, path_info)
    for ready in queue.finish():
        yield result_of(cli, graph, ready, keys, path_info)
    if progress is not None:
        log(progress.summary())
    if queue.failures:
        raise NixBuildError(commands[0] if commands else [], None, [], queue.failures)


def result_of(
    cli: NixCli, graph: NixPackageGraph, outcome: Outcome, keys: Mapping[str, AssetKey], path_info: PathInfo
) -> Result:
    """The Dagster result of one outcome (a package: its out-links are made first)."""
    if isinstance(outcome, TestOutcome):
        return check_result(outcome, keys[outcome.attr])
    link_outputs(cli, outcome.package)
    return materialize_result(cli, graph, outcome, keys.get(outcome.attr), path_info.of(outcome.package))


def link_outputs(cli: NixCli, package: NixPackage) -> None:
    """Out-links ``result-<attr>[-<output>]`` in the out-link folder, registered as GC roots."""
    cli.add_output_roots(Path(cli.out_link_dir).resolve() / f"result-{package.attr}", package.drv_path,
                         package.outputs)


class PathInfo:
    """``nix path-info`` of the outputs of a run's ``packages``: the first package reported asks for all of
    them in one call (an invalid path is no error, just left out), so a run whose outputs are all valid
    asks once; a package whose outputs were not valid yet then is asked for again, with every other
    output of the run that looks valid by now (on disk, canonical): one call per package was thousands
    of calls in a cold run of a big set."""

    def __init__(self, cli: NixCli, packages: Iterable[NixPackage]) -> None:
        self.cli = cli
        self._all = {path for package in packages for path in package.outputs.values()}
        self._info: dict[str, dict[str, Any]] = {}

    def of(self, package: NixPackage) -> dict[str, dict[str, Any]]:
        wanted = set(package.outputs.values())
        missing = wanted - set(self._info)
        if missing:
            unknown = self._all - missing  # never asked: what was asked has left _all
            ask = missing | (unknown - self.cli.surely_invalid_paths(sorted(unknown)) if self._info else unknown)
            self._info.update(self.cli.path_info(sorted(ask)))
            self._all -= ask  # asked once: an output invalid then is asked for again only when reported
        return {p: self._info[p] for p in wanted if p in self._info}


def check_result(outcome: TestOutcome, key: AssetKey) -> AssetCheckResult:
    """The asset check result of one test derivation."""
    test = outcome.test
    metadata: dict[str, Any] = {
        "out_path": MetadataValue.path(test.out_path),
        "drv_path": MetadataValue.path(test.drv_path),
        # False: Nix had the output already (the same derivation passed before), so nothing ran.
        "built_now": MetadataValue.bool(outcome.built_now),
        "build_seconds": MetadataValue.float(float(outcome.build_seconds)),
    }
    if outcome.note:
        metadata["note"] = MetadataValue.text(outcome.note)
    if outcome.log_tail:
        metadata["log_tail"] = MetadataValue.md("```\n" + "\n".join(outcome.log_tail) + "\n```")
    return AssetCheckResult(
        check_name=test.name,
        asset_key=key,
        passed=outcome.ok,
        severity=AssetCheckSeverity.ERROR,
        description=outcome.note if outcome.ok else outcome.reason,
        metadata=metadata,
    )


def wheel_path(package: NixPackage) -> str | None:
    """The wheel in the package's ``dist`` output, if any."""
    dist = package.outputs.get("dist")
    if not dist or not Path(dist).is_dir():
        return None
    wheels = sorted(Path(dist).rglob("*.whl"))
    return str(wheels[0]) if wheels else None


def materialize_result(
    cli: NixCli,
    graph: NixPackageGraph,
    outcome: PackageOutcome,
    asset_key: AssetKey | None,
    path_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> MaterializeResult:
    """The materialization of one package: paths, versions, timings and sizes."""
    package = outcome.package
    info = path_info if path_info is not None else cli.path_info(list(package.outputs.values()))
    out = package.out_path or ""
    given = cli.value_args.get("pins")  # a partition's (or a bisect step's) pins, given to Nix: what it built
    pins = given if isinstance(given, dict) else read_source(graph.nix_dir)
    metadata: dict[str, Any] = {
        "out_path": MetadataValue.path(out),
        "store_paths": MetadataValue.json(dict(package.outputs)),
        "drv_path": MetadataValue.path(package.drv_path or ""),
        "built_now": MetadataValue.bool(outcome.built_now),
        "build_seconds": MetadataValue.float(float(outcome.build_seconds)),
        "nar_size": MetadataValue.int(int(info.get(out, {}).get("narSize", 0))),
        "closure_size": MetadataValue.int(int(info.get(out, {}).get("closureSize", 0))),
        "nix_version": MetadataValue.text(cli.nix_version().text),
        "scope": MetadataValue.text(str(cli.scope or "")),
        "source": MetadataValue.text(describe_source(pins)),
    }
    if pins:
        metadata["source_pin"] = MetadataValue.json(pins)
    if package.version:
        metadata["version"] = MetadataValue.text(package.version)
    for output, path in package.outputs.items():
        if output != "out" and path in info:
            metadata[f"{output}_nar_size"] = MetadataValue.int(int(info[path].get("narSize", 0)))
    wheel = wheel_path(package)
    if wheel:
        metadata["wheel"] = MetadataValue.path(wheel)
    return MaterializeResult(
        asset_key=asset_key,
        metadata=metadata,
        data_version=DataVersion(store_hash(out)) if out else None,
    )


__all__ = [
    "PathInfo", "build_and_stream", "check_result", "materialize_result", "nix_builds", "selected_targets", "stream",
]
