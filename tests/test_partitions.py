"""Versions as partitions (``history:`` of ``defs.yaml``): a dynamic partition of the package assets per release
(or per commit), each built with its own pins given to Nix (``--arg pins``), ``nix/pins.json`` never edited.

Real Nix (the real ``nix/`` machinery over the release fixture set, tests/fixtures/release_set), real git, a real
pypiserver serving fabricated sdists of three releases, a real Dagster instance; the sensors ticked for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DynamicPartitionsDefinition,
    build_sensor_context,
)
from local_index import pypiserver
from test_add_package import TinyIndex, pip_env, prefetch_build_tools, release_project, tiny_sdist
from test_sensors import _fake_index
from upstream_repo import GOOD_MODULE, NIX_CONFIG, Upstream, git, make_project, snapshot, world_readable_tmpdir

from dagster_nix_builder import NixPackageSetComponent, NixResource
from dagster_nix_builder.components.history import HistoryNixResource
from dagster_nix_builder.nix.errors import NixConfigError
from dagster_nix_builder.nix.graph import evaluate_package_set
from dagster_nix_builder.nix.processes import popen, stop_group
from dagster_nix_builder.upstream.history import (
    PartitionFollow,
    PartitionKeyError,
    newest_first,
    validate_partition_key,
)
from dagster_nix_builder.upstream.pins import read_pins, write_pins
from dagster_nix_builder.upstream.sensors import build_release_sensor, build_upstream_commit_sensor
from dagster_nix_builder.upstream.update.workflow import UpdateSettings, update

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="needs the nix CLI")

RELEASES = ("1.13.26", "1.13.27", "1.13.28")
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORE = AssetKey("dnb-tiny-core")


@pytest.fixture
def root() -> Iterator[Path]:
    path = world_readable_tmpdir("dnb-partitions-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def component(project: Path, history: dict | None, **kw) -> NixPackageSetComponent:
    """The component as release_project's defs.yaml configures it, with ``history``."""
    made = NixPackageSetComponent(
        package_set="nix", scope="bootstrap", automation=False, include_update=True, nix_config=NIX_CONFIG,
        history=history, **kw,
    )  # fmt: skip
    made._project_root = project
    return made


def definitions(made: NixPackageSetComponent):
    return made.build_defs_from_document({"graph": evaluate_package_set(made.nix_resource())})


def apply(instance: DagsterInstance, requests) -> None:
    """What the daemon does with a tick's partition requests."""
    for request in requests:
        if type(request).__name__ == "AddDynamicPartitionsRequest":
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


# ---- quick: keys, the default, the configuration -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key", "ok"),
    [
        ("releases", "1.13.27", True), ("releases", "1.14.0rc1", True), ("releases", "latest", False),
        ("releases", "../1.0", False), ("releases", "", False), ("commits", "a" * 40, True),
        ("commits", "A" * 40, False), ("commits", "a" * 39, False), ("commits", "1.13.27", False),
    ],
)  # fmt: skip
def test_partition_keys_are_validated(kind: str, key: str, ok: bool) -> None:
    if ok:
        assert validate_partition_key(kind, key) == key  # type: ignore[arg-type]
    else:
        with pytest.raises(PartitionKeyError, match="partition key"):
            validate_partition_key(kind, key)  # type: ignore[arg-type]


def test_newest_first_orders_releases_by_version_and_commits_by_insertion() -> None:
    assert newest_first("releases", ["1.9.0", "1.13.27", "1.10.1"]) == ["1.13.27", "1.10.1", "1.9.0"]
    assert newest_first("commits", ["a", "b", "c"]) == ["c", "b", "a"]


