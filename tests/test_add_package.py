"""Adding a package is one file and the documented commands; the release update job moves it along with the
rest. Real Nix (the real `nix/` machinery: default.nix, the bootstrap scope, dagster-src.nix's declarations
and version rule), real git, a real pypiserver serving fabricated tiny sdists, real `dg` and Dagster.

The set (tests/fixtures/release_set): `dnb-tiny-core` (versionScheme "dagster"); the user adds
`dnb-tiny-lib` (versionScheme "library", 0.29.27 at Dagster 1.13.27), one file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, build_sensor_context
from local_index import pypiserver
from test_component import write_dg_project
from upstream_repo import NIX_CONFIG, git, world_readable_tmpdir

from dagster_nix_builder.upstream.pins import read_pins
from dagster_nix_builder.upstream.sensors import build_release_sensor
from dagster_nix_builder.upstream.update.workflow import UpdateError, UpdateSettings, UpdateStep, update

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="needs the nix CLI")

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "release_set"
DG = str(Path(sys.executable).parent / "dg")
LIB = "nix/packages/dnb-tiny-lib.nix"


def tiny_sdist(folder: Path, dist: str, version: str, deps: tuple[str, ...] = (), script: bool = False) -> None:
    """A real sdist (hatchling backend) of a one-module distribution, written deterministically."""
    module = dist.replace("-", "_")
    base = f"{module}-{version}"
    scripts = f'\n[project.scripts]\n{dist} = "{module}:main"\n' if script else ""
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {d}\n" for d in deps),
        "pyproject.toml": textwrap.dedent(f"""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{dist}"
            version = "{version}"
            dependencies = {json.dumps(list(deps))}
            """) + scripts,
        f"{module}/__init__.py": textwrap.dedent(f"""\
            import sys
            __version__ = "{version}"


            def main():
                if "--version" in sys.argv:
                    print("{dist}, version " + __version__)
            """),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    (folder / f"{base}.tar.gz").write_bytes(buffer.getvalue())


@dataclass
class TinyIndex:
    simple: str
    folder: Path


@pytest.fixture
def tiny_index() -> Iterator[TinyIndex]:
    """A pypiserver on loopback (no fallback to another index) with dnb-tiny-core 1.13.27 and 1.13.28 and
    dnb-tiny-lib 0.29.27 and 0.29.28 as sdists."""
    root = world_readable_tmpdir("dnb-tiny-index-")
    folder = root / "packages"
    folder.mkdir()
    for core, lib in (("1.13.27", "0.29.27"), ("1.13.28", "0.29.28")):
        tiny_sdist(folder, "dnb-tiny-core", core, script=True)
        tiny_sdist(folder, "dnb-tiny-lib", lib, deps=("dnb-tiny-core",))
    try:
        with pypiserver(folder, ["-a", ".", "-P", ".", "--disable-fallback"], root / "pypiserver.log") as url:
            yield TinyIndex(url + "simple/", folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pip_env(index: TinyIndex) -> dict[str, str]:
    """The user's pip configuration, as environment: this index only (Nix's fetches read it too)."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index.simple, "PIP_NO_CACHE_DIR": "1"}


def release_project(root: Path, version: str = "1.13.27") -> Path:
    """A git checkout that is a dg project: the real nix/ machinery with the fixture's packages (no wheel lock
    script: the lock step is not what this is about), pins at `version` without hashes, committed."""
    project = root / "project"
    nix = project / "nix"
    shutil.copytree(REPO / "nix", nix, ignore=shutil.ignore_patterns("__pycache__", "packages", "lock.py"))
    (nix / "packages").mkdir()
    shutil.copy(REPO / "nix" / "packages" / "dagster-src.nix", nix / "packages")
    for file in (FIXTURE / "packages").glob("*.nix"):
        shutil.copy(file, nix / "packages")
    pins = json.loads((REPO / "nix" / "pins.json").read_text())
    pins.update(source="release", release={"version": version, "hashes": {}})
    (nix / "pins.json").write_text(json.dumps(pins, indent=2) + "\n")
    write_dg_project(project, "tinyproj", "package_set: nix\nscope: bootstrap\nautomation: false\n"
                     "include_update: true\nnix_config: |\n" + textwrap.indent(NIX_CONFIG, "  ") + "\n")
    (project / ".gitignore").write_text(".venv\n.nix-results/\nhome/\n__pycache__/\n.local_defs_state/\n")
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)
    git(root, "init", "-q", "-b", "main", str(project))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a tiny package set")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return project


