"""Bisect: the first bad commit of a git upstream, with real git, the real Nix and a real Dagster instance.

The upstream has n = 8 commits; commit k = 5 makes the module fail to import (it still compiles, and runs as
a script), so exactly one check fails from there on: dagster-lib's `imports` (a `passthru.tests` derivation,
as the real packages have). Each step is a real build of that rev's source, with its pins passed to Nix.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance
from upstream_repo import GOOD_MODULE, NIX_CONFIG, Upstream, git, make_project, snapshot, world_readable_tmpdir

from dagster_nix_builder.nix.cli import NixCli, command_logger, json_expression
from dagster_nix_builder.upstream.update.bisect import BisectError, Verdict, bisect, max_probes
from dagster_nix_builder.upstream.update.bisect_job import build_bisect_job
from dagster_nix_builder.upstream.update.job import PinUpdater, update_job
from dagster_nix_builder.upstream.update.workflow import UpdateSettings, update

N, K = 8, 5

# dagster-lib with an import check, as nix/package-tests.nix gives the real packages theirs: the module
# imports in a bare interpreter given only the package's output.
LIB_WITH_IMPORT_CHECK = """{ runCommand, dagster-src }:
let
  lib = runCommand "dagster-lib" { src = dagster-src; } ''
    mkdir -p $out/lib
    cp $src/dagster.py $out/lib/dagster.py
  '';
in lib // {
  tests.imports = runCommand "dagster-lib-test-imports" { inherit lib; } ''
    cd "$TMPDIR"
    /usr/bin/python3 -I -S -B -c "import sys; sys.path.insert(0, '$lib/lib'); import dagster"
    echo ok > $out
  '';
}
"""
# Compiles, and `dagster --version` (the module run as a script) still answers: only importing it fails.
BREAKS_IMPORT = 'if __name__ != "__main__":\n    import dagster_lib_needs_this_missing_module\n'

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="needs the nix CLI")


class NixBuilds(logging.Handler):
    """Counts the `nix build` commands that build the packages (not the source's hash and version fetches,
    which name `dagster-src` alone), as every Nix command is logged on `command_logger`."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if " build " in text and "dagster-lib" in text:
            self.count += 1

    def __enter__(self) -> NixBuilds:
        self._level = command_logger.level
        command_logger.setLevel(logging.DEBUG)
        command_logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        command_logger.removeHandler(self)
        command_logger.setLevel(self._level)


@pytest.fixture
def world() -> Iterator[dict]:
    """An upstream of N commits, commit K breaking dagster-lib's import check, and a project pinned at the
    first (the last good pin). A salt makes every store path new, so each run builds for real."""
    root = world_readable_tmpdir("dnb-bisect-")
    salt = uuid.uuid4().hex
    upstream = Upstream(root)
    revs = []
    for i in range(1, N + 1):
        module = GOOD_MODULE.format(version=f"{i}.0") + f"# {salt}\n" + (BREAKS_IMPORT if i >= K else "")
        revs.append(upstream.push({"dagster.py": module}, f"commit {i}" + (" (breaks the import)" if i == K else "")))
    project = make_project(root, upstream)
    (project / "nix" / "packages" / "dagster-lib.nix").write_text(LIB_WITH_IMPORT_CHECK)
    git(project, "commit", "-q", "-am", "dagster-lib with an import check")
    update(UpdateSettings(repo_dir=project, nix_config=NIX_CONFIG), rev=revs[0])
    yield {"root": root, "upstream": upstream, "revs": revs, "project": project}
    shutil.rmtree(root, ignore_errors=True)


def updater(world: dict) -> PinUpdater:
    return PinUpdater(
        repo_dir=str(world["project"]), nix_config=NIX_CONFIG, bisect_cache_file=str(world["root"] / "steps.json")
    )


def test_a_failed_update_names_the_first_bad_commit(world: dict) -> None:
    project, revs = world["project"], world["revs"]
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with NixBuilds() as builds, DagsterInstance.ephemeral() as instance:
        result = update_job.execute_in_process(
            run_config={"ops": {"update_pins": {"config": {"rev": revs[-1]}}}},
            resources={"pin_updater": updater(world)}, instance=instance, raise_on_error=False,
        )  # fmt: skip

    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.user_failure_data
    assert error.description.startswith("update failed at step 'check': dagster-lib: check imports failed")
    assert f"bisect: the first bad commit is {revs[K - 1]} (commit {K} (breaks the import)): " \
           "dagster-lib: check imports failed" in error.description  # fmt: skip
    assert "No module named 'dagster_lib_needs_this_missing_module'" in error.description
    meta = {k: v.value for k, v in error.metadata.items()}
    assert meta["bisect/first_bad"] == revs[K - 1]
    assert meta["bisect/packages"] == ["dagster-lib"] and meta["bisect/checks"] == ["imports"]
    assert meta["bisect/candidates"] == N - 1
    # The update's own verdict on the bad end is taken: only the halving builds, and at most ⌈log2 n⌉ + 1.
    assert meta["bisect/builds"] == builds.count - 1, "the update's own build, then the bisect's"
    assert 1 <= meta["bisect/builds"] <= math.ceil(math.log2(N - 1)) <= math.ceil(math.log2(N)) + 1
    # Nothing was written: the pins are the last good one, byte for byte, and no commit was made.
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head
    assert git(project, "status", "--porcelain") == ""


