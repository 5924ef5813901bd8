"""Self-hosting: this project is a package of its own set (``nix/packages/dagster-nix-builder.nix``, from the
checkout's source), and this code location runs on the Dagster that Nix built — the Nix-built ``dagster`` CLI
with the self package's closure alone on ``sys.path`` loads it and materializes a package. So every upstream
bump is proven to run the very pipeline that built it.

The process: the interpreter of the closure, ``-B -I -S`` (no bytecode, no environment, no site-packages of
its own), each site-packages of the self package's closure (``nix-support/propagated-build-inputs``, as
``nix/package-tests.nix`` walks it) added with ``site.addsitedir`` and the same entry point the Nix-built
``bin/dagster`` runs (``dagster._cli.main``). It runs in a temporary copy of the project (its own
``DAGSTER_HOME``, out-links and component state) with ``-d`` an empty folder, the folder Dagster puts on
``sys.path``: the copy's ``dagster_nix_builder/`` is the self package's source, never its code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dagster_nix_builder.components.package_set import NixPackageSetComponent
from dagster_nix_builder.nix.file_digests import local_sources
from dagster_nix_builder.nix.settings import bootstrap_nix_config

REPO = Path(__file__).resolve().parents[1]
SELF = "dagster-nix-builder"
SELECTED = "dagster-pipes"
STORE = "/nix/store/"

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed")

# Run in the Nix-built environment: argv[1] the site-packages of the self package's closure (JSON, from
# `nix-store -qR`), argv[2] a JSON report written at exit (where every loaded module came from), then
# `dagster ...` (argv[3:]) or, after `--python`, a script to exec.
LAUNCHER = r"""
import atexit, json, os, site, sys

sites, report = json.loads(sys.argv[1]), sys.argv[2]
for directory in sites:
    site.addsitedir(directory)
