"""Progress and an estimate: the pure arithmetic with a clock we move, then real runs of the tiny sets by the
real Nix in a real Dagster instance, where the second run's estimate rests on the first run's build times."""

import re
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from dagster_nix_builder import NixResource, nix_assets
from dagster_nix_builder.adapters.history import recorded_builds
from dagster_nix_builder.nix.graph import NixPackage
from dagster_nix_builder.nix.outcomes import PackageOutcome, Target
from dagster_nix_builder.nix.progress import Progress, Recorded

CHECKED = Path(__file__).parent / "fixtures" / "checked"
LINE = re.compile(
    r"^(?P<attr>\S+) (?P<what>.+?): (?P<k>\d+) of (?P<n>\d+) done.*?, (about (?P<t>\d+) s left|no estimate)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _built(attr: str, seconds: float) -> PackageOutcome:
    return PackageOutcome(attr, NixPackage(attr, ()), "built", True, seconds)


def test_without_a_record_of_its_run_the_time_left_is_the_work_left_over_the_jobs():
    clock = Clock()
    targets = [Target("a"), Target("b"), Target("c"), Target("d")]
    recorded = {Target("a"): Recorded(2.0), Target("b"): Recorded(6.0), Target("c"): Recorded(4.0)}
    progress = Progress(targets, recorded, jobs=2, clock=clock, min_interval=0)
    assert progress.expected[Target("d")] == 4.0  # never built: the median of the others
    assert "never built before, so taken as the median of the others (4.0 s): d" in progress.basis()
    assert progress.seconds_left() == 8.0  # 16 s of work at 2 jobs
    clock.now += 4.0
    line = progress.add(_built("a", 2.0))  # 14 s left at 2 jobs
    assert line is not None and line.startswith("a built in 2.0 s: 1 of 4 done, about 7 s left (estimated from")
    assert progress.add(PackageOutcome("c", NixPackage("c", ()), "valid")) is None  # valid: no line, no cost
    assert progress.seconds_left() == 5.0
    clock.now += 12.0
    assert progress.add(_built("b", 6.0)) == "b built in 6.0 s: 3 of 4 done, about 2 s left"
    clock.now += 5.0
    assert progress.add(_built("d", 5.0)) == "d built in 5.0 s: 4 of 4 done, about 0 s left"
    assert [(e.done, e.total) for e in progress.estimates] == [(1, 4), (3, 4), (4, 4)]
    table = progress.summary().splitlines()
    assert table[0].startswith("Summary: 4 of 4 packages and 0 of 0 checks in 21.0 s")
    assert [row.split("|")[1].strip() for row in table[3:]] == ["a", "c", "b", "d"]
    assert [row.split("|")[2].strip() for row in table[3:]] == ["built", "valid", "built", "built"]
    assert all(row.split("|")[3].strip() == "local" for row in table[3:])
    assert [row.split("|")[6].strip() for row in table[3:]] == ["4.0", "4.0", "16.0", "21.0"]  # finished at


def test_after_a_package_built_before_the_time_left_is_that_runs_scaled_by_the_work_left():
    clock = Clock()
    targets = [Target("a"), Target("b"), Target("c"), Target("d")]
    # The last run built a, b, c and went on 10 s after a, 5 s after b, 0 after c; d is new (median 3 s).
    recorded = {Target("a"): Recorded(2.0, 10.0, "r"), Target("b"): Recorded(3.0, 5.0, "r"),
                Target("c"): Recorded(4.0, 0.0, "r")}
    progress = Progress(targets, recorded, jobs=2, clock=clock, min_interval=0)
    clock.now += 30.0  # this run's pace plays no part
    line = progress.add(_built("a", 2.0))  # 3 + 4 + 3 left now, 3 + 4 were left then: 10 s * 10 / 7
    assert line is not None and "1 of 4 done, about 14 s left" in line
    assert progress.estimates[-1].seconds_left == pytest.approx(10.0 * 10 / 7)
    assert progress.add(PackageOutcome("d", NixPackage("d", ()), "valid")) is None
    assert progress.add(_built("b", 3.0)) == "b built in 3.0 s: 3 of 4 done, about 5 s left"  # 5 s * 4 / 4
    assert progress.add(_built("c", 4.0)) == "c built in 4.0 s: 4 of 4 done, about 0 s left"
    # Nix's order varies: a package that finished last in that run may finish first now; the work left bounds it.
    early = Progress(targets, recorded, jobs=2, clock=clock)
    assert early.add(_built("c", 4.0)) is not None
    assert early.estimates[-1].seconds_left == pytest.approx((2 + 3 + 3) / 2)


def test_lines_are_throttled_to_one_a_second_but_the_last_is_always_logged():
    clock = Clock()
    targets = [Target(f"p{i}") for i in range(2500)]
    progress = Progress(targets, {}, clock=clock)
    assert progress.seconds_left() is None
    assert progress.basis().startswith("no estimate: no earlier build times recorded")
    lines = []
    for i, target in enumerate(targets):
        clock.now += 0.01  # a hundred packages a second
        lines.append(progress.add(_built(target.attr, 0.01)))
        assert len(progress.estimates) == i + 1
    logged = [line for line in lines if line]
    assert 25 <= len(logged) <= 26  # 25 s of outcomes: one a second, plus the last
    assert logged[-1] == "p2499 built in 0.0 s: 2500 of 2500 done, no estimate"
    assert len(progress.summary().splitlines()) == 2 + 1 + 2500


def _messages(instance: DagsterInstance, result) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]


