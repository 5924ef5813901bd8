"""One `nix build` of packages and tests (build.NixBuild), against the real Nix, without Dagster."""

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from dagster_nix_builder import NixBuildError, NixPackageSetError, NixResource
from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.outcomes import Target

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"
CHECKED = FIXTURES / "checked"


def test_command_line_from_resource():
    nix = NixResource(
        nix_dir=str(TINY), scope="bootstrap", max_jobs=3, cores=2, builders="ssh://b x86_64-linux",
        extra_options={"sandbox": "false"}, nix_args={"salt": "s"},
    )
    cli = nix.cli()
    command = cli.build_command(["base", "mid.tests.imports"])
    assert command[1:4] == ["--log-format", "internal-json", "-v"]
    assert command[4:7] == ["build", "--file", str(TINY)]
    joined = " ".join(command)
    for part in ("--argstr scope bootstrap", "--argstr salt s", "--keep-going", "--json", "--no-link",
                 "--max-jobs 3", "--cores 2", "--builders ssh://b x86_64-linux", "--option sandbox false"):
        assert part in joined
    assert "--rebuild" not in command and "--rebuild" in cli.build_command(["base"], rebuild=True)
    assert command[-2:] == ["base", "mid.tests.imports"]
    assert "substituters =" in cli.subprocess_env()["NIX_CONFIG"]
    assert "NIX_CONFIG" not in os.environ or os.environ["NIX_CONFIG"] != cli.subprocess_env()["NIX_CONFIG"]


def test_max_jobs_defaults_to_the_cores_unless_configured():
    command = NixResource(nix_dir=str(TINY)).cli().build_command(["base"])
    assert command[-3:] == ["--max-jobs", str(os.cpu_count()), "base"]
    assert "--max-jobs" not in NixResource(nix_dir=str(TINY), max_jobs=None).cli().build_command(["base"])


def test_outcomes_then_already_valid_without_starting_nix(make_nix):
    nix = make_nix()
    build = nix.build(["top-level", "solo"])
    outcomes = build.wait()
    assert {o.attr: o.status for o in outcomes} == {"top-level": "built", "solo": "built"}
    assert all(o.built_now and o.build_seconds > 0 for o in outcomes)
    assert build.returncode == 0
    again = nix.build(["top-level", "mid"])
    assert again.process is None  # every output valid: no nix build at all
    assert {o.attr: (o.status, o.built_now, o.build_seconds) for o in again.wait()} == {
        "top-level": ("valid", False, 0.0), "mid": ("valid", False, 0.0),
    }


def test_failure_names_the_failed_dependency_with_its_log(make_nix):
    build = make_nix(fail="mid").build(["base", "mid", "top-level", "solo"])
    outcomes = {o.attr: o for o in build.wait()}
    assert outcomes["base"].ok and outcomes["solo"].ok
    assert outcomes["mid"].status == "failed" and "something broke in mid" in outcomes["mid"].log_tail
    assert outcomes["mid"].reason.startswith(f"build of {outcomes['mid'].package.drv_path} failed")
    top = outcomes["top-level"]
    assert top.status == "failed" and top.reason == "dependency failed: mid"
    assert "something broke in mid" in top.log_tail
    assert build.returncode == 1
    assert any("builder for" in e and "mid.drv" in e for e in build.errors)
    with pytest.raises(NixBuildError) as excinfo:
        build.raise_for_failures()
    assert set(excinfo.value.failures) == {"mid", "top-level"}
    assert "exit code 1" in str(excinfo.value) and "nix --log-format" in str(excinfo.value).replace("/usr/bin/", "")


def test_unknown_attribute_and_unknown_test(make_nix):
    nix = make_nix(CHECKED)
    with pytest.raises(NixPackageSetError, match=r"Unknown Nix package.*'nope'.*known: base, mid"):
        nix.build(["nope"])
    no_test = r"Package solo has no test 'imports' .*checked/packages/solo.nix: version\)"
    with pytest.raises(NixPackageSetError, match=no_test):
        nix.build([], {"solo": ["imports"]})


def test_a_package_whose_expression_throws_fails_alone(make_nix, tiny_dir: Path):
    (tiny_dir / "packages" / "mid.nix").write_text(
        '{ mkPkg, base }: if true then throw "mid: the pins are not usable" else mkPkg { name = "mid"; }\n'
    )
    build = make_nix(tiny_dir).build(["base", "mid", "top-level", "solo"])
    assert "mid" not in build.command and "top-level" not in build.command  # Nix would refuse them all
    outcomes = {o.attr: o for o in build.wait()}
    assert outcomes["base"].status == "built" and outcomes["solo"].status == "built"
    assert outcomes["mid"].status == "failed" and "mid: the pins are not usable" in outcomes["mid"].reason
    assert outcomes["top-level"].status == "failed" and "mid: the pins are not usable" in outcomes["top-level"].reason


