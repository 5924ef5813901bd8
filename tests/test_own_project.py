"""This project in someone else's: a fresh ``create-dagster project`` in a temporary directory, this project
installed into its venv from a wheel built from the checkout, then only ``dg`` (``dg list components``,
``dg scaffold defs``, ``dg list defs``, ``dg launch``) and the real Nix, as a new user would.

The venv is made once for the module (pip through its own configuration, as a user's would be): about a
minute; each test then works in its own project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from dagster_nix_builder.nix.output import nix_store_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nix") is None, reason="nix is not installed (apt-get install nix-bin)"),
]

REPO = Path(__file__).resolve().parent.parent
DAGSTER = version("dagster")  # the release this checkout is tested with, in either world
COMPONENT = "dagster_nix_builder.NixPackageSetComponent"


def run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with create-dagster, dg and this project, installed from a wheel of the checkout's sources
    (copied first: setuptools would leave build/ and *.egg-info in the checkout)."""
    base = tmp_path_factory.mktemp("own-project")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "dagster_nix_builder", source / "dagster_nix_builder",
                    ignore=shutil.ignore_patterns("__pycache__", ".local_defs_state"))  # fmt: skip
    run([sys.executable, "-m", "venv", str(base / "venv")], cwd=base)
    pip = [str(base / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(base / "wheels"), str(source)], cwd=base)
    (wheel,) = (base / "wheels").glob("dagster_nix_builder-*.whl")
    run([*pip, "install", "--quiet", str(wheel), f"dagster=={DAGSTER}", f"dagster-webserver=={DAGSTER}",
         f"dagster-dg-cli=={DAGSTER}", f"create-dagster=={DAGSTER}"], cwd=base)  # fmt: skip
    return base / "venv"


def project_env(root: Path) -> dict[str, str]:
    """The environment of a user of the venv: none of this checkout's, nor the suite's Dagster settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DG_", "PYTHON", "VIRTUAL_ENV"))}
    env["DAGSTER_HOME"] = str(root / ".dagster_home")
    (root / ".dagster_home").mkdir(exist_ok=True)
    (root / ".dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


@pytest.fixture(scope="module")
def project(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project made by create-dagster, installed into the venv (its .venv) as its README says; one for
    the module (the tests add to it, each its own defs folder)."""
    tmp_path = tmp_path_factory.mktemp("projects")
    run([str(venv / "bin" / "create-dagster"), "project", "--no-uv-sync", "myproj"], cwd=tmp_path,
        env=project_env(tmp_path))  # fmt: skip
    root = tmp_path / "myproj"
    (root / ".venv").symlink_to(venv)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(root)],
        cwd=root, env=project_env(root))  # fmt: skip
    return root


