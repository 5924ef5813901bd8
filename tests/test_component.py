"""``NixPackageSetComponent`` in a ``dg`` project: real ``dg`` subprocesses, the real Nix, real instances.

Most tests make their own small dg project in ``tmp_path`` (root module ``nixproj``, its defs folder with one
``defs.yaml``, ``.venv`` a link to this venv) over a copy of the tiny fixture set, so each has its own state
and instance; the repo's own project is checked as it ships (``dg check defs``, ``dg list defs``) and, in the
slow test, ``dg launch --assets '*'`` builds the whole set with every check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import dagster_nix_builder
from dagster_nix_builder import NixPackageSetComponent
from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.components.scaffolder import render_defs_yaml
from dagster_nix_builder.nix.graph import evaluate_package_set, graph_from_document, load_package_graph

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="nix is not installed (apt-get install nix-bin)")

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny"
BIN = Path(sys.executable).parent
DG = str(BIN / "dg")
TINY_KEYS = ["base", "mid", "solo", "top-level"]
NIX_PROGRAMS = ("nix", "nix-instantiate", "nix-store", "nix-build", "nix-env")


def write_dg_project(root: Path, name: str, attributes: str) -> None:
    """The files of a small dg project at ``root``: root module ``name``, its defs folder with one
    ``packages/defs.yaml`` of the component with ``attributes`` (YAML)."""
    module = root / name
    (module / "defs" / "packages").mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{name}"
        version = "0"

        [tool.dg]
        directory_type = "project"

        [tool.dg.cli]
        suppress_warnings = ["project_and_activated_venv_mismatch"]

        [tool.dg.project]
        root_module = "{name}"
        """))
    (module / "__init__.py").write_text("")
    (module / "defs" / "__init__.py").write_text("")
    (module / "definitions.py").write_text(
        "from pathlib import Path\nimport dagster as dg\n\n"
        "defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    (module / "defs" / "packages" / "defs.yaml").write_text(
        "type: dagster_nix_builder.NixPackageSetComponent\nattributes:\n"
        + textwrap.indent(attributes, "  ")
    )


def make_project(root: Path, attributes: str, *, package_set: Path = TINY) -> Path:
    """A dg project at ``root`` whose ``defs/packages/defs.yaml`` has ``attributes`` (YAML, indented by the
    caller or not) and a copy of ``package_set`` at ``root/packages-nix``."""
    shutil.copytree(package_set, root / "packages-nix")
    write_dg_project(root, "nixproj", textwrap.dedent(attributes))
    (root / ".venv").symlink_to(BIN.parent)  # dg runs the project's .venv/bin/python: this venv
    return root