def test_without_history_the_definitions_are_as_before_and_with_it_partitioned(root: Path) -> None:
    project = release_project(root)
    plain = definitions(component(project, None))
    partitioned = definitions(component(project, {"partitions": "releases", "keep": 3}))
    (assets,) = plain.assets
    (history_assets,) = partitioned.assets
    # The default: no partitions anywhere, the plain resource, the same sensors and jobs.
    assert assets.partitions_def is None
    assert all(spec.partitions_def is None for spec in assets.check_specs)
    assert type(plain.resources["nix"]) is NixResource
    # With history: the same assets and checks, partitioned by one dynamic partitions definition.
    assert set(history_assets.keys) == set(assets.keys) and CORE in assets.keys
    assert set(history_assets.check_keys) == set(assets.check_keys) and assets.check_keys
    assert history_assets.partitions_def == DynamicPartitionsDefinition(name="dagster_releases")
    assert all(spec.partitions_def == history_assets.partitions_def for spec in history_assets.check_specs)
    assert isinstance(partitioned.resources["nix"], HistoryNixResource)
    assert {s.name for s in partitioned.sensors} == {s.name for s in plain.sensors}
    assert {j.name for j in partitioned.jobs} == {j.name for j in plain.jobs}


def test_history_on_a_set_without_a_dagster_source_is_refused(root: Path) -> None:
    tiny = root / "tiny"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny", tiny)
    made = NixPackageSetComponent(package_set=str(tiny), history={"partitions": "releases"}, include_update=False)
    with pytest.raises(NixConfigError, match=r"attributes.history \(partitions: releases\) is set, but the package"):
        definitions(made)
    with pytest.raises(ValueError, match="keep"):
        NixPackageSetComponent(history={"partitions": "releases", "keep": 0})
    with pytest.raises(ValueError, match="partitions"):
        NixPackageSetComponent(history={"partitions": "tags"})


# ---- the sensors add partitions ------------------------------------------------------------------------


def test_release_sensor_adds_the_newest_complete_releases_and_keeps_keep(root: Path) -> None:
    project = release_project(root)
    pip_args = _fake_index(root / "index", {"dnb-tiny-core": ["1.13.25", *RELEASES]})
    follow = PartitionFollow("dagster_releases", "releases", keep=3)
    sensor = build_release_sensor(repo_dir=project, pip_args=pip_args, nix_config=NIX_CONFIG, partitions=follow)
    plain = build_release_sensor(repo_dir=project, pip_args=pip_args, nix_config=NIX_CONFIG)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dagster_releases", ["1.13.20"])  # older, added by hand
        first = sensor.evaluate_tick(build_sensor_context(instance=instance))
        # The update it requests is the same as without partitions.
        assert [r.run_key for r in first.run_requests] == ["release-1.13.28"]
        apply(instance, first.dynamic_partitions_requests)
        assert sorted(instance.get_dynamic_partitions("dagster_releases")) == sorted(RELEASES)
        again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor))
        assert not again.dynamic_partitions_requests and "already requested" in again.skip_message
        assert not plain.evaluate_tick(build_sensor_context(instance=instance)).dynamic_partitions_requests
    # In git mode the update is not the release sensor's, but partitions of releases are.
    pins_path = project / "nix" / "pins.json"
    write_pins(pins_path, replace(read_pins(pins_path), source="git"))
    with DagsterInstance.ephemeral() as instance:
        data = sensor.evaluate_tick(build_sensor_context(instance=instance))
        assert "pins select source 'git'" in data.skip_message
        apply(instance, data.dynamic_partitions_requests)
        assert sorted(instance.get_dynamic_partitions("dagster_releases")) == sorted(RELEASES)


def test_commit_sensor_adds_each_head_and_keeps_the_newest(root: Path) -> None:
    upstream = Upstream(root)
    revs = [upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")]
    project = make_project(root, upstream)
    follow = PartitionFollow("dagster_commits", "commits", keep=2)
    sensor = build_upstream_commit_sensor(repo_dir=project, partitions=follow)
    with DagsterInstance.ephemeral() as instance:
        cursor = None
        for n in range(3):
            if n:
                revs.append(upstream.push({"dagster.py": GOOD_MODULE.format(version=f"1.{n}")}, f"commit {n}"))
            data = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor))
            assert [r.run_key for r in data.run_requests] == [revs[-1]]  # the update, as without partitions
            apply(instance, data.dynamic_partitions_requests)
            cursor = data.cursor
        assert list(instance.get_dynamic_partitions("dagster_commits")) == revs[1:]


