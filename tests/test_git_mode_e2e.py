"""Git mode from zero, as issue 8 says it is done: a fresh clone of this project and a local bare upstream
in Dagster's monorepo layout. The documented command pins the branch head, the whole set builds and passes its
checks (its passthru.tests, the webserver test included); after a push the commit sensor requests one run, whose update
pins the new commit and commits `dagster-src: OLD -> NEW`; no file is edited by hand in between, and
`result-dagster/bin/dagster --version` reports the source's own version.

Real git, the real Nix building the real set, a real Dagster instance, the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from project_clone import fresh_clone
from repo_packages import PACKAGES
from upstream_repo import Upstream, git, world_readable_tmpdir

from dagster_nix_builder.nix.settings import bootstrap_nix_config

REPO = Path(__file__).resolve().parent.parent
UI_BUILD = "python_modules/dagster-webserver/dagster_webserver/webapp/build"
BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed"),
]

# The sensor, ticked against the clone's own code location and a real instance; the run it requests,
# executed in that instance. Prints what happened as one JSON line.
SENSOR_TICK = """
import json
from dagster import DagsterInstance, build_sensor_context
from dagster_nix_builder.definitions import defs
import dagster_nix_builder

instance = DagsterInstance.get()
sensor = defs.resolve_sensor_def("dagster_upstream_commit_sensor")
job = defs.resolve_job_def("update_dagster_src")
first = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=None))
runs = []
for request in first.run_requests:
    result = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags,
                                    raise_on_error=False)
    runs.append({"run_key": request.run_key, "success": result.success,
                 "output": result.output_for_node("update_pins") if result.success else None})
again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor))
print(json.dumps({
    "module": dagster_nix_builder.__file__,
    "requests": [r.run_key for r in first.run_requests],
    "runs": runs,
    "again": {"requests": len(again.run_requests), "skip": again.skip_message},
    "runs_in_instance": [(run.job_name, run.tags.get("dagster-nix-builder/rev")) for run in instance.get_runs()],
}))
"""


def monorepo_upstream(root: Path) -> tuple[Upstream, str]:
    """A bare upstream whose first commit is the release's source tree in the monorepo's layout."""
    env = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(nix_dir=REPO / "nix"), "NIX_PATH": ""}
    tree = subprocess.run(
        ["nix-build", str(REPO / "nix"), "-A", "dagster-src", "--argstr", "scope", "bootstrap",
         "--argstr", "source", "release", "--no-out-link"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    upstream = Upstream(root)
    shutil.copytree(tree, upstream.work, dirs_exist_ok=True)
    subprocess.run(["chmod", "-R", "u+w", str(upstream.work)], check=True)
    # The monorepo does not track the compiled UI (webapp/build); the release sdists carry it. With it the
    # webserver test can pass here, where the UI cannot be built from js_modules. Its .gitignore would drop it.
    git(upstream.work, "add", "-A", "-f")
    return upstream, upstream.push({}, "the monorepo at 1.13.27")


def bump_version(upstream: Upstream, old: str, new: str) -> str:
    """A second upstream commit: every package the set declares at a new version (its pyproject.toml and
    version.py; a library's 0.<minor+16>.<patch> too, and its pins on the others)."""
    library_old, library_new = (f"0.{int(v.split('.')[1]) + 16}.{v.split('.')[2]}" for v in (old, new))
    files = {}
    for path in declared_paths():
        for file in [upstream.work / path / "pyproject.toml", *sorted((upstream.work / path).glob("*/version.py"))]:
            text = file.read_text()
            bumped = text.replace(old, new).replace(library_old, library_new)
            if bumped != text:
                files[file.relative_to(upstream.work).as_posix()] = bumped
    assert any(name.endswith("dagster/dagster/version.py") for name in files)
    return upstream.push(files, f"version {new}")


def declared_paths() -> list[str]:
    """The monorepo directories of the packages the set declares (`dagster-src.package`)."""
    env = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(nix_dir=REPO / "nix"), "NIX_PATH": ""}
    declarations = json.loads(subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(REPO / "nix"), "-A", "dagster-src.declarations",
         "--argstr", "scope", "bootstrap"], capture_output=True, text=True, env=env, check=True).stdout)
    return sorted(d["path"] for d in declarations.values())