def project_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DG_"))}
    # The project's modules, then this package as the suite imports it (a checkout beside an installed one).
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(Path(dagster_nix_builder.__file__).parent.parent)])
    env["DAGSTER_HOME"] = str(root / "home")
    (root / "home").mkdir(exist_ok=True)
    (root / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env.update(extra)
    return env


def dg(root: Path, *args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DG, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def listed(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)


def nix_wrappers(directory: Path, log: Path) -> str:
    """A folder of ``nix*`` programs that log each call to ``log`` and run the real one; returns a PATH with
    it first."""
    directory.mkdir()
    for name in NIX_PROGRAMS:
        real = shutil.which(name)
        if real is None:
            continue
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexec "{real}" "$@"\n')
        wrapper.chmod(0o755)
    return f"{directory}:{os.environ['PATH']}"


def evaluated(calls: list[str]) -> bool:
    """Whether the logged calls include an evaluation of the package set."""
    return any(call.startswith("nix-instantiate ") and " --eval " in call for call in calls)


def test_state_round_trips_the_graph_with_every_field():
    nix = NixResource(nix_dir=str(REPO / "nix"))
    document = json.loads(json.dumps(evaluate_package_set(nix)))  # the state is plain JSON
    graph = graph_from_document(document)
    assert graph == load_package_graph(nix)
    assert any(package.tests for package in graph.packages.values())  # nested mappings of dataclasses
    # Keys graph.nix no longer gives (a state of another version) are ignored, missing ones defaulted.
    first = next(iter(document["packages"]))
    document["packages"][first]["not_a_field"] = 1
    del document["packages"][first]["description"]
    assert graph_from_document(document)[first].attr == first


def test_dg_list_defs_of_the_repo_lists_the_six_and_their_checks():
    graph = load_package_graph(NixResource(nix_dir=str(REPO / "nix")))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_IS_DEV_CLI"}
    data = listed(dg(REPO, "list", "defs", "--json", env=env))
    assets = {a["asset_key"]: a for a in data["assets"]}
    assert set(assets) == set(graph) and len(assets) >= 6
    for attr, package in graph.packages.items():
        assert sorted(assets[attr]["dependency_keys"]) == sorted(package.deps)
        assert assets[attr]["group_name"] == "nix"
    checks = {(c["asset_key"], c["name"]) for c in data["asset_checks"]}
    assert checks == {(attr, test) for attr, package in graph.packages.items() for test in package.tests}
    assert checks, "the packages' passthru.tests are checks"
    # nix/ has a dagster-src: include_update (null) gives it the update job and both upstream sensors.
    assert {s["name"] for s in data["sensors"]} == {
        "nix_packages_automation", "dagster_upstream_commit_sensor", "dagster_release_sensor"
    }
    assert "update_dagster_src" in {j["name"] for j in data["jobs"]}
    assert any(a["source"].endswith("dagster_nix_builder/defs/packages/defs.yaml:4") for a in data["asset_checks"])


def test_dg_check_defs_of_the_repo():
    proc = dg(REPO, "check", "defs", env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All component YAML validated successfully." in proc.stdout
    assert "All definitions loaded successfully." in proc.stdout


def test_a_fresh_state_runs_no_nix_and_an_edit_refreshes_it(tmp_path: Path, salt: str):
    root = make_project(tmp_path / "proj", """\
        package_set: packages-nix
        out_link_dir: results
        nix_args:
          salt: "{{ env.TEST_NIX_SALT }}"
        include_update: false
        """)
    log = tmp_path / "nix-calls.log"
    env = project_env(root, TEST_NIX_SALT=salt, PATH=nix_wrappers(tmp_path / "nix-bin", log))

    def calls() -> list[str]:
        text = log.read_text() if log.exists() else ""
        log.unlink(missing_ok=True)
        return text.splitlines()

    first = listed(dg(root, "list", "defs", "--json", env=env))
    assert sorted(a["asset_key"] for a in first["assets"]) == TINY_KEYS
    assert evaluated(calls()), "the first load evaluates"
    state = next((root / "nixproj" / "defs" / ".local_defs_state").glob("*/state"))
    assert json.loads(state.read_text())["graph"]["nix_dir"] == str(root / "packages-nix")

    for command in (["list", "defs", "--json"], ["check", "defs"]):
        proc = dg(root, *command, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert calls() == [], f"dg {' '.join(command)} ran Nix with a fresh state"

    # A new package file in the copy: the next load sees a changed fingerprint and evaluates again.
    extra = '{ mkPkg, solo }: mkPkg { name = "extra"; deps = [ solo ]; }\n'  # an edge the derivation has
    (root / "packages-nix" / "packages" / "extra.nix").write_text(extra)
    again = listed(dg(root, "list", "defs", "--json", env=env))
    assert sorted(a["asset_key"] for a in again["assets"]) == sorted([*TINY_KEYS, "extra"])
    assert next(a for a in again["assets"] if a["asset_key"] == "extra")["dependency_keys"] == ["solo"]
    assert evaluated(calls())
    # A Nix-relevant attribute (here through the environment) is part of the fingerprint too.
    listed(dg(root, "list", "defs", "--json", env={**env, "TEST_NIX_SALT": salt + "-2"}))
    assert evaluated(calls())


@pytest.mark.parametrize(("attributes", "dg_says", "load_says"), [
    ("package_set: packages-nix\nmax_job: 4\n",
     ("{yaml}:4 - dagster_nix_builder.NixPackageSetComponent attributes.max_job Additional properties are "
     "not allowed ('max_job' was unexpected)"),
     "attributes.max_job at {yaml}:4"),
    ("package_set: packages-nix\ncores: two\n",  # a string passes the schema (it could be a template)
     ("NixConfigError: {yaml}:4: attributes.cores: Input should be a valid integer, unable to parse string as an "
     "integer (got 'two')"),
     ("NixConfigError: {yaml}:4: attributes.cores: Input should be a valid integer, unable to parse string as an "
     "integer (got 'two')")),
    ("package_set: packages-nix\ntranslation:\n  group: nix\n",
     "{yaml}:4 - dagster_nix_builder.NixPackageSetComponent attributes.translation {{'group': 'nix'}} is not",
     "attributes.translation.NixTranslationModel.group at {yaml}:4"),
    ("package_set: packages-nix\nnix_args:\n  version: 1.10\n",  # unquoted: YAML's number, not its text
     ("{yaml}:4 - dagster_nix_builder.NixPackageSetComponent attributes.nix_args {{'version': 1.1}} is not valid "
      "under any of the given schemas"),
     "attributes.nix_args.dict[str,str].version at {yaml}:4"),
])  # fmt: skip
def test_a_bad_attribute_fails_naming_the_file_and_key(tmp_path: Path, attributes: str, dg_says: str, load_says: str):
    root = make_project(tmp_path / "proj", attributes)
    defs_yaml = root / "nixproj" / "defs" / "packages" / "defs.yaml"
    proc = dg(root, "check", "defs", env=project_env(root))
    assert proc.returncode != 0
    assert dg_says.format(yaml=defs_yaml) in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Loading the code location (what `dg dev`, `dg launch` and `dagster ... -m` do) names file, line and key.
    load = subprocess.run(
        [sys.executable, "-c", "import nixproj.definitions"], cwd=root, env=project_env(root),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert load.returncode != 0
    assert load_says.format(yaml=defs_yaml) in load.stderr, load.stderr[-3000:]


def test_nix_args_and_options_reach_nix_as_the_yaml_wrote_them(monkeypatch):
    # Dagster's native rendering would make '1.10' 1.1 and '007' 7; Nix gets --argstr text.
    monkeypatch.setenv("TEST_NIX_VERSION", "2.50")
    component = NixPackageSetComponent.resolve_from_yaml(textwrap.dedent("""\
        nix_args: {version: '1.10', build: '007', exact: "{{ env.TEST_NIX_VERSION }}", plain: hello, empty: ''}
        extra_options: {timeout: '3600', float: '1.0'}
        """))
    assert component.nix_args == {"version": "1.10", "build": "007", "exact": "2.50", "plain": "hello", "empty": ""}
    assert component.extra_options == {"timeout": "3600", "float": "1.0"}
    assert component.nix_resource().nix_args == component.nix_args


def test_a_set_without_a_dagster_source_gets_no_update_job_unless_asked(tmp_path: Path):
    root = make_project(tmp_path / "proj", "package_set: packages-nix\n")
    data = listed(dg(root, "list", "defs", "--json", env=project_env(root)))
    assert sorted(a["asset_key"] for a in data["assets"]) == TINY_KEYS
    assert [s["name"] for s in data["sensors"]] == ["nix_packages_automation"]
    assert data["jobs"] == []
    # Asked for explicitly: refused, naming the file, line and key, and what the set lacks.
    defs_yaml = root / "nixproj" / "defs" / "packages" / "defs.yaml"
    defs_yaml.write_text(defs_yaml.read_text() + "  include_update: true\n")
    proc = dg(root, "list", "defs", "--json", env=project_env(root))
    assert proc.returncode != 0
    assert (
        f"{defs_yaml}:4: attributes.include_update is true, but the package set {root / 'packages-nix'} has no "
        "`dagster-src` attribute (the Dagster source the update moves; it has: base, mid, solo, top-level) and "
        f"no {root / 'packages-nix' / 'pins.json'} (the pins the update edits)"
    ) in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]


STRICT_LOAD = """\
import importlib, sys, warnings
from dagster._utils.warnings import BetaWarning, PreviewWarning
warnings.simplefilter("error", BetaWarning)
warnings.simplefilter("error", PreviewWarning)
repository = importlib.import_module(sys.argv[1]).defs.get_repository_def()
print(sorted(s.name for s in repository.sensor_defs), sorted(j.name for j in repository.get_all_jobs()))
"""


@pytest.mark.parametrize("where", ["repo", "project"])
def test_the_definitions_load_with_dagster_s_beta_warnings_as_errors(tmp_path: Path, where: str):
    """No warning of ours on every command: the update job carries its resource, so Dagster never copies its
    sensors with the beta `owners` parameter (it did, five times a load)."""
    if where == "repo":
        cwd, module, env = REPO, "dagster_nix_builder.definitions", dict(os.environ)
    else:
        cwd = make_project(tmp_path / "proj", "package_set: packages-nix\n")
        module, env = "nixproj.definitions", project_env(cwd)
    proc = subprocess.run([sys.executable, "-c", STRICT_LOAD, module], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    if where == "repo":
        assert "'dagster_release_sensor', 'dagster_upstream_commit_sensor'" in proc.stdout
        assert "'update_dagster_src'" in proc.stdout


def test_the_scaffolded_defs_yaml_shows_the_component_s_own_defaults():
    """Uncommented, every default line of what `dg scaffold defs` writes (tests/test_own_project.py runs it)
    changes nothing: the comments are the component's defaults (nix_args: an example)."""
    text = render_defs_yaml("dagster_nix_builder.NixPackageSetComponent", "packages-nix")
    shown = [line.replace("  # ", "  ", 1).split("  #")[0] for line in text.splitlines()
             if line.startswith("  # ") and ": " in line and "nix_args" not in line and "env.NAME" not in line]
    assert len(shown) >= 6
    attributes = textwrap.dedent("\n".join(shown))
    component = NixPackageSetComponent.resolve_from_yaml(attributes)
    default = NixPackageSetComponent()
    for key in yaml.safe_load(attributes):
        assert getattr(component, key) == getattr(default, key), key
    assert NixPackageSetComponent.resolve_from_yaml(text.split("attributes:\n")[1]).package_set == "packages-nix"


def test_a_missing_package_set_fails_naming_it(tmp_path: Path):
    root = make_project(tmp_path / "proj", "package_set: nowhere\n")
    proc = dg(root, "check", "defs", env=project_env(root))
    assert proc.returncode != 0
    assert f"No default.nix in Nix package-set directory '{root / 'nowhere'}'" in proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId status assetSelection { path } } } } }"


def test_dg_launch_and_dg_dev_share_the_project_instance_through_env(tmp_path: Path, salt: str):
    """No DAGSTER_HOME in the environment: the project's .env (as scripts/setup.sh writes it) names the
    instance, and a run launched by `dg launch` is what `dg dev` then shows."""
    root = make_project(tmp_path / "proj", f"""\
        package_set: packages-nix
        out_link_dir: results
        nix_args: {{salt: {salt}}}
        include_update: false
        """)
    (root / ".env").write_text(f"DAGSTER_HOME=${{DAGSTER_HOME:-{root}/.dagster_home}}\n")
    (root / ".dagster_home").mkdir()
    env = project_env(root)
    del env["DAGSTER_HOME"]
    launch = dg(root, "launch", "--assets", "top-level", env=env)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    assert "temporary" not in launch.stdout + launch.stderr
    assert (root / "results" / "result-top-level").is_symlink()
    assert list((root / ".dagster_home").glob("history/runs*")), "the run is in <project>/.dagster_home"

    port = _free_port()
    log = (tmp_path / "dg-dev.log").open("wb")
    server = subprocess.Popen(
        [DG, "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=root, env=env, stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        runs = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                runs = _graphql(f"http://127.0.0.1:{port}", RUNS_QUERY)["runsOrError"]["results"]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError):
                time.sleep(0.5)
        assert runs is not None, (tmp_path / "dg-dev.log").read_text()[-4000:]
        assert [(r["status"], r["assetSelection"]) for r in runs] == [("SUCCESS", [{"path": ["top-level"]}])]
    finally:
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(server.pid, signal.SIGKILL)
        raise AssertionError("dg dev left processes behind")


@pytest.mark.slow
def test_dg_launch_builds_the_whole_set_of_the_repo_with_every_check(tmp_path: Path):
    """The README's command from the repository root (its instance redirected to tmp_path by an exported
    DAGSTER_HOME, which the project's .env leaves alone)."""
    graph = load_package_graph(NixResource(nix_dir=str(REPO / "nix")))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = dg(REPO, "launch", "--assets", "*", env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    code = (
        "import json, sys\n"
        "from dagster import AssetKey, DagsterEventType, DagsterInstance\n"
        "i = DagsterInstance.get()\n"
        "runs = i.get_run_records()\n"
        "print(json.dumps({k: i.get_latest_materialization_event(AssetKey(k)) is not None for k in sys.argv[1:]}))\n"
        "print(json.dumps([r.dagster_run.status.value for r in runs]))\n"
        "records = i.get_records_for_run(runs[0].dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)\n"
        "evals = [r.event_log_entry.dagster_event.event_specific_data for r in records.records]\n"
        "print(json.dumps(sorted([e.asset_key.to_user_string(), e.check_name, e.passed] for e in evals)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *sorted(graph)], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    assert json.loads(out[0]) == dict.fromkeys(graph, True)
    assert json.loads(out[1]) == ["SUCCESS"]
    expected = sorted([attr, test, True] for attr, package in graph.packages.items() for test in package.tests)
    assert json.loads(out[2]) == expected
    for attr in graph:
        assert (REPO / ".nix-results" / f"result-{attr}").is_symlink()