# ---- a backfill of three releases -------------------------------------------------------------------


@pytest.fixture
def three_releases() -> Iterator[TinyIndex]:
    """A pypiserver on loopback (no fallback) with the sdists of dnb-tiny-core at three releases."""
    index_root = world_readable_tmpdir("dnb-three-releases-")
    folder = index_root / "packages"
    folder.mkdir()
    for version in RELEASES:
        tiny_sdist(folder, "dnb-tiny-core", version, script=True)
    try:
        with pypiserver(folder, ["-a", ".", "-P", ".", "--disable-fallback"], index_root / "pypiserver.log") as url:
            yield TinyIndex(url + "simple/", folder)
    finally:
        shutil.rmtree(index_root, ignore_errors=True)


def test_a_backfill_of_three_releases_materializes_three_partitions_side_by_side(
    root: Path, three_releases: TinyIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefetch_build_tools()
    for key, value in pip_env(three_releases).items():
        monkeypatch.setenv(key, value)
    project = release_project(root)  # pins at 1.13.27 without a hash: nothing pinned is built
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    defs = definitions(component(project, {"partitions": "releases", "keep": 3}))
    job = defs.resolve_implicit_global_asset_job_def()
    home = root / "home"
    with DagsterInstance.ephemeral(tempdir=str(home)) as instance:
        tick = defs.resolve_sensor_def("dagster_release_sensor").evaluate_tick(build_sensor_context(instance=instance))
        apply(instance, tick.dynamic_partitions_requests)
        keys = list(instance.get_dynamic_partitions("dagster_releases"))
        assert sorted(keys) == sorted(RELEASES)

        results = {key: job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
                   for key in keys}  # fmt: skip
        for key, result in results.items():
            assert result.success, key
            checks = result.get_asset_check_evaluations()
            assert {c.check_name for c in checks if c.asset_key == CORE} == {"imports", "version"}
            assert all(c.passed and c.partition == key for c in checks), [(c.check_name, c.passed) for c in checks]
            (record,) = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=CORE, asset_partitions=[key]), limit=1
            ).records
            metadata = record.asset_materialization.metadata
            assert metadata["source"].value == f"release {key}" and metadata["version"].value == key
            assert metadata["built_now"].value is True

        # Side by side: each partition's out-link, its own build, its own version.
        outs = set()
        for key in keys:
            link = project / ".nix-results" / key / "result-dnb-tiny-core"
            outs.add(link.resolve())
            printed = subprocess.run([link / "bin" / "dnb-tiny-core", "--version"], capture_output=True, text=True,
                                     check=True).stdout  # fmt: skip
            assert printed.strip() == f"dnb-tiny-core, version {key}"
        assert len(outs) == 3

        # Each partition's pins were resolved once and kept in the instance's directory, with Nix's hashes.
        stored = json.loads((home / "nix-partition-pins.json").read_text())["releases"]
        assert sorted(stored) == sorted(RELEASES)
        assert all(p["source"] == "release" and p["release"]["version"] == k for k, p in stored.items())
        assert all(p["release"]["hashes"]["dnb-tiny-core"].startswith("sha256-") for p in stored.values())
        assert len({p["release"]["hashes"]["dnb-tiny-core"] for p in stored.values()}) == 3

        # Again: the stored pins, nothing built.
        again = job.execute_in_process(partition_key="1.13.27", instance=instance, raise_on_error=False)
        assert again.success
        (record,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=CORE, asset_partitions=["1.13.27"]), limit=1
        ).records
        assert record.asset_materialization.metadata["built_now"].value is False

        # A key that names no release fails before Nix builds anything.
        instance.add_dynamic_partitions("dagster_releases", ["latest"])
        bad = job.execute_in_process(partition_key="latest", instance=instance, raise_on_error=False)
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
        assert "partition latest: its pins could not be resolved: partition key 'latest' is not a release" in (
            failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
        )

    # nix/pins.json and the checkout were never edited; nothing was committed.
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head
    assert git(project, "status", "--porcelain") == ""


