"""The code location loads, and the CLI materializes a fixture set into a project-local instance."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny"


def _env(tmp_path: Path, nix_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DAGSTER_NIX_DIR=str(nix_dir),
        DAGSTER_HOME=str(tmp_path / "home"),
        DAGSTER_NIX_OUT_LINK_DIR=str(tmp_path / "results"),
        **extra,
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def _load(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "from dagster_nix_builder.definitions import defs\n"
        "g = defs.resolve_asset_graph()\n"
        "print(sorted(k.to_user_string() for k in g.get_all_asset_keys()))\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)


def test_definitions_load_the_fixture_set(tmp_path: Path):
    proc = _load(_env(tmp_path, TINY))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['base', 'mid', 'solo', 'top-level']"


def test_definitions_fail_loading_with_file_and_line(tmp_path: Path):
    bad = tmp_path / "tiny"
    subprocess.run(["cp", "-r", str(TINY), str(bad)], check=True)
    (bad / "packages" / "solo.nix").write_text("{ mkPkg }:\nmkPkg { name = \"solo\" }\n")
    proc = _load(_env(tmp_path, bad))
    assert proc.returncode != 0
    assert f"Nix evaluation failed at {bad}/packages/solo.nix:2" in proc.stderr


def test_definitions_from_yaml_config(tmp_path: Path):
    config = tmp_path / "nix-builder.yaml"
    config.write_text("scope: bootstrap\nmax_jobs: {env: TEST_NIX_MAX_JOBS}\nnix_args:\n  salt: from-yaml\n")
    env = _env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(config), TEST_NIX_MAX_JOBS="2")
    code = (
        "from dagster_nix_builder.definitions import nix_resource_from_env\n"
        "r = nix_resource_from_env()\n"
        "print(r.resolved('scope'), r.resolved('max_jobs'), r.package_args()['salt'], r.build_command(['x'])[-1])\n"
        "print(' '.join(r.build_command(['x'])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "bootstrap 2 from-yaml x"
    assert "--max-jobs 2" in second and "--argstr scope bootstrap" in second


def test_cli_materialize_selection_lands_in_the_instance(tmp_path: Path, salt: str):
    config = tmp_path / "nix-builder.yaml"
    config.write_text(f"nix_args:\n  salt: {salt}\n")
    env = _env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(config))
    dagster = str(Path(sys.executable).parent / "dagster")
    proc = subprocess.run(
        [dagster, "asset", "materialize", "-m", "dagster_nix_builder.definitions", "--select", "top-level"],
        env=env, capture_output=True, text=True, cwd=REPO, check=False, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "results" / "result-top-level").is_symlink()
    assert not (tmp_path / "results" / "result-mid").exists()  # built as a dependency, not selected
    code = (
        "from dagster import DagsterInstance, AssetKey\n"
        "i = DagsterInstance.get()\n"
        "e = i.get_latest_materialization_event(AssetKey('top-level'))\n"
        "print(e.asset_materialization.metadata['built_now'].value)\n"
        "print(i.get_latest_materialization_event(AssetKey('mid')))\n"
    )
    check = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert check.stdout.split() == ["True", "None"]


def test_cli_unknown_selection_is_clear(tmp_path: Path):
    dagster = str(Path(sys.executable).parent / "dagster")
    proc = subprocess.run(
        [dagster, "asset", "materialize", "-m", "dagster_nix_builder.definitions", "--select", "nope"],
        env=_env(tmp_path, TINY), capture_output=True, text=True, cwd=REPO, check=False, timeout=120,
    )
    assert proc.returncode != 0
    assert "nope" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "nix" / "default.nix").is_file(), reason="nix/default.nix is not written yet")
def test_definitions_load_the_real_six(tmp_path: Path):
    proc = _load(_env(tmp_path, REPO / "nix"))
    assert proc.returncode == 0, proc.stderr
    for key in ("dagster-src", "dagster-shared", "dagster-pipes", "dagster", "dagster-graphql", "dagster-webserver"):
        assert f"'{key}'" in proc.stdout


def _sleepers(marker: str) -> list[str]:
    """Processes whose command line is ``marker``, or contains it when it is an option."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    rows = [line.strip().split(None, 1) + [""] for line in out.splitlines()[1:]]
    return [f"{pid} {args}" for pid, args, *_ in rows
            if (marker in args if marker.startswith("--") else args == marker) and "ps -eo" not in args]


def test_cancelled_run_stops_nix_and_the_next_run_succeeds(tmp_path: Path, salt: str):
    """A UI cancel ends in SIGINT to the run worker; do that to `dagster asset materialize`."""
    import signal
    import time

    sleep = f"41.{int(salt[:8], 16) % 10**6:06d}"  # unique: ps sees other test runs on the machine too
    config = tmp_path / "nix-builder.yaml"
    config.write_text(f"nix_args:\n  salt: {salt}\n  sleep: '{sleep}'\n")
    env = _env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(config))
    dagster = str(Path(sys.executable).parent / "dagster")
    command = [dagster, "asset", "materialize", "-m", "dagster_nix_builder.definitions", "--select", "solo"]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 60
    while not _sleepers(f"sleep {sleep}") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _sleepers(f"sleep {sleep}"), "the build should be running"
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
    config.write_text(f"nix_args:\n  salt: {salt}\n")  # same set, no sleep: builds fine now
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert again.returncode == 0, again.stderr[-3000:]


