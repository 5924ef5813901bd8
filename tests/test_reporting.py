"""The order of reports and what is held back (reporting.ReportQueue), without Nix or Dagster: recorded Nix
logs replayed through ``NixBuild.handle``, and hand-made outcomes.

The recordings are real: ``tests/fixtures/nix-<version>/checks-*`` were written by
``tests/fixtures/checked/record.py`` (the `checked` set, one job at a time, ``base.tests.imports`` failing,
``solo.tests.version`` not deterministic), the older ``*.jsonl`` by earlier recordings of the tiny set. What
Nix would answer about the store is answered by :class:`ReplayStore`, a stand-in for ``NixCli`` that
follows the log: a derivation's outputs become valid when the ``builds`` activity counts one more done
(with one job at a time, the one running), never when it counts one more failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph, NixTest, package_graph_from_json
from dagster_nix_builder.nix.log_format import ActivityProgress, ActivityStarted, ActivityType, parse_line
from dagster_nix_builder.nix.outcomes import PackageOutcome, Target, TestOutcome
from dagster_nix_builder.nix.reporting import ReportQueue

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = sorted(d for d in FIXTURES.glob("nix-[0-9]*") if (d / "checks-graph.json").is_file())


class ReplayStore:
    """Stand-in for ``NixCli`` (NOT Nix): the store as the replayed log says it is at each event."""

    def __init__(self, graph: NixPackageGraph, valid: set[str] = frozenset()) -> None:
        self.outputs: dict[str, list[str]] = {}
        self.requisite: dict[str, set[str]] = {}
        for attr in graph:
            package = graph[attr]
            ups = {graph[u].drv_path for u in graph.upstream(attr)}
            self.outputs[package.drv_path] = list(package.outputs.values())
            self.requisite[package.drv_path] = {package.drv_path, *ups}
            for test in package.tests.values():
                self.outputs[test.drv_path] = [test.out_path]
                self.requisite[test.drv_path] = {test.drv_path, package.drv_path, *ups}
        self.valid = set(valid)
        self.queries = 0
        self._builds_activity: int | None = None
        self._running: list[str] = []
        self._done = self._failed = 0

    def observe(self, event) -> None:
        if isinstance(event, ActivityStarted) and event.type == ActivityType.BUILDS:
            self._builds_activity = event.id
        elif isinstance(event, ActivityStarted) and event.drv_path and event.drv_path not in self._running:
            self._running.append(event.drv_path)
        elif isinstance(event, ActivityProgress) and event.id == self._builds_activity:
            for _ in range(event.done - self._done):
                self.valid.update(self.outputs[self._running.pop(0)])
            for _ in range(event.failed - self._failed):
                self._running.pop(0)
            self._done, self._failed = event.done, event.failed

    # The few NixCli methods NixBuild calls.
    def build_command(self, installables, *, rebuild=False):
        return ["nix", "build", *(["--rebuild"] if rebuild else []), *installables]

    def invalid_paths(self, paths):
        self.queries += 1
        return {p for p in paths if p not in self.valid}

    def surely_invalid_paths(self, paths):  # noqa: ARG002
        return set()  # nothing of the recording is on this disk: the replayed log alone says what is valid

    def outputs_of(self, drv):
        return self.outputs[drv]

    def requisites(self, drv):
        return self.requisite.get(drv, {drv})


def replay(graph, targets, log: Path, returncode: int, *, rebuild=False, valid=frozenset()):
    """Outcomes of ``targets`` in the order NixBuild settles them while ``log`` is replayed."""
    store = ReplayStore(graph, valid)
    build = NixBuild(store, graph, targets, rebuild=rebuild, log=lambda message: None)
    arrived = []
    for line in log.read_text().splitlines():
        event = parse_line(line)
        store.observe(event)
        arrived += build.handle(event)
    build.returncode = returncode
    arrived += build.finish()
    return build, arrived


def name(outcome) -> str:
    return outcome.attr if isinstance(outcome, PackageOutcome) else f"{outcome.attr}.tests.{outcome.test.name}"


def report(graph, targets, outcomes):
    queue = ReportQueue(graph, targets)
    reported = [o for outcome in outcomes for o in queue.add(outcome)]
    reported += queue.finish()
    return [name(o) for o in reported], queue.failures


def recorded_graph(version_dir: Path) -> NixPackageGraph:
    return package_graph_from_json("<checked>", json.loads((version_dir / "checks-graph.json").read_text()))


def every_target(graph):
    return [Target(a) for a in graph] + [Target(a, t) for a in graph for t in graph[a].tests]


@pytest.mark.parametrize("version_dir", RECORDED, ids=lambda d: d.name)
def test_replayed_build_with_a_failing_blocking_test(version_dir: Path):
    graph = recorded_graph(version_dir)
    targets = every_target(graph)
    returncode = int((version_dir / "checks-build.returncode").read_text())
    build, arrived = replay(graph, targets, version_dir / "checks-build.jsonl", returncode)
    assert returncode == 1
    outcomes = {name(o): o for o in arrived}
    assert sorted(outcomes) == sorted(t.installable for t in targets)  # one outcome per target, no more
    failed = outcomes["base.tests.imports"]
    assert [n for n, o in outcomes.items() if not o.ok] == ["base.tests.imports"]
    assert failed.reason.startswith(f"build of {graph['base'].tests['imports'].drv_path} failed")
    assert "base.imports: FAILED on purpose" in failed.log_tail
    assert all(o.built_now for o in outcomes.values())
    # The failure is known only when Nix exits: mid and its test came before it.
    order = [name(o) for o in arrived]
    assert order.index("mid") < order.index("base.tests.imports") and order[-1] == "base.tests.imports"
    assert any("base-test-imports.drv" in e for e in build.errors)

    reported, failures = report(graph, targets, arrived)
    # mid waited for base's blocking test, which failed: mid and everything after it is held back.
    assert reported.index("base") < reported.index("base.tests.imports")
    assert "mid" not in reported and "top-level" not in reported and "mid.tests.imports" not in reported
    assert set(reported) == {"base", "base.tests.imports", "base.tests.version", "solo", "solo.tests.version"}
    assert reported.index("solo") < reported.index("solo.tests.version")
    assert failures["mid"] == "not materialized: the blocking check imports of base failed"
    assert failures["top-level"].startswith("not materialized: ")
    assert failures["base.tests.imports"].startswith("blocking check imports of base failed: build of ")
    assert "base.imports: FAILED on purpose" in failures["base.tests.imports"]
    assert set(failures) == {"mid", "top-level", "base.tests.imports"}


class InPlaceStore(ReplayStore):
    """A file system filter that lets the outputs of a running build through (as one testing existence alone
    would on Nix 2.8, which builds in place): only the log's events can tell them apart."""

    def surely_invalid_paths(self, paths):
        running = {path for drv in self._running for path in self.outputs[drv]}
        return {p for p in paths if p not in self.valid and p not in running}