def test_commit_partitions_build_each_rev_with_its_own_pins(root: Path) -> None:
    upstream = Upstream(root)
    rev1 = upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    project = make_project(root, upstream)
    update(UpdateSettings(repo_dir=project, nix_config=NIX_CONFIG), rev=rev1)  # the checkout pins rev1
    rev2 = upstream.push({"dagster.py": GOOD_MODULE.format(version="2.0")}, "two")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    made = NixPackageSetComponent(
        package_set="nix", scope="bootstrap", automation=False, include_update=True, nix_config=NIX_CONFIG,
        history={"partitions": "commits", "keep": 2},
    )  # fmt: skip
    made._project_root = project
    defs = definitions(made)
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.ephemeral(tempdir=str(root / "home")) as instance:
        tick = defs.resolve_sensor_def("dagster_upstream_commit_sensor").evaluate_tick(
            build_sensor_context(instance=instance)
        )
        apply(instance, tick.dynamic_partitions_requests)
        assert list(instance.get_dynamic_partitions("dagster_commits")) == [rev2]
        instance.add_dynamic_partitions("dagster_commits", [rev1])  # an older one, by hand
        for rev, version in ((rev1, "1.0"), (rev2, "2.0")):
            assert job.execute_in_process(partition_key=rev, instance=instance, raise_on_error=False).success, rev
            cli = project / ".nix-results" / rev / "result-dagster-cli" / "bin" / "dagster"
            printed = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True).stdout
            assert printed.strip() == f"dagster {version}"
            (record,) = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey("dagster-src"), asset_partitions=[rev]), limit=1
            ).records
            assert f"rev {rev}" in record.asset_materialization.metadata["source"].value
        stored = json.loads((root / "home" / "nix-partition-pins.json").read_text())["commits"]
        assert stored[rev1]["git"]["hash"] == read_pins(project / "nix" / "pins.json").git.hash  # Nix agrees
        assert stored[rev2]["git"]["rev"] == rev2 and stored[rev2]["git"]["hash"] != stored[rev1]["git"]["hash"]
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head


# The release sensor ticked against the project's own code location and instance, its partitions applied.
TICK = """
from dagster import DagsterInstance, build_sensor_context
from tinyproj.definitions import defs

instance = DagsterInstance.get()
tick = defs.resolve_sensor_def("dagster_release_sensor").evaluate_tick(build_sensor_context(instance=instance))
for request in tick.dynamic_partitions_requests:
    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
print(",".join(instance.get_dynamic_partitions("dagster_releases")))
"""


