"""SIGKILL of the Dagster process leaves nothing of ours running: not `nix build`, not its builders, not the
webserver test's webserver or its code server. A real Dagster run, killed for real."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny"
GRACE_S = 10.0


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process (zombies are not running: left out)."""
    ps = ["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="]
    out = subprocess.run(ps, capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, stat, *args = line.split(None, 3)
        if not stat.startswith("Z"):
            table[int(pid)] = (int(ppid), args[0] if args else "")
    return table


def _descendants(root: int) -> dict[int, str]:
    table = _processes()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, args) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = args
                frontier.append(pid)
    return found


def _still_running(procs: dict[int, str]) -> list[str]:
    table = _processes()
    return [f"{pid} {args}" for pid, args in procs.items() if pid in table and table[pid][1] == args]


def _matching(text: str) -> list[str]:
    return [f"{pid} {args}" for pid, (_, args) in _processes().items() if text in args and "ps -eo" not in args]


# A Dagster process (in-process executor, as `dagster asset materialize` runs): materializes a selection
# of the package set argv[1] (a JSON list of asset keys, or {"check": [asset, name]} for one check alone)
# with the nix_args argv[3].
RUN = """
import json, sys
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, materialize
from dagster_nix_builder import NixResource, nix_assets
nix = NixResource(nix_dir=sys.argv[1], out_link_dir=sys.argv[2], nix_args=json.loads(sys.argv[3]))
what = json.loads(sys.argv[4])
check = AssetCheckKey(AssetKey(what["check"][0]), what["check"][1]) if "check" in what else None
selection = AssetSelection.checks(check) if check else what
materialize([nix_assets(nix.load_graph())], resources={"nix": nix}, selection=selection,
            instance=DagsterInstance.ephemeral())
"""


def _start(tmp_path: Path, nix_dir: Path, nix_args: dict, what, log: Path) -> subprocess.Popen:
    results = str(tmp_path / "results")
    command = [sys.executable, "-c", RUN, str(nix_dir), results, json.dumps(nix_args), json.dumps(what)]
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{what} never happened (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _kill_and_expect_nothing_left(proc: subprocess.Popen, markers: list[str]) -> dict[int, str]:
    ours = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + GRACE_S
    while (_still_running(ours) or any(_matching(m) for m in markers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _still_running(ours) + [p for m in markers for p in _matching(m)]
    assert not left, f"still running {GRACE_S:.0f} s after SIGKILL of dagster:\n" + "\n".join(left)
    return ours


def test_sigkill_during_a_build_stops_nix_and_its_builder(tmp_path: Path, salt: str):
    log = tmp_path / "dagster.log"
    proc = _start(tmp_path, TINY, {"salt": salt, "sleep": "53"}, ["solo"], log)

    def builder_sleeps() -> bool:
        return "sleep 53" in _descendants(proc.pid).values()

    _wait_for(builder_sleeps, proc, log, 120, "the build")
    ours = _kill_and_expect_nothing_left(proc, [f"--argstr salt {salt}"])
    assert any(" build " in args and salt in args for args in ours.values()), ours  # nix build was ours
    assert "sleep 53" in ours.values(), ours  # and so was its builder


@pytest.mark.slow
def test_sigkill_during_the_webserver_check_stops_the_webserver_and_its_code_server(tmp_path: Path):
    # The webserver test alone: Nix runs it again (`--rebuild`, or a first build), so its builder starts
    # the built webserver and its code server.
    log = tmp_path / "dagster.log"
    proc = _start(tmp_path, REPO / "nix", {}, {"check": ["dagster-webserver", "webserver"]}, log)
    marker = "-h 127.0.0.1 -p"  # the webserver test's command line (nix/package-tests.nix)
    servers: list[int] = []

    def webserver_with_code_server() -> bool:
        # Only our own descendants: another test run on this machine may run the same test.
        servers[:] = [pid for pid, args in _descendants(proc.pid).items() if marker in args]
        return bool(servers) and bool(_descendants(servers[0]))

    _wait_for(webserver_with_code_server, proc, log, 900, "the webserver test's webserver and code server")
    webserver = _processes()[servers[0]][1]  # its port makes the command line unique
    ours = _kill_and_expect_nothing_left(proc, [webserver])
    assert webserver in ours.values(), ours