def test_the_bisect_job_by_hand_names_k_in_at_most_log2_n_plus_1_builds_and_never_builds_a_step_twice(
    world: dict,
) -> None:
    project, revs = world["project"], world["revs"]
    before = snapshot(project)
    job = build_bisect_job(resource_defs={"pin_updater": updater(world)})
    config = {"ops": {"bisect": {"config": {"good": revs[0], "bad": revs[-1]}}}}

    def run() -> tuple[dict, int]:
        with NixBuilds() as builds, DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(run_config=config, instance=instance)
        assert result.success
        return result.output_for_node("bisect"), builds.count

    found, count = run()
    assert found["first_bad"] == revs[K - 1]
    assert found["verdict"]["failures"][0]["attr"] == "dagster-lib"
    assert found["verdict"]["failures"][0]["test"] == "imports"
    assert any("dagster_lib_needs_this_missing_module" in line for line in found["verdict"]["failures"][0]["log_tail"])
    assert found["builds"] == count, "each step that built ran one nix build"
    assert 1 <= count <= math.ceil(math.log2(N)) + 1, found["steps"]
    probed = [s["rev"] for s in found["steps"]]
    assert len(probed) == len(set(probed)) and probed[0] == revs[-1], "the bad end first, each rev once"

    # Again: every step is known, the good ones from the store, the bad ones from the recorded failures.
    again, count = run()
    assert count == 0 and again["builds"] == 0
    assert again["first_bad"] == revs[K - 1] and [s["rev"] for s in again["steps"]] == probed
    assert snapshot(project) == before


def test_the_bisect_job_refuses_a_range_that_does_not_fail(world: dict) -> None:
    revs = world["revs"]
    job = build_bisect_job(resource_defs={"pin_updater": updater(world)})
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"bisect": {"config": {"good": revs[0], "bad": revs[K - 2]}}}},
            instance=instance, raise_on_error=False,
        )  # fmt: skip
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_failure_data.user_failure_data.description == (
        f"bisect failed: the bad end {revs[K - 2]} builds and passes its checks now: nothing to bisect"
    )


@pytest.mark.parametrize(
    ("good", "bad", "message"),
    [
        ("HEAD", "a" * 40, "invalid git revision 'HEAD': expected 40 hex digits"),
        ("a" * 40, "--upload-pack=touch /tmp/x", "invalid git revision '--upload-pack=touch /tmp/x'"),
    ],
)
def test_the_bisect_job_validates_its_revs(tmp_path: Path, good: str, bad: str, message: str) -> None:
    job = build_bisect_job(resource_defs={"pin_updater": PinUpdater(repo_dir=str(tmp_path))})
    (tmp_path / "nix").mkdir()
    shutil.copy(Path(__file__).parent.parent / "nix" / "pins.json", tmp_path / "nix" / "pins.json")
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"bisect": {"config": {"good": good, "bad": bad}}}}, instance=instance,
            raise_on_error=False,
        )  # fmt: skip
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert message in failure.step_failure_data.user_failure_data.description


@pytest.mark.parametrize("n", range(1, 34))
def test_the_search_finds_every_first_bad_commit_within_the_bound(n: int) -> None:
    """The pure search, over every n and k, with a callback that is the truth (commit k and later fail)."""
    revs = [f"{i:040x}" for i in range(1, n + 1)]
    for k in range(1, n + 1):
        probed: list[str] = []

        def probe(rev: str, k: int = k, probed: list[str] = probed) -> Verdict:
            probed.append(rev)
            return Verdict(rev, good=int(rev, 16) < k, built=True)

        result = bisect("0" * 40, revs, probe)
        assert result.first_bad == revs[k - 1]
        assert len(probed) == len(set(probed)) <= max_probes(n) == math.ceil(math.log2(n)) + 1
        assert result.verdict.rev == revs[k - 1] and not result.verdict.good, "what fails there is named"


def test_the_search_refuses_an_empty_range_and_a_bad_end_that_passes() -> None:
    with pytest.raises(BisectError, match="nothing to bisect"):
        bisect("0" * 40, [], lambda rev: Verdict(rev, good=False))
    with pytest.raises(BisectError, match="builds and passes its checks now"):
        bisect("0" * 40, ["1" * 40], lambda rev: Verdict(rev, good=True))


def test_pins_passed_as_a_nix_value_arrive_whole() -> None:
    """What every step rests on: `NixCli.value_args` reach Nix as the same data (quotes, backslashes, `${`)."""
    value = {"git": {"url": 'a "b" \\c ${d} \n', "rev": None, "n": [1, 2.5, True]}}
    cli = NixCli(value_args={"pins": value}, nix_config=NIX_CONFIG)
    flags = cli.value_flags()
    assert flags[:2] == ["--arg", "pins"] and flags[2] == json_expression(value)
    proc = subprocess.run(
        [cli.tool_path("nix-instantiate"), "--eval", "--strict", "--json", "--expr", "{ pins }: pins", *flags],
        capture_output=True, text=True, check=True, env=cli.subprocess_env(),
    )  # fmt: skip
    assert json.loads(proc.stdout) == value
    assert cli.function_args()["pins"] == value


def test_an_update_with_bisect_off_names_no_commit(world: dict) -> None:
    revs = world["revs"]
    with DagsterInstance.ephemeral() as instance:
        result = update_job.execute_in_process(
            run_config={"ops": {"update_pins": {"config": {"rev": revs[-1], "bisect": False}}}},
            resources={"pin_updater": updater(world)}, instance=instance, raise_on_error=False,
        )  # fmt: skip
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.user_failure_data
    assert error.description.startswith("update failed at step 'check': dagster-lib: check imports failed")
    assert "bisect" not in error.description and not any(k.startswith("bisect/") for k in error.metadata)
