"""The code location loads from a dg project's defs folder, and Dagster's CLI materializes a fixture set into
the project's instance. Each test makes its own small dg project (``make_project`` of test_component.py) over
a copy of a fixture set; the repo's own definitions are loaded as they ship."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from repo_packages import PACKAGES
from test_component import make_project, project_env

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny"
DAGSTER = str(Path(sys.executable).parent / "dagster")
KEYS = (
    "from nixproj.definitions import defs\n"
    "print(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()))\n"
)


def _project(tmp_path: Path, salt: str, extra: str = "", package_set: Path = TINY) -> Path:
    return make_project(
        tmp_path / "proj",
        f"package_set: packages-nix\nout_link_dir: results\nnix_args: {{salt: {salt}}}\ninclude_update: false\n{extra}",
        package_set=package_set,
    )


def _python(root: Path, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env or project_env(root), cwd=root, capture_output=True,
                          text=True, check=False, timeout=180)  # fmt: skip


def test_definitions_load_the_fixture_set(tmp_path: Path, salt: str):
    root = _project(tmp_path, salt)
    proc = _python(root, KEYS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['base', 'mid', 'solo', 'top-level']"


def test_the_repo_definitions_load_every_package_of_the_set():
    proc = subprocess.run(
        [sys.executable, "-c", "from dagster_nix_builder.definitions import defs\n" + KEYS.split("\n", 1)[1]],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for key in PACKAGES:
        assert f"'{key}'" in proc.stdout


def test_definitions_fail_loading_with_file_and_line(tmp_path: Path, salt: str):
    root = _project(tmp_path, salt)
    bad = root / "packages-nix"
    (bad / "packages" / "solo.nix").write_text('{ mkPkg }:\nmkPkg { name = "solo" }\n')
    proc = _python(root, KEYS)
    assert proc.returncode != 0
    assert f"Nix evaluation failed at {bad}/packages/solo.nix:2" in proc.stderr


def test_attributes_from_the_environment_reach_the_resource(tmp_path: Path, salt: str):
    root = _project(tmp_path, salt, 'scope: "{{ env.TEST_NIX_SCOPE }}"\nmax_jobs: "{{ env.TEST_NIX_MAX_JOBS }}"\n')
    code = (
        "from nixproj.definitions import defs\n"
        "r = defs.resources['nix']\n"
        "c = r.cli()\n"
        "print(c.scope, c.max_jobs, c.package_args()['salt'], c.nix_dir, c.out_link_dir)\n"
    )
    proc = _python(root, code, project_env(root, TEST_NIX_SCOPE="bootstrap", TEST_NIX_MAX_JOBS="2"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["bootstrap", "2", salt, str(root / "packages-nix"), str(root / "results")]


def test_cli_materialize_selection_lands_in_the_instance_and_the_project(tmp_path: Path, salt: str):
    """Run from another directory: the package set and the out-links are the project's, not the cwd's."""
    root = _project(tmp_path, salt)
    env = project_env(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [DAGSTER, "asset", "materialize", "-m", "nixproj.definitions", "--select", "top-level"],
        env=env, capture_output=True, text=True, cwd=elsewhere, check=False, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (root / "results" / "result-top-level").is_symlink()
    assert not (root / "results" / "result-mid").exists()  # built as a dependency, not selected
    assert not (elsewhere / "results").exists()
    code = (
        "from dagster import DagsterInstance, AssetKey\n"
        "i = DagsterInstance.get()\n"
        "e = i.get_latest_materialization_event(AssetKey('top-level'))\n"
        "print(e.asset_materialization.metadata['built_now'].value)\n"
        "print(i.get_latest_materialization_event(AssetKey('mid')))\n"
    )
    check = _python(root, code, env)
    assert check.stdout.split() == ["True", "None"], check.stderr


def test_cli_unknown_selection_is_clear(tmp_path: Path, salt: str):
    root = _project(tmp_path, salt)
    proc = subprocess.run(
        [DAGSTER, "asset", "materialize", "-m", "nixproj.definitions", "--select", "nope"],
        env=project_env(root), capture_output=True, text=True, cwd=root, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "nope" in proc.stderr


def _sleepers(marker: str) -> list[str]:
    """Processes whose command line is ``marker``, or contains it when it is an option."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    rows = [[*line.strip().split(None, 1), ""] for line in out.splitlines()[1:]]
    return [f"{pid} {args}" for pid, args, *_ in rows
            if (marker in args if marker.startswith("--") else args == marker) and "ps -eo" not in args]  # fmt: skip