def run(cmd: list[str], clone: Path, env: dict[str, str], timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_fresh_clone_pins_builds_and_follows_a_local_monorepo_upstream() -> None:
    root = world_readable_tmpdir("dnb-e2e-")
    try:
        upstream, rev1 = monorepo_upstream(root)
        clone = fresh_clone(root / "clone")
        pins_before = json.loads((clone / "nix/pins.json").read_text())
        assert pins_before["source"] == "release"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}
        env.update(PYTHONPATH=str(clone), DAGSTER_HOME=str(clone / ".dagster_home"))
        (clone / ".dagster_home").mkdir()

        # 1. The documented command: from release mode to the branch head, pinned with its hash and version.
        (root / "update.yaml").write_text(
            f"ops:\n  update_pins:\n    config:\n      source: git\n      url: {upstream.url}\n"
        )
        job = run([str(BIN / "dagster"), "job", "execute", "-m", "dagster_nix_builder.definitions",
                   "-j", "update_dagster_src", "-c", str(root / "update.yaml")], clone, env)  # fmt: skip
        log = job.stdout + job.stderr
        pins = json.loads((clone / "nix/pins.json").read_text())
        assert pins["source"] == "git"
        assert pins["git"]["url"] == upstream.url and pins["git"]["rev"] == rev1
        assert pins["git"]["hash"].startswith("sha256-") and pins["git"]["version"] == "1.13.27"
        assert git(clone, "log", "-1", "--format=%s") == f"dagster-src: 1.13.27 -> {rev1}"
        # The checks are the packages' passthru.tests, built by the update as a materialization builds them.
        for check in ("dagster-shared: imports", "dagster: version", "dagster-webserver: webserver"):
            assert f"check passed: {check}" in log, log[-5000:]

        # 2. A push; the commit sensor requests one run, which pins the new commit and commits.
        rev2 = bump_version(upstream, "1.13.27", "1.13.28")
        tick = run([sys.executable, "-c", SENSOR_TICK], clone, env)
        report = json.loads(tick.stdout.strip().splitlines()[-1])
        assert report["module"].startswith(str(clone)), "the clone's own code location"
        assert report["requests"] == [rev2]
        (update_run,) = report["runs"]
        assert update_run["success"], tick.stderr[-6000:]
        assert update_run["output"]["old"] == rev1 and update_run["output"]["new"] == rev2
        assert update_run["output"]["version"] == "1.13.28"
        assert sorted(update_run["output"]["built"]) == sorted(PACKAGES)  # all downstream of dagster-src
        assert report["again"]["requests"] == 0 and "is the pinned rev" in report["again"]["skip"]
        # The instance holds the two update runs: the command's, and the one the sensor requested.
        runs = [tuple(run) for run in report["runs_in_instance"]]
        assert len(runs) == 2 and set(runs) == {("update_dagster_src", None), ("update_dagster_src", rev2)}
        assert git(clone, "log", "-1", "--format=%s") == f"dagster-src: {rev1} -> {rev2}"
        assert git(clone, "status", "--porcelain") == "", "no file left edited"
        assert git(clone, "log", "--format=%s", "-3").splitlines() == [
            f"dagster-src: {rev1} -> {rev2}", f"dagster-src: 1.13.27 -> {rev1}", "fresh clone"]

        # 3. The README's main command materializes the whole set at the new pin, checks passing, out-links made.
        run([str(BIN / "dagster"), "asset", "materialize", "-m", "dagster_nix_builder.definitions",
             "--select", "*"], clone, env)  # fmt: skip
        version = subprocess.run([str(clone / ".nix-results/result-dagster/bin/dagster"), "--version"],
                                 capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert version == "dagster, version 1.13.28"

        # 4. Without the compiled UI, as Dagster's own repository is: the webserver test fails the update,
        # which commits nothing and leaves the pins as they were. One more commit on top: the update's bisect
        # builds the real set at rev3 (its pins passed to Nix) and names rev3, not the head, as the first bad.
        shutil.rmtree(upstream.work / UI_BUILD)
        rev3 = upstream.push({}, "no compiled UI, as in the monorepo")
        rev4 = upstream.push({"NOTES.md": "after the UI went\n"}, "a commit after it")
        head, pins_now = git(clone, "rev-parse", "HEAD"), (clone / "nix/pins.json").read_bytes()
        failed = subprocess.run(
            [str(BIN / "dagster"), "job", "execute", "-m", "dagster_nix_builder.definitions",
             "-j", "update_dagster_src", "-c", str(root / "update.yaml")],
            cwd=clone, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        log = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "update failed at step 'check': dagster-webserver: check webserver failed" in log, log[-5000:]
        assert "dagster-webserver.tests.webserver" in log
        assert f"has no {UI_BUILD.split('/', 2)[2]} (the compiled UI), so it answers 500 on /" in log
        assert rev4[:12] in log
        assert (
            f"bisect: the first bad commit is {rev3} (no compiled UI, as in the monorepo): dagster-webserver: "
            f"check webserver failed (2 of at most 2 steps over 2 commits {rev2[:12]}..{rev4[:12]}, 1 built)"
        ) in log, log[-5000:]
        assert git(clone, "rev-parse", "HEAD") == head and (clone / "nix/pins.json").read_bytes() == pins_now
        assert git(clone, "status", "--porcelain") == ""
    finally:
        shutil.rmtree(root, ignore_errors=True)
