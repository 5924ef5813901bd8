"""The update workflow, end to end with real git and the real Nix on a small package set."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
from test_add_package import release_project
from upstream_repo import (
    BROKEN_MODULE,
    FAILING_VERSION_MODULE,
    GOOD_MODULE,
    NIX_CONFIG,
    Upstream,
    clone_project,
    git,
    make_project,
    snapshot,
    world_readable_tmpdir,
)

from dagster_nix_builder.upstream.pins import FAKE_HASH, read_pins, stale_temp_files
from dagster_nix_builder.upstream.update.workflow import (
    JOURNAL_NAME,
    LOCK_NAME,
    DirtyFilesError,
    UpdateError,
    UpdateSettings,
    UpdateStep,
    parse_hash_mismatches,
    sdist_package_name,
    update,
)

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="needs the nix CLI")


@pytest.fixture(scope="module")
def world() -> Iterator[dict]:
    root = world_readable_tmpdir("dnb-update-")
    upstream = Upstream(root)
    rev1 = upstream.push({"dagster.py": GOOD_MODULE.format(version="1.0")}, "one")
    base = make_project(root, upstream)
    result = update(settings(base), rev=rev1)
    assert result.old == "none" and result.new == rev1
    yield {"root": root, "upstream": upstream, "base": base, "rev1": rev1}
    shutil.rmtree(root, ignore_errors=True)


def settings(repo: Path, **kw) -> UpdateSettings:
    return UpdateSettings(repo_dir=repo, nix_config=NIX_CONFIG, **kw)


@pytest.fixture
def project(world: dict) -> Path:
    return clone_project(world["base"], world["root"])


def assert_untouched(repo: Path, before: dict[str, bytes], head: str) -> None:
    assert snapshot(repo) == before, "files under nix/ changed"
    assert git(repo, "rev-parse", "HEAD") == head, "a commit was made"
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / JOURNAL_NAME).exists()


def test_update_commits_exactly_the_changed_file(world: dict, project: Path) -> None:
    rev2 = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="2.0")}, "two")
    # Someone else's staged work must not end up in the update's commit.
    (project / "README.md").write_text("staged by someone else\n")
    git(project, "add", "README.md")
    old_hash = read_pins(project / "nix" / "pins.json").git.hash
    logs: list[str] = []

    result = update(settings(project), rev=rev2, log=logs.append)

    assert result.commit == git(project, "rev-parse", "HEAD")
    assert git(project, "log", "-1", "--format=%s") == f"dagster-src: {world['rev1']} -> {rev2}"
    assert git(project, "show", "--name-only", "--format=", "HEAD").split() == ["nix/pins.json"]
    assert result.changed_files == ("nix/pins.json",)
    pins = read_pins(project / "nix" / "pins.json")
    assert pins.git.rev == rev2 and pins.git.hash not in (None, FAKE_HASH, old_hash)
    assert result.hashes == {"dagster-src": pins.git.hash}
    # The source and everything downstream were rebuilt; the unrelated package was not needed.
    assert sorted(result.built) == ["dagster-cli", "dagster-lib", "dagster-src"]
    assert any("dagster --version: dagster 2.0" in c for c in result.checks)
    assert git(project, "diff", "--cached", "--name-only") == "README.md"
    assert (project / "nix" / "pins.json").read_text().endswith("}\n")
    assert not stale_temp_files(project / "nix" / "pins.json")


def test_same_rev_is_a_no_op(world: dict, project: Path) -> None:
    head = git(project, "rev-parse", "HEAD")
    result = update(settings(project), rev=world["rev1"])
    assert result.commit is None
    assert git(project, "rev-parse", "HEAD") == head


def test_refuses_when_pins_have_uncommitted_changes(world: dict, project: Path) -> None:
    pins = project / "nix" / "pins.json"
    pins.write_bytes(pins.read_bytes() + b"\n")  # a user's edit in progress
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="3.0")}, "three")

    with pytest.raises(DirtyFilesError) as info:
        update(settings(project), rev=rev)

    assert info.value.files == ["nix/pins.json"]
    assert "nix/pins.json" in str(info.value)
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head


@pytest.mark.parametrize("rev", ["abc", "g" * 40, "-" + "a" * 39, "HEAD"])
def test_invalid_rev_is_refused_before_any_write(project: Path, rev: str) -> None:
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)
    assert info.value.step is UpdateStep.RESOLVE
    assert_untouched(project, before, head)


def test_rev_missing_upstream_fails_hash_discovery(project: Path) -> None:
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=missing)
    assert info.value.step is UpdateStep.HASH
    assert info.value.messages, "Nix's own error is reported"
    # With the end of the fetch's log: git's own word on the rev ("reference is not a tree", "unable to read
    # tree", depending on git's version).
    assert any(m.startswith("  > fatal: ") and missing in m for m in info.value.messages), info.value.messages
    assert info.value.restored == [], "the hash is found with the pins passed to Nix: nothing was written"
    assert_untouched(project, before, head)


def test_unreachable_upstream_fails_hash_discovery(world: dict, project: Path) -> None:
    pins_path = project / "nix" / "pins.json"
    data = json.loads(pins_path.read_text())
    data["git"]["url"] = str(world["root"] / "no-such-repository.git")
    pins_path.write_text(json.dumps(data, indent=2) + "\n")
    git(project, "commit", "-q", "-am", "point at a missing upstream")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="4.0")}, "four")

    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)

    assert info.value.step is UpdateStep.HASH
    assert_untouched(project, before, head)


def test_downstream_build_failure_restores_files(world: dict, project: Path) -> None:
    rev = world["upstream"].push({"dagster.py": BROKEN_MODULE}, "break the module")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)

    assert info.value.step is UpdateStep.BUILD
    assert "dagster-lib" in str(info.value)
    assert "SyntaxError" in "\n".join(info.value.messages)
    assert_untouched(project, before, head)


def test_check_failure_restores_files(world: dict, project: Path) -> None:
    rev = world["upstream"].push({"dagster.py": FAILING_VERSION_MODULE}, "--version exits 3")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)

    assert info.value.step is UpdateStep.CHECK
    assert "dagster --version" in info.value.reason
    assert_untouched(project, before, head)


# dagster-cli with `passthru.tests` (as nix/package-tests.nix gives the real packages): `version` runs the
# built CLI, `smoke` fails with a message in its log when the module says it is broken.
CLI_WITH_TESTS = """{ runCommand, dagster-lib }:
let
  cli = runCommand "dagster-cli" { lib = dagster-lib; } ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\nexec /usr/bin/python3 %s/lib/dagster.py "$@"\\n' "$lib" > $out/bin/dagster
    chmod +x $out/bin/dagster
  '';