def test_dagster_backfill_of_three_releases_runs_them_side_by_side(
    root: Path, three_releases: TinyIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through Dagster's own CLI in a dg project: `history:` in its defs.yaml, `dagster job backfill` of
    the three partitions, three runs launched by the instance's run launcher at once."""
    backfilled_project(root, three_releases, monkeypatch)


def backfilled_project(root: Path, index: TinyIndex, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """A dg project with history: whose three release partitions a Dagster backfill built (asserted); its env."""
    prefetch_build_tools()
    for key, value in pip_env(index).items():
        monkeypatch.setenv(key, value)
    project = release_project(root)
    defs_yaml = project / "tinyproj" / "defs" / "packages" / "defs.yaml"
    defs_yaml.write_text(defs_yaml.read_text() + "  history: {partitions: releases, keep: 3}\n")
    git(project, "commit", "-q", "-am", "history: releases")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DG_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(project), str(REPO)]), DAGSTER_HOME=str(project / "home"))
    (project / "home").mkdir()
    (project / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    def run(*command: str) -> str:
        proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    keys = run(sys.executable, "-c", TICK).strip().splitlines()[-1].split(",")
    assert sorted(keys) == sorted(RELEASES)
    run(str(BIN / "dagster"), "job", "backfill", "-m", "tinyproj.definitions", "-j", "__ASSET_JOB",
        "--partitions", ",".join(RELEASES), "--noprompt")  # fmt: skip
    # The daemon turns the backfill into runs and launches them (each its own process, all at once).
    log = (root / "daemon.log").open("w")
    daemon = popen([str(BIN / "dagster-daemon"), "run", "-m", "tinyproj.definitions"], cwd=project, env=env,
                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        with DagsterInstance.from_config(str(project / "home")) as instance:
            deadline = time.monotonic() + 300
            while True:
                runs = instance.get_runs()
                if len(runs) == 3 and all(r.is_finished for r in runs):
                    break
                assert time.monotonic() < deadline, ([(r.run_id, r.status) for r in runs],
                                                     (root / "daemon.log").read_text()[-3000:])  # fmt: skip
                time.sleep(1)
    finally:
        stop_group(daemon)
        log.close()
    with DagsterInstance.from_config(str(project / "home")) as instance:
        runs = instance.get_runs()
        assert {r.tags.get("dagster/partition") for r in runs} == set(RELEASES)
        assert len({r.tags.get("dagster/backfill") for r in runs}) == 1 and runs[0].tags.get("dagster/backfill")
        assert all(r.status.value == "SUCCESS" for r in runs), [(r.tags.get("dagster/partition"), r.status)
                                                                for r in runs]  # fmt: skip
        for key in RELEASES:
            (record,) = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=CORE, asset_partitions=[key]), limit=1
            ).records
            assert record.asset_materialization.metadata["source"].value == f"release {key}"
            for name in ("imports", "version"):
                checks = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(CORE, name), 10)
                mine = [c for c in checks if c.event.asset_check_evaluation.partition == key]
                assert mine and all(c.event.asset_check_evaluation.passed for c in mine), (key, name)
            link = project / ".nix-results" / key / "result-dnb-tiny-core" / "bin" / "dnb-tiny-core"
            printed = subprocess.run([link, "--version"], capture_output=True, text=True, check=True).stdout
            assert printed.strip() == f"dnb-tiny-core, version {key}"
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head
    assert git(project, "status", "--porcelain") == ""
    return project, env


def test_the_ui_shows_the_grid_of_packages_by_versions(
    root: Path, three_releases: TinyIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's partitions view of a package after the backfill: its three versions, all three materialized, none
    failed or missing."""
    import test_ui  # skips this test where Chromium is missing

    project, env = backfilled_project(root, three_releases, monkeypatch)
    extra = {k: v for k, v in env.items() if k in ("PYTHONPATH", "PIP_CONFIG_FILE", "PIP_INDEX_URL")}
    browser = test_ui.Chromium(test_ui.CHROMIUM, test_ui.VIEWPORT)
    server = test_ui._dg_dev(project / "home", extra, cwd=project)
    try:
        base = next(server)
        browser.call("Page.navigate", url=f"{base}/assets/dnb-tiny-core?view=partitions")
        deadline, text = time.monotonic() + 90, ""
        while time.monotonic() < deadline:
            browser.evaluate(test_ui.SKIP_DIALOG_JS)
            text = browser.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(key in text for key in RELEASES) and "Materialized (3)" in text:
                break
            time.sleep(1)
        browser.screenshot(root / "partitions.png")
        assert all(key in text for key in RELEASES), text[-3000:]
        assert "3 Partitions" in text and "Materialized (3)" in text, text[-3000:]
        assert "Failed (0)" in text and "Missing (0)" in text, text[-3000:]
    finally:
        browser.close()
        server.close()