@pytest.mark.parametrize("version_dir", RECORDED, ids=lambda d: d.name)
def test_quiet_ticks_do_not_ask_nix_about_what_this_nix_is_building(version_dir: Path, monkeypatch):
    graph = recorded_graph(version_dir)
    targets = every_target(graph)
    monkeypatch.setattr("dagster_nix_builder.nix.build.PROBE_INTERVAL_S", 0.0)  # every tick may probe

    def replayed(ticks: bool):
        store = InPlaceStore(graph)
        build = NixBuild(store, graph, targets, log=lambda message: None)
        arrived = []
        for line in (version_dir / "checks-build.jsonl").read_text().splitlines():
            event = parse_line(line)
            store.observe(event)
            arrived += build.handle(event)
            if ticks:  # a quiet second after every line: a running build is on disk all along
                arrived += build.handle(None)
        build.returncode = 1
        return [name(o) for o in [*arrived, *build.finish()]], store.queries

    (order, queries), (order_ticking, queries_ticking) = replayed(False), replayed(True)
    assert order_ticking == order and queries > 0
    assert queries_ticking == queries  # the log's own events settle what this nix builds


@pytest.mark.parametrize("version_dir", RECORDED, ids=lambda d: d.name)
def test_replayed_rebuild_reports_a_nondeterministic_test_as_passing_with_a_note(version_dir: Path):
    graph = recorded_graph(version_dir)
    targets = [Target("base", "version"), Target("solo", "version")]
    valid = {graph[t.attr].tests[t.test].out_path for t in targets}
    returncode = int((version_dir / "checks-rebuild.returncode").read_text())
    build, arrived = replay(graph, targets, version_dir / "checks-rebuild.jsonl", returncode, rebuild=True,
                            valid=valid)
    assert returncode == 1
    outcomes = {name(o): o for o in arrived}
    assert sorted(outcomes) == ["base.tests.version", "solo.tests.version"]
    assert all(o.ok and o.status == "built" and o.built_now for o in outcomes.values())
    assert outcomes["base.tests.version"].note is None
    note = outcomes["solo.tests.version"].note
    assert note and "may not be deterministic" in note and graph["solo"].tests["version"].drv_path in note
    assert build.cli.queries == 0  # a rebuild never asks which outputs are valid: they all are