def dg(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DG, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"dg {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def launch_update(project: Path, version: str, env: dict[str, str]) -> None:
    """The documented command (README, "Adding a package")."""
    config = {"ops": {"update_pins": {"config": {"version": version}}}}
    dg(project, "launch", "--job", "update_dagster_src", "--config-json", json.dumps(config), env=env)


def nix_build(project: Path, attr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix-build", str(project / "nix"), "-A", attr, "--argstr", "scope", "bootstrap", "--no-out-link"],
        env={**os.environ, "NIX_CONFIG": NIX_CONFIG}, capture_output=True, text=True, check=False,
    )  # fmt: skip


def prefetch_build_tools() -> None:
    """The pinned wheelhouse and the build backends, through the user's own pip configuration, before pip is
    pointed at the tiny index (which serves the tiny sdists only): a fresh machine's store has none of them."""
    bootstrap = REPO / "nix" / "bootstrap"
    tools = f"with (import {bootstrap} {{ }}).python3Packages; [ hatchling setuptools packaging ]"
    proc = subprocess.run(["nix-build", "--no-out-link", "-E", tools], env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_adding_a_package_is_one_file_and_the_release_update_moves_it_along(
    tiny_index: TinyIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefetch_build_tools()
    for key, value in pip_env(tiny_index).items():
        monkeypatch.setenv(key, value)
    root = world_readable_tmpdir("dnb-add-package-")
    try:
        project = release_project(root)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DG_"))}
        env.update(PYTHONPATH=str(project), DAGSTER_HOME=str(project / "home"))
        (project / "home").mkdir()
        (project / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        settings = UpdateSettings(repo_dir=project, nix_config=NIX_CONFIG)

        # The set as it is: dnb-tiny-core pinned by the update job.
        first = update(settings, version="1.13.27")
        assert set(first.hashes) == {"dnb-tiny-core"}

        # 1. One new file, committed as a user would.
        shutil.copy(FIXTURE / "added" / "dnb-tiny-lib.nix", project / LIB)
        git(project, "add", LIB)
        git(project, "commit", "-q", "-m", "add dnb-tiny-lib")

        # 2. No hash yet: building says which file declared what, and the command that pins it.
        failed = nix_build(project, "dnb-tiny-lib")
        assert failed.returncode != 0
        assert "release.hashes has no hash for dnb-tiny-lib (declared in nix/packages/dnb-tiny-lib.nix)" in (
            failed.stderr
        )
        assert ("dg launch --job update_dagster_src --config-json '{\"ops\": {\"update_pins\": {\"config\": "
                "{\"version\": \"1.13.27\"}}}}'") in failed.stderr  # fmt: skip

        # 3. That command pins its hash (and keeps dnb-tiny-core's), builds, checks and commits.
        launch_update(project, "1.13.27", env)
        pins = read_pins(project / "nix" / "pins.json")
        assert set(pins.release.hashes) == {"dnb-tiny-core", "dnb-tiny-lib"}
        assert pins.release.hashes["dnb-tiny-core"] == first.hashes["dnb-tiny-core"]
        assert git(project, "log", "-1", "--format=%s") == "dagster-src: 1.13.27 -> 1.13.27"
        assert git(project, "show", "--name-only", "--format=", "HEAD").split() == ["nix/pins.json"]

        # 4. An asset downstream of dnb-tiny-core, with its check; it builds and the check passes.
        listed = json.loads(dg(project, "list", "defs", "--json", env=env).stdout)
        assets = {a["asset_key"]: a for a in listed["assets"]}
        assert sorted(assets["dnb-tiny-lib"]["dependency_keys"]) == ["dagster-src", "dnb-tiny-core"]
        assert assets["dnb-tiny-core"]["dependency_keys"] == ["dagster-src"]
        assert ("dnb-tiny-lib", "imports") in {(c["asset_key"], c["name"]) for c in listed["asset_checks"]}
        dg(project, "launch", "--assets", 'key:"dnb-tiny-lib"', env=env)
        with DagsterInstance.from_config(str(project / "home")) as instance:
            assert instance.get_latest_materialization_event(AssetKey("dnb-tiny-lib")) is not None
            (check,) = instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(AssetKey("dnb-tiny-lib"), "imports"), limit=1
            )
            assert check.status.value == "SUCCEEDED" and check.event.asset_check_evaluation.passed

        # 5. Dagster 1.13.28 is out (dnb-tiny-lib 0.29.28 with it): the sensor requests it, the job moves both.
        sensor = build_release_sensor(repo_dir=project, nix_config=NIX_CONFIG)
        with DagsterInstance.ephemeral() as instance:
            data = sensor.evaluate_tick(build_sensor_context(cursor=None, instance=instance))
        assert [r.run_key for r in data.run_requests] == ["release-1.13.28"]
        before = dict(pins.release.hashes)
        launch_update(project, "1.13.28", env)
        pins = read_pins(project / "nix" / "pins.json")
        assert pins.release.version == "1.13.28"
        assert set(pins.release.hashes) == {"dnb-tiny-core", "dnb-tiny-lib"}
        assert all(pins.release.hashes[d] != before[d] for d in before), "each sdist of 1.13.28 has its own hash"
        assert git(project, "log", "-1", "--format=%s") == "dagster-src: 1.13.27 -> 1.13.28"
        assert git(project, "status", "--porcelain") == ""
        built = nix_build(project, "dnb-tiny-lib")
        assert built.returncode == 0 and built.stdout.strip().endswith("dnb-tiny-lib-0.29.28"), built.stderr[-2000:]

        # 6. Bad input names the file and the next step (nothing is written: the resolve step fails first).
        lib = (project / LIB).read_text()
        (project / LIB).write_text(lib.replace('versionScheme = "library";', ""))
        with pytest.raises(UpdateError) as info:
            update(settings, version="1.13.28")
        assert info.value.step is UpdateStep.RESOLVE
        assert info.value.messages == [
            'nix/packages/dnb-tiny-lib.nix: dnb-tiny-lib has no 1.13.28; it has 0.29.28, 0.29.27: '
            'is its versionScheme "library"?'
        ]
        (project / LIB).write_text(lib.replace('distribution = "dnb-tiny-lib";', 'distribution = "dnb-tiny-lbi";'))
        with pytest.raises(UpdateError) as info:
            update(settings, version="1.13.28")
        assert info.value.messages == [
            "nix/packages/dnb-tiny-lib.nix: the package index has no distribution 'dnb-tiny-lbi' (no sdist at any "
            "version); the closest distribution is 'dnb-tiny-lib' (the index has 0.29.28, 0.29.27): fix the file's "
            "distribution"
        ]
        git(project, "checkout", "--", LIB)
        assert git(project, "status", "--porcelain") == ""
    finally:
        shutil.rmtree(root, ignore_errors=True)