def test_cancelled_run_stops_nix_and_the_next_run_succeeds(tmp_path: Path, salt: str):
    """A UI cancel ends in SIGINT to the run worker; do that to `dagster asset materialize`."""
    # Unique (ps sees other test runs on the machine too), and ending in 1: defs.yaml's '41.775370' reached Nix
    # as 41.77537 (a number-like string rendered as a number), and ps never saw the marker (CI, twice).
    sleep = f"41.{int(salt[:8], 16) % 10**6:06d}1"
    root = _project(tmp_path, salt)
    defs_yaml = root / "nixproj" / "defs" / "packages" / "defs.yaml"
    plain = defs_yaml.read_text()
    defs_yaml.write_text(plain.replace(f"salt: {salt}", f"salt: {salt}, sleep: '{sleep}'"))
    env = project_env(root)
    command = [DAGSTER, "asset", "materialize", "-m", "nixproj.definitions", "--select", "solo"]
    proc = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not _sleepers(f"sleep {sleep}") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not _sleepers(f"sleep {sleep}"):
        proc.send_signal(signal.SIGINT)  # stops nix too, if it started late
        output, _ = proc.communicate(timeout=30)
        raise AssertionError(f"the build should be running (exit {proc.returncode}, after "
                             f"{time.monotonic() - deadline + 60:.0f}s): {output[-3000:]}")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    assert "Stopping nix" in output or "interrupt" in output.lower(), output[-3000:]
    deadline = time.monotonic() + 15
    while (_sleepers(f"sleep {sleep}") or _sleepers(f"--argstr salt {salt}")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sleepers(f"sleep {sleep}") and not _sleepers(f"--argstr salt {salt}"), "nothing left running"
    defs_yaml.write_text(plain)  # same set, no sleep: builds fine now
    again = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=180, check=False)
    assert again.returncode == 0, again.stderr[-3000:]


def test_no_nix_on_path_is_a_clear_error(tmp_path: Path, salt: str):
    root = _project(tmp_path, salt)
    proc = _python(root, KEYS, project_env(root, PATH=str(Path(sys.executable).parent)))  # the venv only: no nix
    assert proc.returncode != 0
    assert "Nix executable 'nix' was not found on PATH" in proc.stderr
    assert "apt-get install nix-bin" in proc.stderr


def test_invalid_pins_json_names_the_file_and_line(tmp_path: Path, salt: str):
    root = _project(tmp_path, salt, package_set=REPO / "nix")
    nix_dir = root / "packages-nix"
    (nix_dir / "pins.json").write_text(
        '{\n  "source": "release",\n  "release": {\n    "version": "1.13.27"\n    "hashes": {}\n  }\n}\n'
    )
    proc = _python(root, KEYS)
    assert proc.returncode != 0
    assert (
        f"NixPackageSetError: {nix_dir}/pins.json:5:5: invalid JSON: Expecting ',' delimiter. The package set "
        "reads this file (builtins.fromJSON), so nothing evaluates until it is fixed (`git diff` shows what changed)."
    ) in proc.stderr
    assert "json.exception" not in proc.stderr


def test_setup_writes_the_project_instance_into_env():
    """scripts/setup.sh's .env: Dagster's and dg's CLIs read it from the repo root before they pick the
    instance; an exported DAGSTER_HOME still wins."""
    env_file = REPO / ".env"
    assert env_file.is_file(), "run scripts/setup.sh"
    assert f"DAGSTER_HOME=${{DAGSTER_HOME:-{REPO}/.dagster_home}}" in env_file.read_text().splitlines()
    code = "from dagster._core.secrets.env_file import get_env_var_dict as g; import sys; print(g(sys.argv[1]))"
    for exported, expected in ((None, f"{REPO}/.dagster_home"), ("/elsewhere", "/elsewhere")):
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        if exported:
            env["DAGSTER_HOME"] = exported
        out = subprocess.run([sys.executable, "-c", code, str(REPO)], env=env, capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        assert f"'DAGSTER_HOME': '{expected}'" in out
    assert shutil.which("dg", path=str(Path(sys.executable).parent)), "setup.sh installs dagster-dg-cli"
