"""Progress and an estimate: the pure arithmetic with a clock we move, then real runs of the tiny sets by the
real Nix in a real Dagster instance, where the second run's estimate rests on the first run's build times."""

import re
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from dagster_nix_builder import NixResource, nix_assets
from dagster_nix_builder.adapters.history import recorded_seconds
from dagster_nix_builder.nix.graph import NixPackage
from dagster_nix_builder.nix.outcomes import PackageOutcome, Target
from dagster_nix_builder.nix.progress import Progress

CHECKED = Path(__file__).parent / "fixtures" / "checked"
LINE = re.compile(r"^(?P<attr>\S+) (?P<what>.+?): (?P<k>\d+) of (?P<n>\d+) done.*, about (?P<t>\d+) s left")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _built(attr: str, seconds: float) -> PackageOutcome:
    return PackageOutcome(attr, NixPackage(attr, ()), "built", True, seconds)


def test_the_time_left_is_the_work_left_at_this_runs_pace():
    clock = Clock()
    targets = [Target("a"), Target("b"), Target("c"), Target("d")]
    progress = Progress(targets, {Target("a"): 2.0, Target("b"): 6.0, Target("c"): 4.0}, jobs=2, clock=clock,
                        min_interval=0)
    assert progress.expected[Target("d")] == 4.0  # never built: the median of the others
    assert "never built before, so taken as the median of the others (4.0 s): d" in progress.basis()
    assert progress.seconds_left() == 8.0  # 16 s of work, nothing done yet: at 2 jobs
    clock.now += 4.0
    line = progress.add(_built("a", 2.0))  # 2 of 16 done in 4 s: 14 left at 2 s per second of work
    assert line is not None and line.startswith("a built in 2.0 s: 1 of 4 done, about 28 s left (estimated from")
    progress.add(PackageOutcome("c", NixPackage("c", ()), "valid"))  # valid: costs nothing, leaves both
    assert progress.seconds_left() == 20.0  # 10 s of work left at the same pace
    clock.now += 12.0
    assert progress.add(_built("b", 6.0)) == "b built in 6.0 s: 3 of 4 done, about 8 s left"
    clock.now += 5.0
    assert progress.add(_built("d", 5.0)) == "d built in 5.0 s: 4 of 4 done, about 0 s left"
    assert [(e.done, e.total) for e in progress.estimates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    table = progress.summary().splitlines()
    assert table[0].startswith("Summary: 4 of 4 packages and 0 of 0 checks in 21.0 s, 3 built now")
    assert [row.split("|")[1].strip() for row in table[3:]] == ["a", "c", "b", "d"]
    assert [row.split("|")[2].strip() for row in table[3:]] == ["built", "valid", "built", "built"]
    assert all(row.split("|")[3].strip() == "local" for row in table[3:])


def test_lines_are_throttled_to_one_a_second_but_the_last_is_always_logged():
    clock = Clock()
    targets = [Target(f"p{i}") for i in range(2500)]
    progress = Progress(targets, {}, clock=clock)
    assert progress.basis().startswith("no earlier build times")
    lines = []
    for i, target in enumerate(targets):
        clock.now += 0.01  # a hundred packages a second
        lines.append(progress.add(_built(target.attr, 0.01)))
        assert len(progress.estimates) == i + 1
    logged = [line for line in lines if line]
    assert 25 <= len(logged) <= 26  # 25 s of outcomes: one a second, plus the last
    assert logged[-1].startswith("p2499 built in 0.0 s: 2500 of 2500 done")
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
    assert lines and "no earlier build times" in lines[0].string
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
    recorded = recorded_seconds(instance, targets, keys)
    assert {t.attr: s for t, s in recorded.items() if t.test is None} == seconds
    assert len(recorded) == 8  # the checks' times too

    # Another salt: the same assets, new derivations, so everything is built again, estimated from the first.
    second = materialize([assets], resources={"nix": nix(salt + "-2")}, instance=instance)
    assert second.success
    messages = _messages(instance, second)
    lines = _progress_lines(messages)
    assert "estimated from the recorded build times of 8 of 8 targets" in lines[0].string
    assert int(lines[-1]["k"]) == 4
    rows = _summary_rows(messages)
    assert {a: float(rows[a][3]) for a in seconds} == {a: round(s, 1) for a, s in seconds.items()}
    assert {r[0] for r in rows.values()} == {"built"}

    # A no-op: every target valid, and the build times are still found behind it.
    third = materialize([assets], resources={"nix": nix(salt + "-2")}, instance=instance)
    assert third.success
    messages = _messages(instance, third)
    assert {r[0] for r in _summary_rows(messages).values()} == {"valid"}
    assert int(_progress_lines(messages)[-1]["k"]) == 4
    behind = recorded_seconds(instance, targets, keys)
    second_seconds = {e.asset_key.to_user_string(): e.materialization.metadata["build_seconds"].value
                      for e in second.get_asset_materialization_events()}
    assert {t.attr: s for t, s in behind.items() if t.test is None} == second_seconds
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
