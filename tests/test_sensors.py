"""The sensors against a real local upstream, and the update run they request executed for real."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, build_sensor_context
from test_add_package import FIXTURE, release_project
from upstream_repo import (
    BROKEN_MODULE,
    GOOD_MODULE,
    NIX_CONFIG,
    Upstream,
    git,
    make_project,
    snapshot,
    world_readable_tmpdir,
)

from dagster_nix_builder.upstream.pins import read_pins, write_pins
from dagster_nix_builder.upstream.sensors import (
    UpstreamCursor,
    build_release_sensor,
    build_upstream_commit_sensor,
    update_definitions,
)
from dagster_nix_builder.upstream.update.job import PinUpdater, update_job

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="needs the nix CLI")


@pytest.fixture
def root() -> Iterator[Path]:
    path = world_readable_tmpdir("dnb-sensor-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tick(sensor, cursor: str | None):
    with DagsterInstance.ephemeral() as instance:
        return sensor.evaluate_tick(build_sensor_context(cursor=cursor, instance=instance))


def run_update(project: Path, run_config: dict):
    return update_job.execute_in_process(
        run_config=run_config,
        resources={"pin_updater": PinUpdater(repo_dir=str(project), nix_config=NIX_CONFIG)},
        raise_on_error=False,
    )


def test_commit_sensor_requests_one_run_per_new_head_and_the_run_updates(root: Path) -> None:
    upstream = Upstream(root)
    rev1 = upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream)  # nothing pinned yet
    sensor = build_upstream_commit_sensor(repo_dir=project)

    first = tick(sensor, None)
    assert [r.run_key for r in first.run_requests] == [rev1]
    assert json.loads(first.cursor) == {"last_seen": rev1, "last_requested": rev1, "last_error": None}

    # The requested run, executed for real: pins rev1, rebuilds, commits.
    result = run_update(project, first.run_requests[0].run_config)
    assert result.success
    assert git(project, "log", "-1", "--format=%s") == f"dagster-src: none -> {rev1}"
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"dagster-src", "dagster-lib", "dagster-cli"}
    assert result.output_for_node("update_pins")["changed_files"] == ["nix/pins.json"]

    # Unchanged head: a skip with its reason; the cursor survives (JSON in, JSON out).
    second = tick(sensor, first.cursor)
    assert not second.run_requests
    assert "is the pinned rev" in second.skip_message
    assert UpstreamCursor.from_json(second.cursor).last_seen == rev1

    # A new upstream commit: one run for it, keyed by the rev.
    rev2 = upstream.push({"dagster.py": GOOD_MODULE.format(version="2.0")}, "two")
    third = tick(sensor, second.cursor)
    assert [r.run_key for r in third.run_requests] == [rev2]
    assert third.run_requests[0].run_config == {"ops": {"update_pins": {"config": {"rev": rev2}}}}
    assert third.run_requests[0].tags["dagster-nix-builder/old"] == rev1

    # Before the run lands, the same head is not requested again.
    fourth = tick(sensor, third.cursor)
    assert not fourth.run_requests and "already requested" in fourth.skip_message


def test_commit_sensor_skips_unreachable_upstream(root: Path) -> None:
    upstream = Upstream(root)
    upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream)
    cursor = UpstreamCursor(last_seen="a" * 40, last_requested="a" * 40).to_json()
    sensor = build_upstream_commit_sensor(repo_dir=project, url=str(root / "gone.git"))

    data = tick(sensor, cursor)

    assert not data.run_requests
    assert data.skip_message.startswith("upstream unreachable")
    after = UpstreamCursor.from_json(data.cursor)
    assert after.last_seen == "a" * 40 and after.last_requested == "a" * 40 and after.last_error

    missing_branch = build_upstream_commit_sensor(repo_dir=project, branch="no-such-branch")
    assert "has no ref refs/heads/no-such-branch" in tick(missing_branch, None).skip_message


def test_commit_sensor_skips_in_release_mode(root: Path) -> None:
    upstream = Upstream(root)
    upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream)
    pins_path = project / "nix" / "pins.json"
    write_pins(pins_path, replace(read_pins(pins_path), source="release"))
    data = tick(build_upstream_commit_sensor(repo_dir=project), None)
    assert not data.run_requests and "follows git mode" in data.skip_message


def test_failed_update_run_reports_step_and_leaves_files(root: Path) -> None:
    upstream = Upstream(root)
    upstream.push({"dagster.py": BROKEN_MODULE}, "broken")
    project = make_project(root, upstream)
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    data = tick(build_upstream_commit_sensor(repo_dir=project), None)

    result = run_update(project, data.run_requests[0].run_config)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    metadata = failure.step_failure_data.user_failure_data.metadata
    assert metadata["step"].value == "build"
    assert metadata["restored"].value == ["nix/pins.json"]
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head


def _fake_index(folder: Path, versions: dict[str, list[str]]) -> list[str]:
    """A local package index folder (find-links) with sdist file names; pip lists versions by name."""
    folder.mkdir()
    for package, vs in versions.items():
        for v in vs:
            (folder / f"{package.replace('-', '_')}-{v}.tar.gz").write_bytes(b"")
    return ["--no-index", "--find-links", str(folder)]


def test_release_sensor_requests_complete_newer_release_only(root: Path) -> None:
    # The set's distributions and their versions are Nix's: dnb-tiny-core follows Dagster's version,
    # dnb-tiny-lib (versionScheme "library") is 0.29.x at Dagster 1.13.x.
    project = release_project(root)
    shutil.copy(FIXTURE / "added" / "dnb-tiny-lib.nix", project / "nix" / "packages")
    pins_path = project / "nix" / "pins.json"
    pip_args = _fake_index(
        root / "index",
        {
            "dnb-tiny-core": ["1.13.27", "1.13.28", "1.13.29"],
            "dnb-tiny-lib": ["0.29.27", "0.29.28"],  # 1.13.29 is not complete yet
            "dagster": ["1.13.30"],  # not a distribution of the set
        },
    )
    sensor = build_release_sensor(repo_dir=project, pip_args=pip_args, nix_config=NIX_CONFIG)

    data = tick(sensor, None)
    assert [r.run_key for r in data.run_requests] == ["release-1.13.28"]
    assert data.run_requests[0].run_config == {"ops": {"update_pins": {"config": {"version": "1.13.28"}}}}
    assert "already requested" in tick(sensor, data.cursor).skip_message

    write_pins(pins_path, read_pins(pins_path).with_release(version="1.13.28"))
    assert "not newer than pinned" in tick(sensor, data.cursor).skip_message

    empty = build_release_sensor(
        repo_dir=project, pip_args=["--no-index", "--find-links", str(root / "none")], nix_config=NIX_CONFIG
    )
    assert "no version has all of" in tick(empty, None).skip_message
    only_core = build_release_sensor(
        repo_dir=project, pip_args=_fake_index(root / "core", {"dnb-tiny-core": ["1.13.29"]}), nix_config=NIX_CONFIG
    )
    assert tick(only_core, None).skip_message == (
        "no version has all of the package set's distributions as sdists: 1.13.29: nix/packages/dnb-tiny-lib.nix: "
        "the package index has no distribution 'dnb-tiny-lib' (no sdist at any version); check the file's "
        "distribution (its name on the package index)"
    )


def test_update_definitions_load(root: Path) -> None:
    defs = update_definitions(repo_dir=root)
    Definitions.validate_loadable(defs)  # e.g. op and job names must not clash
    assert defs.get_job_def("update_dagster_src")
    assert {s.name for s in defs.sensors} == {"dagster_upstream_commit_sensor", "dagster_release_sensor"}


def test_failed_package_is_rebuilt_by_automation_once_its_dependency_is_fixed(root: Path) -> None:
    from dagster import AssetKey, evaluate_automation_conditions, materialize

    from dagster_nix_builder import (
        DagsterNixTranslator,
        DagsterNixTranslatorSettings,
        NixResource,
        nix_assets,
    )
    from dagster_nix_builder.upstream.sensors import package_automation_condition
    from dagster_nix_builder.upstream.update.workflow import UpdateSettings, update

    upstream = Upstream(root)
    rev = upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream)
    update(UpdateSettings(repo_dir=project, nix_config=NIX_CONFIG), rev=rev)
    nix = NixResource(
        nix_dir=str(project / "nix"),
        scope="bootstrap",
        nix_config=NIX_CONFIG,
        out_link_dir=str(root / "links"),
    )
    translator = DagsterNixTranslator(
        DagsterNixTranslatorSettings(automation_condition=package_automation_condition())
    )
    assets = nix_assets(nix.load_graph(), translator=translator)
    defs = Definitions(assets=[assets], resources={"nix": nix})
    lib_expr = project / "nix" / "packages" / "dagster-lib.nix"
    good_lib = lib_expr.read_text()

    def build(instance, keys: list[str]):
        return materialize(
            [assets], selection=keys, instance=instance, resources={"nix": nix}, raise_on_error=False
        )

    def requested(result) -> set[str]:
        keys = ("dagster-src", "dagster-lib", "dagster-cli", "unrelated")
        return {k for k in keys if result.get_num_requested(AssetKey(k))}

    with DagsterInstance.ephemeral() as instance:
        assert build(instance, ["dagster-src", "dagster-lib", "dagster-cli", "unrelated"]).success
        tick = evaluate_automation_conditions(defs=defs, instance=instance)
        assert requested(tick) == set()

        # dagster-lib breaks (builds, but without the module): dagster-cli, downstream, is rebuilt and fails.
        lib_expr.write_text(
            '{ runCommand, dagster-src }:\nrunCommand "dagster-lib" { src = dagster-src; } "mkdir -p $out/lib"\n'
        )
        assert build(instance, ["dagster-lib"]).success
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert requested(tick) == {"dagster-cli"}
        assert not build(instance, ["dagster-cli"]).success

        # The failure is not retried on every tick...
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert requested(tick) == set()

        # ...but as soon as its dependency is fixed and rebuilt, the failed package is requested again.
        lib_expr.write_text(good_lib)
        assert build(instance, ["dagster-lib"]).success
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert requested(tick) == {"dagster-cli"}
        assert build(instance, ["dagster-cli"]).success


def test_update_job_config_source_git_alone_pins_the_head_from_release_mode(root: Path) -> None:
    upstream = Upstream(root)
    rev = upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream, source="release", url="https://example.invalid/dagster.git")
    config = {"ops": {"update_pins": {"config": {"source": "git", "url": upstream.url}}}}

    result = run_update(project, config)

    assert result.success
    assert git(project, "log", "-1", "--format=%s") == f"dagster-src: 1.13.27 -> {rev}"
    pins = read_pins(project / "nix" / "pins.json")
    assert (pins.source, pins.git.url, pins.git.rev) == ("git", upstream.url, rev)
    # The commit sensor now follows that upstream: nothing new.
    assert "is the pinned rev" in tick(build_upstream_commit_sensor(repo_dir=project), None).skip_message


def test_update_job_refuses_contradictory_config(root: Path) -> None:
    upstream = Upstream(root)
    upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream)
    result = run_update(project, {"ops": {"update_pins": {"config": {"source": "git", "version": "1.0"}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "source 'git' takes a rev, not a version" in str(failure.event_specific_data.error)