def test_every_output_of_a_package_is_built_not_only_the_default(make_nix, tiny_dir: Path):
    (tiny_dir / "packages" / "split.nix").write_text(
        '{ mkPkg }: mkPkg { name = "split"; outputs = [ "out" "dist" ];\n'
        '  script = "mkdir -p $dist; echo w > $dist/w"; }\n'
    )
    nix = make_nix(tiny_dir)
    first = nix.build(["split", "top-level"])
    assert {o.attr: o.status for o in first.wait()} == {"split": "built", "top-level": "built"}
    dist = first.graph["split"].outputs["dist"]
    # A GC that kept `out` for a root (a bare `nix build`'s result link holds `out` only) takes `dist`:
    # `nix build split` would build nothing, and the package could never be reported again.
    subprocess.run(["nix-store", "--delete", dist], check=True, capture_output=True)
    again = nix.build(["split", "top-level"])
    assert "split.dist" not in again.command  # Nix 2.8 fails a build naming it beside what needs `out`
    outcomes = [(o.attr, o.status, o.built_now) for o in again.wait()]
    assert outcomes == [("split", "built", True), ("top-level", "valid", False)]
    assert Path(dist, "w").read_text() == "w\n"


def test_packages_and_their_tests_in_one_build(make_nix):
    nix = make_nix(CHECKED, failTest="solo.version")
    build = nix.build(["base", "solo"], {"base": ["imports", "version"], "solo": ["version"]})
    # Named to Nix most downstream first (the longest chains start first); reported in dependency order.
    assert sorted(a for a in build.command if ".tests." in a) == ["base.tests.imports", "base.tests.version",
                                                                   "solo.tests.version"]
    assert build.command[-5:] == [t.installable for t in reversed(build.targets)]
    outcomes = {(o.attr, getattr(o, "test", None) and o.test.name): o for o in build.wait()}
    assert len(outcomes) == 5
    assert outcomes[("base", "imports")].status == "built" and outcomes[("base", "imports")].built_now
    assert outcomes[("base", "imports")].test.blocking and not outcomes[("base", "version")].test.blocking
    failed = outcomes[("solo", "version")]
    assert failed.status == "failed" and "solo.version: FAILED on purpose" in failed.log_tail
    assert "solo.version: reading" in failed.log_tail[0]
    assert outcomes[("solo", None)].ok  # its package built fine

    again = nix.build(["base"], {"base": ["imports"]})
    assert again.process is None
    assert [(o.status, o.built_now) for o in again.wait()] == [("valid", False), ("valid", False)]

    # --rebuild: Nix runs the (valid) test again and compares its output; the same one passes again.
    cli = nix.cli()
    rebuilt = NixBuild(cli, nix.load_graph(), [Target("base", "imports")], rebuild=True, log=lambda m: None)
    assert "--rebuild" in rebuilt.command
    (outcome,) = rebuilt.wait()
    assert (outcome.status, outcome.built_now, outcome.note) == ("built", True, None)


def test_rebuild_of_a_nondeterministic_test_passes_with_a_note(make_nix):
    nix = make_nix(CHECKED, nondet="solo.version")
    assert [o.status for o in nix.build([], {"solo": ["version"]}).wait()] == ["built"]
    (outcome,) = NixBuild(nix.cli(), nix.load_graph(), [Target("solo", "version")], rebuild=True,
                          log=lambda m: None).wait()
    assert outcome.ok and outcome.built_now
    assert "may not be deterministic" in outcome.note and outcome.test.drv_path in outcome.note


# The builder's sleep, unique to this test process: ps sees other test runs on the machine too.
SLEEP = f"30.{uuid.uuid4().int % 10**6:06d}"


def _sleep_processes(seconds: str = SLEEP) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip().split(None, 1)[1:] == [f"sleep {seconds}"]]


def _wait_until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_closing_the_outcomes_stops_nix_and_its_builder(make_nix, tiny_dir: Path):
    solo = tiny_dir / "packages" / "solo.nix"
    solo.write_text(f'{{ mkPkg }}: mkPkg {{ name = "solo"; script = "sleep {SLEEP}"; }}\n')
    nix = make_nix(tiny_dir)
    assert [o.status for o in nix.build(["base"]).wait()] == ["built"]
    build = nix.build(["base", "solo"])
    outcomes = build.outcomes()
    assert (next(outcomes).attr, build.process.poll()) == ("base", None)  # valid already; Nix builds solo
    assert _wait_until(_sleep_processes), "the builder's sleep should be running"
    pid = build.process.pid
    started = time.monotonic()
    outcomes.close()  # what a cancelled run does to the generator
    assert time.monotonic() - started < 15
    assert build.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _wait_until(lambda: not _sleep_processes()), "nothing of the build may be left running"
    # The same package builds fine afterwards (no stale lock), here without the sleep.
    solo.write_text('{ mkPkg }: mkPkg { name = "solo"; }\n')
    assert [o.status for o in nix.build(["solo"]).wait()] == ["built"]


def test_an_exception_while_building_stops_nix(make_nix):
    def interrupt(message: str) -> None:
        if message.startswith("Building base"):
            assert _wait_until(_sleep_processes)
            raise KeyboardInterrupt

    nix = make_nix(sleep=SLEEP)
    build = NixBuild(nix.cli(), nix.load_graph(), [Target("base")], log=interrupt)
    with pytest.raises(KeyboardInterrupt):
        build.wait()
    assert build.process.poll() is not None
    assert _wait_until(lambda: not _sleep_processes())


