"""One `nix build` and its event stream, against the real Nix, without Dagster."""

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from dagster_nix_builder import NixBuildError, NixPackageSetError, NixResource
from dagster_nix_builder.invocation import NixBuildInvocation

TINY = Path(__file__).parent / "fixtures" / "tiny"


def test_command_line_from_resource(tmp_path: Path):
    nix = NixResource(
        nix_dir=str(TINY), scope="bootstrap", max_jobs=3, cores=2, builders="ssh://b x86_64-linux",
        extra_options={"sandbox": "false"}, nix_args={"salt": "s"},
    )
    command = nix.build_command(["base", "mid"])
    assert command[1:4] == ["--log-format", "internal-json", "-v"]
    assert command[4:7] == ["build", "--file", str(TINY)]
    joined = " ".join(command)
    for part in ("--argstr scope bootstrap", "--argstr salt s", "--keep-going", "--json", "--max-jobs 3",
                 "--cores 2", "--builders ssh://b x86_64-linux", "--option sandbox false"):
        assert part in joined
    assert command[-2:] == ["base", "mid"]
    assert "substituters =" in nix.subprocess_env()["NIX_CONFIG"]


def test_max_jobs_defaults_to_the_cores_unless_configured():
    assert NixResource(nix_dir=str(TINY)).build_command(["base"])[-3:] == ["--max-jobs", str(os.cpu_count()), "base"]
    assert "--max-jobs" not in NixResource(nix_dir=str(TINY), max_jobs=None).build_command(["base"])


def test_outcomes_in_completion_order_then_already_valid(make_nix):
    nix = make_nix()
    outcomes = nix.build(["top-level", "solo"]).wait()
    assert {o.attr: o.status for o in outcomes} == {"top-level": "built", "solo": "built"}
    assert all(o.built_now and o.build_seconds > 0 for o in outcomes)
    again = nix.build(["top-level", "mid"]).wait()
    assert {o.attr: (o.status, o.built_now) for o in again} == {
        "top-level": ("valid", False), "mid": ("valid", False),
    }


def test_failure_names_the_failed_dependency_with_its_log(make_nix):
    invocation = make_nix(fail="mid").build(["base", "mid", "top-level", "solo"])
    outcomes = {o.attr: o for o in invocation.wait()}
    assert outcomes["base"].ok and outcomes["solo"].ok
    assert outcomes["mid"].status == "failed" and "something broke in mid" in outcomes["mid"].log_tail
    top = outcomes["top-level"]
    assert top.status == "failed" and top.reason == "dependency failed: mid"
    assert "something broke in mid" in top.log_tail
    assert invocation.returncode == 1
    assert any("builder for" in e and "mid.drv" in e for e in invocation.errors)
    with pytest.raises(NixBuildError) as excinfo:
        invocation.raise_for_failures()
    assert set(excinfo.value.failures) == {"mid", "top-level"}
    assert "exit code 1" in str(excinfo.value) and "nix --log-format" in str(excinfo.value).replace("/usr/bin/", "")


def test_unknown_attribute(make_nix):
    with pytest.raises(NixPackageSetError, match="Unknown Nix package.*'nope'.*known: base, mid"):
        make_nix().build(["nope"])


# The builder's sleep, unique to this test process: ps sees other test runs on the machine too.
SLEEP = f"30.{uuid.uuid4().int % 10**6:06d}"


def _sleep_processes() -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip().split(None, 1)[1:] == [f"sleep {SLEEP}"]]


def test_interrupt_stops_nix_and_next_run_succeeds(make_nix):
    nix = make_nix(sleep=SLEEP)
    invocation = nix.build(["solo"])
    seen_build = threading.Event()
    events = invocation.events()
    for event in events:
        if getattr(event, "drv_path", None):
            seen_build.set()
            break
    assert seen_build.is_set()
    deadline = time.monotonic() + 10
    while not _sleep_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleep_processes(), "the builder's sleep should be running"
    pid = invocation.process.pid
    started = time.monotonic()
    events.close()  # what a cancelled run does to the generator: GeneratorExit inside it
    assert time.monotonic() - started < 15
    assert not invocation.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    deadline = time.monotonic() + 10
    while _sleep_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sleep_processes(), "nothing of the build may be left running"
    # The same derivation builds fine afterwards (no stale lock), here without the sleep.
    outcomes = make_nix().build(["solo"]).wait()
    assert [o.status for o in outcomes] == ["built"]


def test_keyboard_interrupt_terminates(make_nix):
    invocation = make_nix(sleep=SLEEP).build(["base"])
    events = invocation.events()
    for event in events:
        if getattr(event, "drv_path", None):
            break
    with pytest.raises(KeyboardInterrupt):
        events.throw(KeyboardInterrupt())
    assert not invocation.is_running()
    assert isinstance(invocation, NixBuildInvocation)


def test_outcomes_stream_while_nix_is_still_building(make_nix):
    invocation = make_nix(sleep="1").build(["base", "mid", "top-level"])
    seen, outcomes = [], []
    for outcome in invocation.outcomes():
        seen.append((outcome.attr, invocation.is_running()))
        outcomes.append(outcome)
    assert [a for a, _ in seen] == ["base", "mid", "top-level"]
    assert seen[0][1], "base must be reported while nix still builds mid and top-level"
    assert all(o.build_seconds >= 1.0 for o in outcomes)


def test_unselected_failed_dependency_is_named(make_nix):
    outcomes = make_nix(fail="mid").build(["top-level"]).wait()
    (top,) = outcomes
    assert top.status == "failed" and top.reason == "dependency failed: mid"
    assert "something broke in mid" in top.log_tail


def test_package_built_by_another_process_is_reported_while_nix_still_builds(make_nix):
    nix = make_nix(sleep="4")
    other = nix.build(["base"])  # another nix process, started first: it holds the lock on base
    other_events = other.events()
    for event in other_events:
        if getattr(event, "drv_path", None):
            break
    drain = threading.Thread(target=lambda: list(other_events), daemon=True)
    drain.start()
    try:
        invocation = nix.build(["base", "mid"])
        seen = []
        for outcome in invocation.outcomes():
            seen.append((outcome.attr, outcome.status, invocation.is_running(), time.monotonic()))
    finally:
        other.terminate()
        drain.join(timeout=30)
    assert [(a, s) for a, s, _, _ in seen] == [("base", "valid"), ("mid", "built")]
    base, mid = seen
    assert base[2], "base must be reported as soon as the other process built it, while mid builds"
    assert mid[3] - base[3] >= 2.0