def test_replayed_tiny_success_reports_dependencies_first():
    # tests/fixtures/build-success.jsonl: base, solo, mid and top-level of the tiny set (Nix 2.8).
    events = [parse_line(line) for line in (FIXTURES / "build-success.jsonl").read_text().splitlines()]
    drvs = [e.drv_path for e in events if isinstance(e, ActivityStarted) and e.drv_path]
    by_name = {Path(d).name.split("-", 1)[1].removesuffix(".drv"): d for d in drvs}
    deps = {"base": (), "solo": (), "mid": ("base",), "top-level": ("base", "mid")}
    graph = NixPackageGraph("tiny", {
        a: NixPackage(a, deps[a], drv_path=by_name[a], outputs={"out": by_name[a].removesuffix(".drv")}) for a in deps
    })
    targets = [Target(a) for a in ["top-level", "mid", "solo", "base"]]
    _, arrived = replay(graph, targets, FIXTURES / "build-success.jsonl", 0)
    assert [o.status for o in arrived] == ["built"] * 4
    reported, failures = report(graph, targets, arrived)
    assert failures == {}
    assert reported.index("base") < reported.index("mid") < reported.index("top-level")
    assert sorted(reported) == ["base", "mid", "solo", "top-level"]


# ---- hand-made outcomes ------------------------------------------------------------------------------

def _graph() -> NixPackageGraph:
    def test(attr, name, blocking):
        return NixTest(name, f"/nix/store/{attr}-{name}.drv", f"/nix/store/{attr}-{name}", blocking)

    return NixPackageGraph("hand", {
        "a": NixPackage("a", (), tests={"imports": test("a", "imports", True), "lint": test("a", "lint", False)}),
        "b": NixPackage("b", ("a",), tests={"imports": test("b", "imports", True)}),
        "c": NixPackage("c", ("b",)),
        "d": NixPackage("d", ()),
    })


G = _graph()


def pkg(attr, ok=True, reason=None):
    tail = () if ok else ("tail line",)
    return PackageOutcome(attr, G[attr], "built" if ok else "failed", reason=reason, log_tail=tail)


def tst(attr, test, ok=True):
    return TestOutcome(attr, G[attr].tests[test], "built" if ok else "failed", reason=None if ok else "exit 1",
                       log_tail=() if ok else ("it broke",))


ALL = [Target("a"), Target("a", "imports"), Target("a", "lint"), Target("b"), Target("b", "imports"), Target("c"),
       Target("d")]


def test_a_package_waits_for_its_dependency_and_the_dependencys_blocking_test():
    queue = ReportQueue(G, ALL)
    assert queue.add(pkg("c")) == []  # b not reported yet
    assert queue.add(pkg("b")) == []  # a not reported yet
    assert [name(o) for o in queue.add(pkg("a"))] == ["a"]  # b waits for a's blocking imports test
    assert queue.add(tst("a", "lint", ok=False)) == [tst("a", "lint", ok=False)]  # not blocking: says nothing
    assert [name(o) for o in queue.add(tst("a", "imports"))] == ["a.tests.imports", "b"]
    assert [name(o) for o in queue.add(tst("b", "imports"))] == ["b.tests.imports", "c"]
    assert [name(o) for o in queue.add(pkg("d"))] == ["d"]
    assert queue.finish() == [] and queue.failures == {}