# As the Nix-built bin/dagster does: its child processes (if any) see the same closure, and write no bytecode.
os.environ.update(PYTHONPATH=os.pathsep.join(sites), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")


def where():
    files = {name: os.path.realpath(m.__file__) for name, m in list(sys.modules.items())
             if getattr(m, "__file__", None)}
    with open(report, "w") as f:
        json.dump({"executable": sys.executable, "sites": sites, "modules": files}, f)


atexit.register(where)
if sys.argv[3] == "--python":
    sys.argv = [sys.argv[4], *sys.argv[5:]]
    exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"))
else:
    sys.argv = ["dagster", *sys.argv[3:]]
    from dagster._cli import main
    main()
"""

READ_INSTANCE = """
import json
from dagster import AssetKey, DagsterInstance
instance = DagsterInstance.get()
runs = instance.get_runs()
event = instance.get_latest_materialization_event(AssetKey("dagster-pipes"))
print(json.dumps({"runs": [[r.run_id, r.status.value] for r in runs],
                  "event_run": event.run_id if event else None}))
"""

LOAD_DEFS = """
import json
from dagster import AssetKey
from dagster_nix_builder.definitions import defs
spec = next(s for s in defs.resolve_all_asset_specs() if s.key == AssetKey("dagster-nix-builder"))
print(json.dumps({"code_version": spec.code_version}))
"""


def nix_env(nix_dir: Path) -> dict[str, str]:
    """The product's per-call settings (bootstrap: extra-sandbox-paths where the sandbox is on)."""
    return {**os.environ, "NIX_CONFIG": bootstrap_nix_config(nix_dir=nix_dir), "NIX_PATH": ""}


def copy_project(dest: Path) -> Path:
    """What the package set and the self package read: pyproject.toml, README.md, nix/, dagster_nix_builder/."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", ".local_defs_state", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("nix", "dagster_nix_builder"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


def instantiate(nix_dir: Path, attr: str) -> str:
    proc = subprocess.run(["nix-instantiate", str(nix_dir), "-A", attr], capture_output=True, text=True,
                          env=nix_env(nix_dir), check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_an_edit_of_the_self_package_source_refreshes_the_state(tmp_path: Path):
    """The self package's derivation depends on files outside nix/: the component's fingerprint covers
    them (its `passthru.localSources`), and nothing else (caches, the component's own state)."""
    project = copy_project(tmp_path / "project")
    component = NixPackageSetComponent(package_set="nix", include_update=False)
    component._project_root = project
    state_path = tmp_path / "state"
    component.write_state_to_path(state_path)
    state = component.read_state(state_path)
    assert state is not None
    sources = local_sources(state["graph"])
    assert [s["root"] for s in sources] == [str(project)]
    assert "dagster_nix_builder" in sources[0]["include"]
    drv = state["graph"]["packages"][SELF]["drvPath"]
    assert drv == instantiate(project / "nix", SELF)
    assert state["fingerprint"] == component.fingerprint(sources)

    # What the Nix filter leaves out does not make the state stale: bytecode, the component's state folder.
    (project / "dagster_nix_builder" / "__pycache__").mkdir()
    (project / "dagster_nix_builder" / "__pycache__" / "graph.cpython-311.pyc").write_bytes(b"\0")
    (project / "dagster_nix_builder" / "defs" / ".local_defs_state" / "k").mkdir(parents=True)
    (project / "dagster_nix_builder" / "defs" / ".local_defs_state" / "k" / "state").write_text("{}")
    (project / "tests").mkdir()
    (project / "tests" / "test_new.py").write_text("")
    assert component.fingerprint(sources) == state["fingerprint"]
    assert instantiate(project / "nix", SELF) == drv

    # A file the self package takes: stale, and the refreshed state has the new derivation.
    assets = project / "dagster_nix_builder" / "adapters" / "assets.py"
    assets.write_text(assets.read_text() + "# edited\n")
    assert component.fingerprint(sources) != state["fingerprint"]
    component._known_sources = sources
    component.write_state_to_path(state_path)
    fresh = component.read_state(state_path)
    assert fresh is not None
    new_drv = fresh["graph"]["packages"][SELF]["drvPath"]
    assert new_drv != drv and new_drv == instantiate(project / "nix", SELF)
    assert fresh["fingerprint"] == component.fingerprint(sources)


def run_nix_built(python: str, self_out: str, report: Path, args: list[str], *, cwd: Path, home: Path,
                  launcher: Path, timeout: float = 1200) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {
        "PATH": os.pathsep.join(dict.fromkeys([str(Path(shutil.which("nix") or "/usr/bin/nix").parent), "/usr/bin",
                                               "/bin"])),
        "HOME": str(home),
        "DAGSTER_HOME": str(home),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }  # fmt: skip
    closure = subprocess.run(["nix-store", "-qR", self_out], capture_output=True, text=True, check=True).stdout.split()
    sites = sorted(str(d) for path in closure for d in Path(path).glob("lib/python3*/site-packages") if d.is_dir())
    return subprocess.run([python, "-B", "-I", "-S", str(launcher), json.dumps(sites), str(report), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def assert_from_the_store(report: Path, *names: str) -> dict[str, str]:
    modules = json.loads(report.read_text())["modules"]
    for name in names:
        assert name in modules, f"{name} was not imported"
        assert modules[name].startswith(STORE), f"{name} came from {modules[name]}, not the Nix store"
    ours = {n: f for n, f in modules.items() if n.split(".")[0] in {"dagster", "dagster_nix_builder", "dagster_shared"}}
    outside = {n: f for n, f in ours.items() if not f.startswith(STORE)}
    assert not outside, f"imported from outside the store: {outside}"
    assert not [f for f in modules.values() if str(REPO / ".venv") in f], "something came from the .venv"
    return modules


@pytest.mark.slow
def test_this_code_location_runs_on_the_nix_built_dagster(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    nix_dir = project / "nix"
    started = time.monotonic()
    build = subprocess.run(["nix-build", str(nix_dir), "-A", SELF, "-A", f"{SELF}.passthru.tests.imports",
                            "--out-link", str(tmp_path / "result")],
                           capture_output=True, text=True, env=nix_env(nix_dir), check=False)  # fmt: skip
    build_seconds = time.monotonic() - started
    assert build.returncode == 0, build.stderr[-4000:]
    self_out = build.stdout.split()[0]
    assert self_out.startswith(STORE) and self_out.endswith(f"-{SELF}-0.1.0")
    # The same package as the checkout's (the source is named and filtered: the copy's location is no input).
    assert instantiate(nix_dir, SELF) == instantiate(REPO / "nix", SELF)
    closure = subprocess.run(["nix-store", "-qR", self_out], capture_output=True, text=True, check=True).stdout.split()
    python = next(f"{p}/bin/python3" for p in closure if os.access(f"{p}/bin/python3", os.X_OK))
    print(f"self package {self_out}: built in {build_seconds:.1f} s, closure {len(closure)} paths, {python}")

    home, empty = tmp_path / "home", tmp_path / "empty"
    home.mkdir()
    empty.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)

    # 1. The Nix-built dagster CLI loads this code location and materializes one package.
    started = time.monotonic()
    report = tmp_path / "materialize.json"
    proc = run_nix_built(python, self_out, report, ["asset", "materialize", "-m", "dagster_nix_builder.definitions",
                                                    "-d", str(empty), "--select", SELECTED],
                         cwd=project, home=home, launcher=launcher)  # fmt: skip
    run_seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "RUN_SUCCESS" in output and "ASSET_MATERIALIZATION" in output, output[-4000:]
    modules = assert_from_the_store(report, "dagster", "dagster_nix_builder", "dagster_nix_builder.definitions",
                                    "dagster_nix_builder.components.package_set")  # fmt: skip
    assert modules["dagster_nix_builder"].startswith(self_out + "/")
    print(f"materialized {SELECTED} with the Nix-built dagster in {run_seconds:.1f} s")

    # The run and its materialization are in the instance (read back by the Nix-built Dagster too).
    script = tmp_path / "read.py"
    script.write_text(READ_INSTANCE)
    read = run_nix_built(python, self_out, tmp_path / "read.json", ["--python", str(script)], cwd=home, home=home,
                         launcher=launcher)  # fmt: skip
    assert read.returncode == 0, read.stderr[-3000:]
    instance = json.loads(read.stdout.strip().splitlines()[-1])
    assert [status for _, status in instance["runs"]] == ["SUCCESS"]
    assert instance["event_run"] == instance["runs"][0][0]

    # The out-link is a valid GC root of the package's output, as the graph says.
    link = project / ".nix-results" / f"result-{SELECTED}"
    assert link.is_symlink()
    target = os.readlink(link)
    assert subprocess.run(["nix-store", "--check-validity", target], check=False).returncode == 0
    assert target == subprocess.run(["nix-build", str(nix_dir), "-A", SELECTED, "--no-out-link"], capture_output=True,
                                    text=True, env=nix_env(nix_dir), check=True).stdout.strip()  # fmt: skip

    # The component's state is in the copy's defs folder, not in the store (which holds the code).
    states = list((project / "dagster_nix_builder" / "defs" / ".local_defs_state").glob("*/state"))
    assert len(states) == 1
    assert not list(Path(self_out).rglob(".local_defs_state"))

    # 2. An edit of the self package's source: the next load re-evaluates, and the asset's code version is
    # the new derivation's (the state follows files outside nix/).
    before = json.loads(states[0].read_text())["graph"]["packages"][SELF]["drvPath"]
    assets = project / "dagster_nix_builder" / "adapters" / "assets.py"
    assets.write_text(assets.read_text() + "# edited\n")
    expected = instantiate(nix_dir, SELF)
    assert expected != before
    script = tmp_path / "load.py"
    script.write_text(LOAD_DEFS)
    load = run_nix_built(python, self_out, tmp_path / "load.json", ["--python", str(script)], cwd=project, home=home,
                         launcher=launcher)  # fmt: skip
    assert load.returncode == 0, load.stderr[-3000:]
    assert_from_the_store(tmp_path / "load.json", "dagster_nix_builder.definitions")
    assert json.loads(states[0].read_text())["graph"]["packages"][SELF]["drvPath"] == expected
    assert json.loads(load.stdout.strip().splitlines()[-1])["code_version"] == Path(expected).name.split("-")[0]

    # 3. Nothing was written into a store path of the closure (no bytecode, no state): Nix re-hashes each.
    verify = subprocess.run(["nix-store", "--verify-path", *closure], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr[-3000:]