in cli // {
  tests = {
    version = runCommand "dagster-cli-test-version" { inherit cli; } ''
      $cli/bin/dagster --version | grep '^dagster ' > $out
    '';
    smoke = runCommand "dagster-cli-test-smoke" { inherit cli; } ''
      if grep -q SMOKE-FAILS ${dagster-lib}/lib/dagster.py; then
        echo "dagster-cli test smoke: the module asks to fail" >&2
        exit 1
      fi
      echo ok > $out
    '';
  };
}
"""


def _with_cli_tests(project: Path) -> None:
    (project / "nix" / "packages" / "dagster-cli.nix").write_text(CLI_WITH_TESTS)
    git(project, "commit", "-q", "-am", "dagster-cli with passthru.tests")


def test_check_step_builds_the_packages_tests(world: dict, project: Path) -> None:
    _with_cli_tests(project)
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="10.0")}, "ten")

    result = update(settings(project), rev=rev)

    assert result.commit is not None
    # dagster-cli's checks are its tests; the `--version` fallback is for packages without tests only.
    assert "dagster-cli: smoke" in result.checks and "dagster-cli: version" in result.checks
    assert not any("--version" in c for c in result.checks), result.checks


def test_failing_test_derivation_fails_the_check_step_naming_package_test_and_log(
    world: dict, project: Path
) -> None:
    _with_cli_tests(project)
    module = GOOD_MODULE.format(version="11.0") + "# SMOKE-FAILS\n"
    rev = world["upstream"].push({"dagster.py": module}, "a module whose smoke test fails")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)

    assert info.value.step is UpdateStep.CHECK
    assert info.value.reason == "dagster-cli: check smoke failed"
    messages = "\n".join(info.value.messages)
    assert "dagster-cli.tests.smoke: build of " in messages
    assert "  > dagster-cli test smoke: the module asks to fail" in info.value.messages
    assert "version" not in info.value.reason, "the passing test is not blamed"
    assert info.value.restored == ["nix/pins.json"]
    assert_untouched(project, before, head)


def test_custom_check_failure_restores_files(world: dict, project: Path) -> None:
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="5.0")}, "five")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    seen: list[str] = []

    def no_cli(built: dict) -> None:
        seen.extend(built)
        raise RuntimeError("dagster-cli must not be built")

    with pytest.raises(UpdateError) as info:
        update(settings(project, checks=[no_cli]), rev=rev)

    assert info.value.step is UpdateStep.CHECK and "no_cli" in info.value.reason
    assert "dagster-cli" in seen
    assert_untouched(project, before, head)


def test_commit_failure_restores_files_and_index(world: dict, project: Path) -> None:
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="9.0")}, "nine")
    hooks = project / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\necho 'pre-commit: no pin changes today' >&2\nexit 1\n")
    (hooks / "pre-commit").chmod(0o755)
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)

    assert info.value.step is UpdateStep.COMMIT
    assert "no pin changes today" in "\n".join(info.value.messages)
    assert_untouched(project, before, head)  # includes: nothing left staged


_RUN_UPDATE = """
import sys
from dagster_nix_builder.upstream.update.workflow import UpdateSettings, update
update(UpdateSettings(repo_dir=sys.argv[1], nix_config=sys.argv[2]), rev=sys.argv[3])
"""


def _kill_mid_update(project: Path, rev: str) -> None:
    """Start an update in another process and SIGKILL it (and its nix) once it has edited the pins."""
    pins_path = project / "nix" / "pins.json"
    original = pins_path.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_UPDATE, str(project), NIX_CONFIG, rev], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while pins_path.read_bytes() == original:
            assert proc.poll() is None, "the update finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_run_never_leaves_half_written_pins_and_is_undone_next_run(world: dict, project: Path) -> None:
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="6.0")}, "six")
    _kill_mid_update(project, rev)

    # Killed mid-run: the pins are one whole version or the other, never a half-written file.
    pins = read_pins(project / "nix" / "pins.json")
    assert pins.git.rev == rev and pins.git.hash is not None
    assert (project / ".git" / JOURNAL_NAME).exists()

    # The next run undoes the interrupted edit first (so it is not refused as a user's edit), then updates.
    logs: list[str] = []
    result = update(settings(project), rev=rev, log=logs.append)
    assert any("interrupted update" in line for line in logs)
    assert result.commit is not None
    assert git(project, "show", "--name-only", "--format=", "HEAD").split() == ["nix/pins.json"]
    assert git(project, "rev-parse", "HEAD~1") == head
    assert snapshot(project).keys() == before.keys()  # no temp file left behind
    assert not (project / ".git" / JOURNAL_NAME).exists()


def test_edit_after_a_killed_run_is_never_overwritten(world: dict, project: Path) -> None:
    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="7.0")}, "seven")
    _kill_mid_update(project, rev)
    pins_path = project / "nix" / "pins.json"
    pins_path.write_bytes(pins_path.read_bytes().replace(b'"1!0+dev"', b'"1!0+mine"'))  # a user's edit
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), rev=rev)

    assert (
        info.value.step is UpdateStep.PREFLIGHT and "changed after an interrupted update" in info.value.reason
    )
    assert snapshot(project) == before and git(project, "rev-parse", "HEAD") == head
    assert (project / ".git" / JOURNAL_NAME).exists(), "the original bytes stay available"


def test_second_concurrent_update_is_refused(world: dict, project: Path) -> None:
    import fcntl

    rev = world["upstream"].push({"dagster.py": GOOD_MODULE.format(version="8.0")}, "eight")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    with open(project / ".git" / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running update holds it
        with pytest.raises(UpdateError) as info:
            update(settings(project), rev=rev)
    assert info.value.step is UpdateStep.PREFLIGHT and "another update is running" in info.value.reason
    assert_untouched(project, before, head)


def test_parse_hash_mismatches_reads_plain_and_json_output() -> None:
    plain = (
        "error: hash mismatch in fixed-output derivation '/nix/store/abc-dagster_shared-1.13.27.tar.gz.drv':\n"
        "         specified: sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        "            got:    sha256-CE+CPPZdOCaTKci11H3441vopfEBgnitwR7LDcEQu4U=\n"
    )
    (m,) = parse_hash_mismatches(plain)
    assert m.got == "sha256-CE+CPPZdOCaTKci11H3441vopfEBgnitwR7LDcEQu4U="
    assert sdist_package_name(m.drv_name, "1.13.27") == "dagster-shared"
    as_json = "@nix " + json.dumps({"action": "msg", "level": 0, "msg": "\x1b[31;1merror:\x1b[0m " + plain})
    assert parse_hash_mismatches("@nix {garbage\n" + as_json) == [m]


REPO = Path(__file__).resolve().parent.parent
REPO_NIX = REPO / "nix"


def _store_inputs(drv_of_attr: str, pattern: str) -> list[Path]:
    """Realise the fixed-output inputs of one package of the real set matching `pattern` (by name)."""
    env = {**os.environ, "NIX_CONFIG": NIX_CONFIG}
    drv = subprocess.run(
        ["nix-instantiate", str(REPO_NIX), "-A", drv_of_attr, "--argstr", "scope", "bootstrap"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    closure = subprocess.run(
        ["nix-store", "--query", "--requisites", drv], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    drvs = [d for d in closure if re.search(pattern, d)]
    outs = subprocess.run(
        ["nix-store", "--realise", *drvs], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    return [Path(o) for o in outs]


@pytest.mark.slow
@pytest.mark.skipif(
    not (REPO_NIX / "default.nix").exists() or not (REPO_NIX / "bootstrap" / "lock.py").exists(),
    reason="needs the real package set (nix/default.nix) and its wheel lock script (nix/bootstrap/lock.py)",
)
def test_release_update_of_the_real_six_against_a_local_index(monkeypatch: pytest.MonkeyPatch) -> None:
    root = world_readable_tmpdir("dnb-release-")
    try:
        # A local package index folder: the sdists of 1.13.27 the set declares and the pinned third-party wheels,
        # taken from the store (fetched once through the user's pip configuration), so no network here.
        index = root / "index"
        index.mkdir()
        sources = _store_inputs("dagster-src", r"\.tar\.gz\.drv$")
        for out in [*sources, *_store_inputs("dagster-webserver", r"bootstrap-wheelhouse-[^/]*\.drv$")]:
            for f in [out] if out.is_file() else sorted(out.iterdir()):
                shutil.copy(f, index / f.name.split("-", 1)[1] if out.is_file() else index / f.name)
        # lock.py resolves Dagster's own wheels too: the ones the package set built from those sdists.
        env = {**os.environ, "NIX_CONFIG": NIX_CONFIG}
        declared = json.loads(subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", str(REPO_NIX), "-A", "dagster-src.declarations",
             "--argstr", "scope", "bootstrap"], env=env, check=True, capture_output=True, text=True).stdout)
        for attr in declared:
            dist = subprocess.run(
                ["nix-build", str(REPO_NIX), "-A", f"{attr}.dist", "--argstr", "scope", "bootstrap", "--no-out-link"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            for wheel in Path(dist).rglob("*.whl"):
                shutil.copy(wheel, index / wheel.name)
        index.chmod(0o755)
        subprocess.run(["chmod", "-R", "a+rX", str(index)], check=True)
        assert len([f for f in index.iterdir() if f.name.endswith(".tar.gz")]) == len(declared) == len(sources)
        # Every pip (the update's lookup, lock.py, the fixed-output fetches) sees only that folder.
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(index))

        # A checkout of the project whose pins name an older release.
        project = root / "project"
        shutil.copytree(REPO_NIX, project / "nix", ignore=shutil.ignore_patterns("__pycache__"))
        # The set builds this project too (nix/packages/dagster-nix-builder.nix takes the checkout's source).
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO_NIX.parent / name, project / name)
        shutil.copytree(REPO_NIX.parent / "dagster_nix_builder", project / "dagster_nix_builder",
                        ignore=shutil.ignore_patterns("__pycache__", ".local_defs_state"))
        git(project.parent, "init", "-q", "-b", "main", str(project))
        committed = json.loads((REPO_NIX / "pins.json").read_text())
        start = json.loads(json.dumps(committed))
        start["release"]["version"] = "1.13.26"
        (project / "nix" / "pins.json").write_text(json.dumps(start, indent=2) + "\n")
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "pins at 1.13.26")
        head = git(project, "rev-parse", "HEAD")

        logs: list[str] = []
        # The local folder holds this machine's wheels only: lock this machine's target alone.
        host = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        target = f"{host}-{os.uname().machine}-linux"
        result = update(settings(project, lock_targets=[target]), version="1.13.27", log=logs.append)

        assert result.mode == "release" and result.old == "1.13.26" and result.new == "1.13.27"
        assert git(project, "log", "-1", "--format=%s") == "dagster-src: 1.13.26 -> 1.13.27"
        assert git(project, "rev-parse", "HEAD~1") == head
        changed = git(project, "show", "--name-only", "--format=", "HEAD").split()
        assert changed == list(result.changed_files) and "nix/pins.json" in changed
        assert set(changed) <= {"nix/pins.json", "nix/bootstrap/wheels.json"}
        # Nix computed the same sdist hashes the package set was written with.
        assert dict(result.hashes) == committed["release"]["hashes"]
        assert json.loads((project / "nix" / "pins.json").read_text())["release"] == committed["release"]
        assert {"dagster-src", "dagster", "dagster-webserver"} <= set(result.built)
        assert result.checks, "the rebuilt packages passed their checks"
        assert target in json.loads((project / "nix/bootstrap/wheels.json").read_text())["targets"]
        print("\n".join([*logs, *result.checks]))
        assert git(project, "status", "--porcelain") == ""
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- git mode from zero: no rev, the version from the source, no placeholder in any tracked file -----------

VERSION_PY = "python_modules/dagster/dagster/version.py"


@pytest.fixture
def fresh() -> Iterator[dict]:
    """An upstream laid out like Dagster's (a version.py where the monorepo has it), nothing pinned yet."""
    root = world_readable_tmpdir("dnb-fresh-")
    upstream = Upstream(root)
    rev = upstream.push(
        {"dagster.py": GOOD_MODULE.format(version="1.2.3"), VERSION_PY: '__version__ = "1.2.3"\n'}, "one"
    )
    yield {"root": root, "upstream": upstream, "rev": rev}
    shutil.rmtree(root, ignore_errors=True)