def test_outcomes_stream_while_nix_is_still_building(make_nix):
    build = make_nix(sleep="1").build(["base", "mid", "top-level"])
    seen = [(o.attr, build.process.poll() is None, o.build_seconds) for o in build.outcomes()]
    assert [a for a, _, _ in seen] == ["base", "mid", "top-level"]
    assert seen[0][1], "base must be reported while nix still builds mid and top-level"
    assert all(seconds >= 1.0 for _, _, seconds in seen)


def test_probes_ask_nix_only_about_outputs_on_disk(make_nix, monkeypatch):
    nix = make_nix(sleep="1")
    cli = nix.cli()
    asked: list[tuple[str, bool]] = []
    ask_nix = NixCli.invalid_paths

    def invalid_paths(self, paths):
        asked.extend((p, os.path.lexists(p)) for p in paths)
        return ask_nix(self, paths)

    monkeypatch.setattr(NixCli, "invalid_paths", invalid_paths)
    build = NixBuild(cli, nix.load_graph(), [Target("base"), Target("mid"), Target("top-level")], log=print)
    build.start()
    asked.clear()  # the first question (what is valid already) is about everything
    while_building = [o for event in build._events(idle=0.2) for o in build.handle(event)]  # ticks every 0.2 s
    probed = list(asked)
    assert [o.attr for o in [*while_building, *build.finish()]] == ["base", "mid", "top-level"]
    assert while_building, "outputs valid while nix ran are reported by probes"
    assert probed and all(on_disk for _, on_disk in probed), probed


def test_a_path_nix_is_still_building_is_surely_invalid_and_a_built_one_is_not(make_nix, tiny_dir: Path):
    # The builder makes $out, then works on: Nix 2.8 builds in place, so the path is on disk all that while.
    (tiny_dir / "packages" / "slow.nix").write_text('{ mkPkg }: mkPkg { name = "slow"; script = "sleep 3"; }\n')
    nix = make_nix(tiny_dir)
    cli, graph = nix.cli(), nix.load_graph()
    out = graph["slow"].out_path
    build = NixBuild(cli, graph, [Target("slow")], log=print).start()
    while_building = None
    while build.process.poll() is None and while_building is None:
        if os.path.lexists(out):  # with the sandbox the path appears only once built
            invalid = cli.invalid_paths([out])  # Nix first: the path only ever moves towards valid
            while_building = (cli.surely_invalid_paths([out]), invalid)
        time.sleep(0.05)
    assert [(o.attr, o.status) for o in build.wait()] == [("slow", "built")]
    if not cli.nix_version().at_least(2, 9) and not sandboxed(cli):
        assert while_building == ({out}, {out}), "Nix 2.8 without the sandbox builds in place: on disk, not valid"
    elif while_building is not None:
        # With the sandbox the path appears as Nix moves it in, then canonicalises and registers it; the
        # sample may fall anywhere in that, but the file system never calls surely invalid what Nix says is valid.
        surely, invalid = while_building
        assert surely <= invalid, while_building
    assert cli.surely_invalid_paths([out]) == set() and cli.invalid_paths([out]) == set()
    assert cli.surely_invalid_paths([out + "-missing"]) == {out + "-missing"}


def sandboxed(cli: NixCli) -> bool:
    shown = cli.run(cli.nix_command("show-config")).stdout
    return any(line.replace(" ", "") == "sandbox=true" for line in shown.splitlines())


def test_unselected_failed_dependency_is_named(make_nix):
    (top,) = make_nix(fail="mid").build(["top-level"]).wait()
    assert top.status == "failed" and top.reason == "dependency failed: mid"
    assert "something broke in mid" in top.log_tail


def test_package_built_by_another_process_is_reported_while_nix_still_builds(make_nix):
    seconds = f"4.{uuid.uuid4().int % 10**6:06d}"
    nix = make_nix(sleep=seconds)
    # Another nix process, started first, holds the lock on base. Started and consumed in one thread
    # (its child gets SIGTERM when the thread that started it ends).
    other: list = []
    thread = threading.Thread(target=lambda: other.extend(nix.build(["base"]).wait()), daemon=True)
    thread.start()
    try:
        assert _wait_until(lambda: _sleep_processes(seconds)), "the other build should be running"
        build = nix.build(["base", "mid"])
        seen = [(o.attr, o.status, build.process.poll() is None, time.monotonic()) for o in build.outcomes()]
    finally:
        thread.join(timeout=60)
    assert [o.status for o in other] == ["built"]
    assert [(a, s) for a, s, _, _ in seen] == [("base", "valid"), ("mid", "built")]
    base, mid = seen
    assert base[2], "base must be reported as soon as the other process built it, while mid builds"
    assert mid[3] - base[3] >= 2.0


def test_no_cli_method_writes_the_users_environment():
    cli = NixCli(nix_dir=str(TINY))
    before = dict(os.environ)
    cli.subprocess_env()
    assert dict(os.environ) == before