def _progress_lines(messages: list[str]) -> list[re.Match]:
    return [m for m in map(LINE.match, messages) if m]


def _summary_rows(messages: list[str]) -> dict[str, list[str]]:
    (summary,) = [m for m in messages if m.startswith("Summary: ")]
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in summary.splitlines()[3:]]
    return {row[0]: row[1:] for row in rows}


def test_a_second_run_estimates_from_the_first_runs_build_times(tmp_path: Path, salt: str):
    def nix(salt: str) -> NixResource:
        return NixResource(nix_dir=str(CHECKED), out_link_dir=str(tmp_path / "results"),
                           nix_args={"salt": salt})

    instance = DagsterInstance.ephemeral()
    first_nix = nix(salt)
    assets = nix_assets(first_nix.load_graph())
    first = materialize([assets], resources={"nix": first_nix}, instance=instance)
    assert first.success
    messages = _messages(instance, first)
    lines = _progress_lines(messages)
    assert lines and all(m["t"] is None for m in lines) and "no earlier build times" in lines[0].string
    ks = [int(m["k"]) for m in lines]
    assert ks == sorted(set(ks)) and ks[-1] == 4 and {int(m["n"]) for m in lines} == {4}
    rows = _summary_rows(messages)
    assert sorted(rows) == ["base", "base.tests.imports", "base.tests.version", "mid", "mid.tests.imports",
                            "solo", "solo.tests.version", "top-level"]
    assert {r[0] for r in rows.values()} == {"built"} and {r[1] for r in rows.values()} == {"local"}

    seconds = {e.asset_key.to_user_string(): e.materialization.metadata["build_seconds"].value
               for e in first.get_asset_materialization_events()}
    graph = first_nix.load_graph()
    targets = [Target(a) for a in graph] + [Target(a, t) for a in graph for t in graph[a].tests]
    keys = {a: AssetKey(a) for a in graph}
    recorded = recorded_builds(instance, targets, keys)
    assert {t.attr: r.seconds for t, r in recorded.items() if t.test is None} == seconds
    assert len(recorded) == 8  # the checks' times too
    assert {r.run for r in recorded.values()} == {first.run_id}
    assert min(r.left for r in recorded.values()) == 0.0  # the last result of that run
    assert 0 < recorded[Target("base")].left < max(r.left for r in recorded.values()) + 1

    # Another salt: the same assets, new derivations, so everything is built again, estimated from the first.
    second = materialize([assets], resources={"nix": nix(salt + "-2")}, instance=instance)
    assert second.success
    messages = _messages(instance, second)
    lines = _progress_lines(messages)
    assert "estimated from the recorded build times of 8 of 8 targets" in lines[0].string
    assert int(lines[-1]["k"]) == 4 and all(m["t"] is not None for m in lines)
    rows = _summary_rows(messages)
    assert {a: float(rows[a][3]) for a in seconds} == {a: round(s, 1) for a, s in seconds.items()}
    assert {r[0] for r in rows.values()} == {"built"}

    # A no-op: every target valid, and the build times are still found behind it.
    third = materialize([assets], resources={"nix": nix(salt + "-2")}, instance=instance)
    assert third.success
    messages = _messages(instance, third)
    assert {r[0] for r in _summary_rows(messages).values()} == {"valid"}
    assert _progress_lines(messages) == []  # nothing built, nothing to say but the table
    behind = recorded_builds(instance, targets, keys)
    second_seconds = {e.asset_key.to_user_string(): e.materialization.metadata["build_seconds"].value
                      for e in second.get_asset_materialization_events()}
    assert {t.attr: r.seconds for t, r in behind.items() if t.test is None} == second_seconds
    assert {r.run for r in behind.values()} == {second.run_id}
    assert len(behind) == 8


def test_a_failure_is_in_the_table_and_what_it_blocks_too(make_nix):
    nix = make_nix(fail="mid")
    instance = DagsterInstance.ephemeral()
    result = materialize([nix_assets(nix.load_graph())], resources={"nix": nix}, instance=instance,
                         raise_on_error=False)
    assert not result.success
    rows = _summary_rows(_messages(instance, result))
    assert rows["base"][0] == "built" and rows["solo"][0] == "built" and rows["mid"][0] == "failed"
    assert rows["top-level"][0] in {"failed", "not reported"}