def dg(venv: Path, root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "dg"), *args], cwd=root, env=project_env(root), capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def test_dg_list_components_lists_the_component(venv: Path, project: Path):
    proc = dg(venv, project, "list", "components", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    keys = [entry["key"] for entry in json.loads(proc.stdout)["items"]]
    assert COMPONENT in keys
    assert "missing_dg_plugin_module_in_manifest" not in proc.stderr


def test_dg_scaffold_refuses_a_missing_package_set(venv: Path, project: Path):
    proc = dg(venv, project, "scaffold", "defs", COMPONENT, "nix", "--package-set", "nowhere")
    assert proc.returncode != 0
    assert (f"--package-set nowhere: {project / 'nowhere'} is not a Nix package set (no such directory)"
            in proc.stdout + proc.stderr), proc.stdout[-3000:] + proc.stderr[-3000:]  # fmt: skip
    assert not (project / "src" / "myproj" / "defs" / "nix").exists(), "nothing left to block a second try"


OUTCOME = """\
import json
from dagster import DagsterEventType, DagsterInstance
instance = DagsterInstance.get()
(run,) = instance.get_run_records()
records = instance.get_records_for_run(run.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records.records]
materialized = instance.get_records_for_run(run.dagster_run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
print(json.dumps({
    "status": run.dagster_run.status.value,
    "materialized": sorted(r.event_log_entry.dagster_event.asset_key.to_user_string() for r in materialized.records),
    "checks": sorted([e.asset_key.to_user_string(), e.check_name, e.passed] for e in evaluations),
}))
"""


def test_a_scaffolded_package_set_lists_and_builds_with_its_checks(venv: Path, project: Path, salt: str):
    """The tiny set with tests (tests/fixtures/checked: tests/fixtures/tiny plus passthru.tests), salted so
    every derivation is new and really built."""
    shutil.copytree(REPO / "tests" / "fixtures" / "checked", project / "tiny",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))  # fmt: skip
    proc = dg(venv, project, "scaffold", "defs", COMPONENT, "nix", "--package-set", "tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    defs_yaml = project / "src" / "myproj" / "defs" / "nix" / "defs.yaml"
    text = defs_yaml.read_text()
    assert f"type: {COMPONENT}\nattributes:\n  package_set: tiny\n" in text
    defs_yaml.write_text(text + f"  nix_args: {{salt: '{salt}'}}\n")

    proc = dg(venv, project, "list", "defs", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]  # none of ours (BetaWarning) on every command
    data = json.loads(proc.stdout)
    assert {a["asset_key"]: sorted(a["dependency_keys"]) for a in data["assets"]} == {
        "base": [], "mid": ["base"], "solo": [], "top-level": ["base", "mid"],
    }
    checks = sorted([c["asset_key"], c["name"]] for c in data["asset_checks"])
    assert checks == [["base", "imports"], ["base", "version"], ["mid", "imports"], ["solo", "version"]]
    assert data["jobs"] == []  # no update_dagster_src: this set has no Dagster source
    assert [s["name"] for s in data["sensors"]] == ["nix_packages_automation"]

    proc = dg(venv, project, "launch", "--assets", "*")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = run([str(venv / "bin" / "python"), "-c", OUTCOME], cwd=project, env=project_env(project))
    assert json.loads(out) == {
        "status": "SUCCESS",
        "materialized": ["base", "mid", "solo", "top-level"],
        "checks": [[attr, name, True] for attr, name in checks],
    }
    for attr in ("base", "mid", "solo", "top-level"):
        link = project / ".nix-results" / f"result-{attr}"
        assert os.path.realpath(link).startswith(nix_store_dir().rstrip("/") + "/"), link
        assert (link / "name").read_text() == f"{attr}\n"


def launch_and_read(venv: Path, project: Path) -> dict:
    proc = dg(venv, project, "launch", "--assets", "*")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(run([str(venv / "bin" / "python"), "-c", OUTCOME], cwd=project, env=project_env(project)))


def listed(venv: Path, project: Path) -> dict:
    proc = dg(venv, project, "list", "defs", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture
def own_defs(project: Path, tmp_path: Path):
    """The project holds only the test's own defs folder and runs: the others are moved aside meanwhile."""
    defs, aside = project / "src" / "myproj" / "defs", tmp_path / "aside"
    aside.mkdir()
    others = [p for p in defs.iterdir() if p.is_dir() and not p.name.startswith("__")]
    for path in [*others, project / ".dagster_home"]:
        if path.exists():
            shutil.move(path, aside / path.name)
    yield
    for path in set(defs.iterdir()) - {defs / "__init__.py", defs / "__pycache__"}:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(project / ".dagster_home", ignore_errors=True)
    for path in others:
        shutil.move(aside / path.name, path)
    if (aside / ".dagster_home").exists():
        shutil.move(aside / ".dagster_home", project / ".dagster_home")


def test_an_attribute_set_file_gets_its_edges_from_the_derivations(venv: Path, project: Path, salt: str, own_defs):
    """tests/fixtures/foreign/packages.nix: `{ salt ? "" }: rec { ... }`, no scope, no callPackage files;
    libb reaches liba only through the excluded wrapper."""
    shutil.copy2(REPO / "tests" / "fixtures" / "foreign" / "packages.nix", project / "packages.nix")
    proc = dg(venv, project, "scaffold", "defs", COMPONENT, "attrset", "--file", "packages.nix", "--exclude", "wrapper")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    defs_yaml = project / "src" / "myproj" / "defs" / "attrset" / "defs.yaml"
    text = defs_yaml.read_text()
    assert 'attributes:\n  file: "packages.nix"\n  exclude: ["wrapper"]\n' in text
    defs_yaml.write_text(text + f"  args: {{salt: '{salt}'}}\n  out_link_dir: .nix-results/attrset\n")

    data = listed(venv, project)
    assert {a["asset_key"]: sorted(a["dependency_keys"]) for a in data["assets"]} == {
        "liba": [], "libb": ["liba"], "app": ["liba", "libb"],
    }  # no `lib` (a helper), no `wrapper` (excluded)
    assert sorted([c["asset_key"], c["name"]] for c in data["asset_checks"]) == [["app", "names"]]
    assert data["jobs"] == [] and [s["name"] for s in data["sensors"]] == ["nix_packages_automation"]

    assert launch_and_read(venv, project) == {
        "status": "SUCCESS", "materialized": ["app", "liba", "libb"], "checks": [["app", "names", True]],
    }
    link = project / ".nix-results" / "attrset" / "result-app"
    assert os.path.realpath(link).startswith(nix_store_dir().rstrip("/") + "/")
    assert link.read_text().split() == ["app", "liba", "libb", "wrapper", "liba"]


def test_a_flake_s_packages_and_checks(venv: Path, project: Path, own_defs):
    """tests/fixtures/foreign/flake: packages.<system> (core, app, default = app) and checks.<system>; no lock
    file is written into the flake."""
    shutil.copytree(REPO / "tests" / "fixtures" / "foreign" / "flake", project / "theirs")
    proc = dg(venv, project, "scaffold", "defs", COMPONENT, "flake", "--flake", "theirs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    defs_yaml = project / "src" / "myproj" / "defs" / "flake" / "defs.yaml"
    defs_yaml.write_text(defs_yaml.read_text() + "  out_link_dir: .nix-results/flake\n")

    data = listed(venv, project)
    # default is app's alias; app-runs reaches app alone (its check), both-agree both (an asset), lint neither.
    assert {a["asset_key"]: sorted(a["dependency_keys"]) for a in data["assets"]} == {
        "core": [], "app": ["core"], "both-agree": ["app", "core"], "lint": [],
    }
    assert sorted([c["asset_key"], c["name"]] for c in data["asset_checks"]) == [["app", "app_runs"]]
    assert data["jobs"] == [] and [s["name"] for s in data["sensors"]] == ["nix_packages_automation"]

    assert launch_and_read(venv, project) == {
        "status": "SUCCESS",
        "materialized": ["app", "both-agree", "core", "lint"],
        "checks": [["app", "app_runs", True]],
    }
    assert (project / ".nix-results" / "flake" / "result-app").read_text() == "app-of-core\n"
    assert not (project / "theirs" / "flake.lock").exists()