def test_no_nix_on_path_is_a_clear_error(tmp_path: Path):
    env = _env(tmp_path, TINY)
    env["PATH"] = str(Path(sys.executable).parent)  # the venv only: no nix
    proc = _load(env)
    assert proc.returncode != 0
    assert "Nix executable 'nix' was not found on PATH" in proc.stderr
    assert "apt-get install nix-bin" in proc.stderr


def test_nix_dir_and_out_link_dir_of_the_config_file_are_used(tmp_path: Path, salt: str):
    config = tmp_path / "nix-builder.yaml"
    config.write_text(f"nix_dir: {TINY}\nout_link_dir: links\nnix_args:\n  salt: {salt}\n")
    env = _env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(config))
    del env["DAGSTER_NIX_DIR"], env["DAGSTER_NIX_OUT_LINK_DIR"]
    proc = _load(env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['base', 'mid', 'solo', 'top-level']"  # the tiny set, not the repo's nix/
    code = "from dagster_nix_builder.definitions import nix_resource_from_env as f; print(f().out_link_dir)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path / "links")


@pytest.mark.parametrize(("text", "message"), [
    ("max_job: 4\n", "{config}:1: unknown key 'max_job'; did you mean 'max_jobs'?"),
    ("cores: two\n", ("{config}:1: cores: Input should be a valid integer, unable to parse string as an integer "
                     "(got 'two')")),
    ("scope: [bootstrap\n", ("{config}:2:1: invalid YAML: while parsing a flow sequence (line 1, column 8), "
                            "expected ',' or ']', but got '<stream end>'")),
])
def test_a_bad_config_file_fails_the_load_naming_file_line_and_key(tmp_path: Path, text: str, message: str):
    config = tmp_path / "nix-builder.yaml"
    config.write_text(text)
    proc = _load(_env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(config)))
    assert proc.returncode != 0
    assert "NixConfigError: " + message.format(config=config) in proc.stderr


def test_a_missing_named_config_file_fails_the_load(tmp_path: Path):
    proc = _load(_env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(tmp_path / "missing.yaml")))
    assert proc.returncode != 0
    assert f"NixConfigError: DAGSTER_NIX_CONFIG names {tmp_path / 'missing.yaml'}, which does not exist" in proc.stderr


def test_invalid_pins_json_names_the_file_and_line(tmp_path: Path):
    nix_dir = tmp_path / "nix"
    shutil.copytree(REPO / "nix", nix_dir)
    (nix_dir / "pins.json").write_text(
        '{\n  "source": "release",\n  "release": {\n    "version": "1.13.27"\n    "hashes": {}\n  }\n}\n'
    )
    proc = _load(_env(tmp_path, nix_dir))
    assert proc.returncode != 0
    assert (
        f"NixPackageSetError: {nix_dir}/pins.json:5:5: invalid JSON: Expecting ',' delimiter. The package set "
        "reads this file (builtins.fromJSON), so nothing evaluates until it is fixed (`git diff` shows what changed)."
    ) in proc.stderr
    assert "json.exception" not in proc.stderr


def test_cli_entry_point_keeps_runs_in_the_project_instance(tmp_path: Path, salt: str):
    """`dagster-nix-builder` is Dagster's CLI with DAGSTER_HOME defaulting to <repo>/.dagster_home (here
    pointed at a temporary folder, so the test leaves the real one alone)."""
    config = tmp_path / "nix-builder.yaml"
    config.write_text(f"nix_args:\n  salt: {salt}\n")
    env = _env(tmp_path, TINY, DAGSTER_NIX_CONFIG=str(config))
    del env["DAGSTER_HOME"]
    home = tmp_path / "project-home"
    code = (
        "import sys\nfrom pathlib import Path\nfrom dagster_nix_builder import cli\n"
        f"cli.DEFAULT_DAGSTER_HOME = Path({str(home)!r})\n"
        "sys.argv = ['dagster-nix-builder', 'asset', 'materialize', '-m', 'dagster_nix_builder.definitions',"
        " '--select', 'solo']\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "temporary" not in proc.stderr  # neither Dagster's temporary instance nor our warning
    check = (
        "from dagster import DagsterInstance, AssetKey\n"
        "i = DagsterInstance.get()\n"
        "print(i.get_latest_materialization_event(AssetKey('solo')) is not None, len(i.get_run_records()))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], env={**env, "DAGSTER_HOME": str(home)},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "1"]
    script = Path(sys.executable).parent / "dagster-nix-builder"
    assert subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True).stdout.startswith(
        "dagster-nix-builder, version 1.13")


def test_plain_dagster_cli_without_dagster_home_warns(tmp_path: Path):
    env = _env(tmp_path, TINY)
    del env["DAGSTER_HOME"]
    proc = _load(env)
    assert proc.returncode == 0, proc.stderr
    assert (
        "dagster-nix-builder: DAGSTER_HOME is not set, so Dagster's CLI keeps this command's runs in a temporary "
        "instance, deleted when it exits. Run `.venv/bin/dagster-nix-builder ...`"
    ) in proc.stderr