def test_a_test_waits_for_its_package():
    queue = ReportQueue(G, ALL)
    assert queue.add(tst("a", "imports")) == []
    assert [name(o) for o in queue.add(pkg("a"))] == ["a", "a.tests.imports"]


def test_a_failed_blocking_test_holds_back_everything_downstream_but_not_its_package():
    queue = ReportQueue(G, ALL)
    for outcome in [pkg("c"), pkg("b"), tst("b", "imports"), pkg("a")]:
        queue.add(outcome)
    assert [name(o) for o in queue.add(tst("a", "imports", ok=False))] == ["a.tests.imports"]
    assert queue.finish() == []
    assert queue.failures == {
        "a.tests.imports": "blocking check imports of a failed: exit 1\n    it broke",
        "b": "not materialized: the blocking check imports of a failed",
        "c": "not materialized: the blocking check imports of a failed",
        "d": "no outcome",  # never given one
    }
    assert Target("a") in queue.reported and Target("b", "imports") not in queue.reported


def test_a_failed_package_holds_back_its_tests_and_dependents():
    queue = ReportQueue(G, ALL)
    queue.add(tst("a", "imports"))
    assert queue.add(pkg("a", ok=False, reason="build of a failed")) == []
    assert queue.add(pkg("b")) == [] and queue.add(pkg("d")) == [pkg("d")]
    queue.finish()
    assert queue.failures["a"] == "build of a failed\n    tail line"
    assert queue.failures["b"].startswith("not materialized: dependency a failed (build of a failed)")
    assert queue.failures["c"].startswith("not materialized: dependency a failed (build of a failed)")
    assert queue.reported == {Target("d")}


def test_missing_outcomes_are_named_at_the_end():
    queue = ReportQueue(G, ALL)
    queue.add(pkg("a"))
    queue.add(pkg("b"))
    assert [name(o) for o in queue.finish()] == []
    assert queue.failures == {
        "b": "not reported: no outcome of the blocking check imports of a",
        "c": "not materialized: dependency b failed (not reported: no outcome of the blocking check imports of a)",
        "d": "no outcome",
    }


def test_a_blocking_test_of_a_package_not_built_in_this_run_still_blocks_what_depends_on_it():
    targets = [Target("a", "imports"), Target("b")]
    queue = ReportQueue(G, targets)
    assert queue.add(pkg("b")) == []  # waits for a's selected blocking test, although a is not built
    assert [name(o) for o in queue.add(tst("a", "imports", ok=False))] == ["a.tests.imports"]
    queue.finish()
    assert queue.failures["b"] == "not materialized: the blocking check imports of a failed"
    passing = ReportQueue(G, targets)
    passing.add(pkg("b"))
    assert [name(o) for o in passing.add(tst("a", "imports"))] == ["a.tests.imports", "b"]


def test_a_test_alone_is_reported_at_once():
    queue = ReportQueue(G, [Target("b", "imports")])
    assert [name(o) for o in queue.add(tst("b", "imports", ok=False))] == ["b.tests.imports"]
    assert set(queue.failures) == {"b.tests.imports"}


@pytest.mark.parametrize("version_dir", RECORDED[:1], ids=lambda d: d.name)
def test_a_target_found_valid_before_the_log_caught_up_is_settled_without_asking_nix_again(version_dir: Path):
    graph = recorded_graph(version_dir)
    store = ReplayStore(graph, valid=set(graph["solo"].outputs.values()))
    build = NixBuild(store, graph, [Target("solo")], log=lambda message: None)
    build._queue.put((0.0, b"@nix {}"))  # a line Nix wrote before the query returned, not read yet
    assert list(build._probe()) == [] and store.queries == 1  # valid, but maybe built by this nix: wait
    assert list(build.handle(None)) == [] and list(build.handle(None)) == []  # not caught up: no answer yet
    build._queue.get()
    (solo,) = build.handle(None)  # caught up, and no build of solo was seen: valid by other means
    assert (solo.attr, solo.status, solo.built_now) == ("solo", "valid", False)
    assert store.queries == 1  # valid stays valid: Nix was not asked again while the log was behind