class PinsWatcher:
    """Reads a pin file as fast as it can while an update runs: every content a reader could have seen."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path = path
        self.seen: list[bytes] = [path.read_bytes()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            data = self.path.read_bytes()
            if data != self.seen[-1]:
                self.seen.append(data)
            time.sleep(0.001)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_source_git_alone_pins_the_branch_head_and_the_sources_version(fresh: dict) -> None:
    project = make_project(fresh["root"], fresh["upstream"])  # rev null, version 1!0+dev
    pins_path = project / "nix" / "pins.json"

    with PinsWatcher(pins_path) as watcher:
        result = update(settings(project), source="git")

    assert result.old == "none" and result.new == fresh["rev"] and result.version == "1.2.3"
    assert git(project, "log", "-1", "--format=%s") == f"dagster-src: none -> {fresh['rev']}"
    pins = read_pins(pins_path)
    assert (pins.source, pins.git.rev, pins.git.version) == ("git", fresh["rev"], "1.2.3")
    assert any("dagster --version: dagster 1.2.3" in c for c in result.checks)
    # Written once, with the real hash: a build beside the update never reads a placeholder.
    assert len(watcher.seen) == 2, [s.decode() for s in watcher.seen]
    assert not any(FAKE_HASH.encode() in seen for seen in watcher.seen)


def test_source_git_switches_a_release_checkout_and_writes_the_url(fresh: dict) -> None:
    project = make_project(
        fresh["root"], fresh["upstream"], source="release", url="https://example.invalid/dagster.git"
    )

    result = update(settings(project), source="git", url=fresh["upstream"].url)

    assert result.old == "1.13.27" and result.new == fresh["rev"]
    assert git(project, "log", "-1", "--format=%s") == f"dagster-src: 1.13.27 -> {fresh['rev']}"
    pins = read_pins(project / "nix" / "pins.json")
    assert (pins.source, pins.git.url, pins.git.rev) == ("git", fresh["upstream"].url, fresh["rev"])


def test_a_rev_alone_leaves_the_selected_source(fresh: dict) -> None:
    project = make_project(fresh["root"], fresh["upstream"], source="release")
    update(settings(project), rev=fresh["rev"])
    pins = read_pins(project / "nix" / "pins.json")
    assert pins.source == "release" and pins.git.rev == fresh["rev"]


def test_unreadable_version_file_fails_the_version_step(fresh: dict) -> None:
    rev = fresh["upstream"].push({VERSION_PY: "VERSION = get_version()\n"}, "no literal version")
    project = make_project(fresh["root"], fresh["upstream"])
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), source="git")

    assert info.value.step is UpdateStep.VERSION
    assert info.value.reason == f'{VERSION_PY} of rev {rev} has no line __version__ = "..."'
    assert_untouched(project, before, head)


def test_no_rev_and_an_unreachable_upstream_fail_the_resolve_step(fresh: dict) -> None:
    missing = fresh["root"] / "gone.git"
    project = make_project(fresh["root"], fresh["upstream"], url=str(missing))
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), source="git")

    assert info.value.step is UpdateStep.RESOLVE
    assert info.value.reason.startswith(
        f"no rev given, and the head of master could not be read: git ls-remote {missing} refs/heads/master failed"
    )
    assert_untouched(project, before, head)


def test_unreachable_index_is_reported_as_such_not_as_an_incomplete_release(fresh: dict) -> None:
    project = release_project(fresh["root"])
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")
    unreachable = ["--index-url", "http://127.0.0.1:9/simple", "--retries", "0", "--timeout", "5"]

    with pytest.raises(UpdateError) as info:
        update(settings(project, pip_args=unreachable), version="1.13.28")

    assert info.value.step is UpdateStep.RESOLVE
    assert info.value.reason.startswith(
        "the package index could not be asked: the package index could not be read (a network or server error, "
        "not a missing release): Could not fetch URL http://127.0.0.1:9/simple/"
    )
    assert "not complete" not in str(info.value)
    assert_untouched(project, before, head)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give source ('git' or 'release'), a rev (git mode) or a version (release mode)"),
        ({"rev": "a" * 40, "version": "1.0"}, "give rev (git mode) or version (release mode), not both"),
        ({"source": "svn"}, "source must be 'git' or 'release', not 'svn'"),
        ({"source": "git", "version": "1.0"}, "source 'git' takes a rev, not a version"),
        ({"source": "release", "rev": "a" * 40}, "source 'release' takes a version, not a rev, url or branch"),
    ],
)
def test_contradictory_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        update(settings(tmp_path), **kwargs)
    assert str(info.value) == message


def test_git_mode_refuses_a_source_whose_requirements_the_wheel_lock_lacks(fresh: dict) -> None:
    pyproject = (
        '[project]\nname = "dagster"\ndependencies = [\n  "click>=8",\n  "left-pad>=1",\n'
        '  "tomli>=99; python_version<\'3.11\'",\n  "dagster-cli==1.2.3",\n  "pyyaml>=99",\n]\n'
    )
    rev = fresh["upstream"].push({"python_modules/dagster/pyproject.toml": pyproject}, "new requirements")
    project = make_project(fresh["root"], fresh["upstream"])
    python = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    target = f"{python}-{os.uname().machine}-linux"
    lock = {"targets": {target: {"wheels": {"click": {"version": "8.1.7"}, "pyyaml": {"version": "6.0.2"}}}}}
    (project / "nix" / "bootstrap").mkdir()
    (project / "nix" / "bootstrap" / "wheels.json").write_text(json.dumps(lock))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a wheel lock")
    before, head = snapshot(project), git(project, "rev-parse", "HEAD")

    with pytest.raises(UpdateError) as info:
        update(settings(project), source="git")

    assert info.value.step is UpdateStep.LOCK
    assert info.value.reason.startswith(
        f"the source at {rev} requires what nix/bootstrap/wheels.json does not lock for {target}"
    )
    # Markers are evaluated for the target, and the set's own distributions (dagster-cli) are not looked up.
    assert info.value.messages == [
        "python_modules/dagster: left-pad>=1 (not in the lock)",
        "python_modules/dagster: pyyaml>=99 (the lock has 6.0.2)",
    ]
    assert_untouched(project, before, head)


@pytest.mark.slow
def test_git_mode_relocks_when_the_source_drifted_from_the_wheel_lock(fresh: dict) -> None:
    """A source that wants click<8.2 (the lock has 8.5.1): lock.py resolves the source's own requirements
    for this machine's target, through the user's pip configuration, and the update commits both files."""
    pyproject = '[project]\nname = "dagster"\ndependencies = [\n  "click>=7,<8.2",\n  "dagster-cli==1.2.3",\n]\n'
    rev = fresh["upstream"].push({"python_modules/dagster/pyproject.toml": pyproject}, "an older click")
    project = make_project(fresh["root"], fresh["upstream"])
    (project / "nix" / "bootstrap").mkdir(exist_ok=True)
    for name in ("lock.py", "wheels.json"):
        shutil.copy(REPO_NIX / "bootstrap" / name, project / "nix" / "bootstrap" / name)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "the real wheel lock and its script")
    python = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    target = f"{python}-{os.uname().machine}-linux"

    result = update(settings(project, lock_targets=[target]), source="git")

    assert result.new == rev
    assert set(result.changed_files) == {"nix/pins.json", "nix/bootstrap/wheels.json"}
    lock = json.loads((project / "nix" / "bootstrap" / "wheels.json").read_text())
    click = lock["targets"][target]["wheels"]["click"]["version"]
    assert tuple(int(n) for n in click.split(".")[:2]) < (8, 2), click
    assert lock["dagster"] == "1.2.3"  # labelled with the source's version
    assert git(project, "status", "--porcelain") == ""
