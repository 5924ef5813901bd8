"""The package set is data: each package file declares its monorepo path, distribution and version scheme
(`dagster-src.package`), and the source tree, the pins check, the wheel lock's requirements and the errors
follow from those declarations (real Nix, bootstrap scope)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from upstream_repo import Upstream, world_readable_tmpdir

from dagster_nix_builder.nix import nixpkgs_versions
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.graph import load_package_graph
from dagster_nix_builder.nix.settings import bootstrap_nix_config
from dagster_nix_builder.upstream.pins import FAKE_HASH

REPO = Path(__file__).resolve().parents[1]
NIX_DIR = REPO / "nix"
NIX_ENV = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed")


def requirements(nix_dir: Path, *args: str) -> dict:
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(nix_dir / "bootstrap" / "requirements.nix"),
         "--argstr", "hostPython", "/usr/bin/python3", *args],
        capture_output=True, text=True, env=NIX_ENV, check=False)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def declarations(nix_dir: Path) -> dict:
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(nix_dir), "-A", "dagster-src.declarations",
         "--argstr", "scope", "bootstrap"], capture_output=True, text=True, env=NIX_ENV, check=False)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def nix_build(nix_dir: Path, attr: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nix-build", str(nix_dir), "-A", attr, "--argstr", "scope", "bootstrap", "--no-out-link"],
        capture_output=True, text=True, env={**NIX_ENV, "NIX_CONFIG": bootstrap_nix_config(nix_dir=nix_dir)},
        check=False)


@pytest.fixture
def nix_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "nix"
    shutil.copytree(NIX_DIR, copy)
    return copy


def write_package(nix_dir: Path, name: str, path: str, distribution: str, scheme: str = "library") -> None:
    (nix_dir / "packages" / f"{name}.nix").write_text(f"""\
{{ python3Packages, dagster-src, dagster }}:
python3Packages.buildPythonPackage rec {{
  pname = "{name}";
  inherit (src) version;
  pyproject = true;
  src = dagster-src.package {{
    path = "{path}";
    distribution = "{distribution}";
    versionScheme = "{scheme}";
  }};
  build-system = [ python3Packages.hatchling ];
  dependencies = [ dagster ];
}}
""")


def test_each_monorepo_package_file_declares_itself_once():
    found = declarations(NIX_DIR)
    files = {p.stem for p in (NIX_DIR / "packages").glob("*.nix")}
    # Every package but the tree itself (and packages not from the monorepo) declares its source.
    assert set(found) <= files
    assert {"dagster", "dagster-postgres", "dagster-dg-cli", "dagster-rest-resources"} <= set(found)
    postgres = found["dagster-postgres"]
    assert postgres == {
        "distribution": "dagster-postgres", "file": "nix/packages/dagster-postgres.nix",
        "path": "python_modules/libraries/dagster-postgres", "version": "0.29.27", "versionScheme": "library",
        "problem": None,
    }
    assert found["dagster-dg-cli"]["version"] == "1.13.27"
    # The path lives in its file and nowhere else in nix/.
    mentions = [p.name for p in NIX_DIR.rglob("*.nix") if "python_modules/libraries/dagster-postgres" in p.read_text()]
    assert mentions == ["dagster-postgres.nix"]


def test_versions_follow_the_scheme_for_another_release():
    lock_input = requirements(NIX_DIR, "--argstr", "dagsterVersion", "1.14.3")
    assert lock_input["version"] == "1.14.3"
    assert "dagster-postgres==0.30.3" in lock_input["requirements"]
    assert "dagster-dg-cli==1.14.3" in lock_input["requirements"]
    assert set(lock_input["own"]) == {d["distribution"] for d in declarations(NIX_DIR).values()}


def test_a_new_file_reaches_the_lock_requirements_and_the_pins_check(nix_copy: Path):
    write_package(nix_copy, "dagster-k8s", "python_modules/libraries/dagster-k8s", "dagster-k8s")
    assert "dagster-k8s==0.29.27" in requirements(nix_copy)["requirements"]
    # No hash pinned yet: dagster-src's build names the file and the update job, nothing else changes.
    proc = nix_build(nix_copy, "dagster-src")
    assert proc.returncode != 0
    assert "release.hashes has no hash for dagster-k8s (declared in nix/packages/dagster-k8s.nix)" in proc.stderr
    assert "update_dagster_src" in proc.stderr


def _git_upstream(root: Path) -> tuple[str, str]:
    """A monorepo-shaped local upstream: dagster-postgres under python_modules/libraries/. Returns url and rev."""
    upstream = Upstream(root)
    rev = upstream.push({
        "python_modules/libraries/dagster-postgres/pyproject.toml": '[project]\nname = "dagster-postgres"\n',
        "python_modules/dagster/pyproject.toml": '[project]\nname = "dagster"\n',
    }, "monorepo")
    return upstream.url, rev


def _use_git(nix_dir: Path, url: str, rev: str) -> None:
    pins = json.loads((nix_dir / "pins.json").read_text())
    pins["source"] = "git"
    pins["git"].update(url=url, rev=rev, hash=FAKE_HASH, version="1!0+dev")
    (nix_dir / "pins.json").write_text(json.dumps(pins, indent=2) + "\n")
    got = re.search(r"got:\s+(sha256-\S+)", nix_build(nix_dir, "dagster-src").stderr)
    assert got
    pins["git"]["hash"] = got.group(1)
    (nix_dir / "pins.json").write_text(json.dumps(pins, indent=2) + "\n")


@pytest.fixture
def git_nix_copy() -> Iterator[Path]:
    """A copy of nix/ following a small local monorepo (git mode checks paths and distributions)."""
    root = world_readable_tmpdir("dnb-package-data-")
    shutil.copytree(NIX_DIR, root / "nix")
    url, rev = _git_upstream(root)
    _use_git(root / "nix", url, rev)
    yield root / "nix"
    shutil.rmtree(root, ignore_errors=True)


def _edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new))


def test_from_git_a_declared_package_source_is_cut_out(git_nix_copy: Path):
    proc = nix_build(git_nix_copy, "dagster-postgres.src")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip(), "pyproject.toml").is_file()


def test_a_wrong_path_names_the_file_and_the_closest_directory(git_nix_copy: Path):
    _edit(git_nix_copy / "packages" / "dagster-postgres.nix",
          '"python_modules/libraries/dagster-postgres"', '"python_modules/dagster-postgres"')
    proc = nix_build(git_nix_copy, "dagster-postgres.src")
    assert proc.returncode != 0
    assert ("nix/packages/dagster-postgres.nix: dagster-src has no directory 'python_modules/dagster-postgres'"
            in proc.stderr)
    assert "closest existing directory is 'python_modules/libraries/dagster-postgres'" in proc.stderr


def test_a_wrong_distribution_names_the_file_and_what_the_directory_holds(git_nix_copy: Path):
    _edit(git_nix_copy / "packages" / "dagster-postgres.nix",
          'distribution = "dagster-postgres"', 'distribution = "dagster-postgresql"')
    proc = nix_build(git_nix_copy, "dagster-postgres.src")
    assert proc.returncode != 0
    assert ("nix/packages/dagster-postgres.nix declares distribution 'dagster-postgresql', but "
            "python_modules/libraries/dagster-postgres/pyproject.toml is 'dagster-postgres'") in proc.stderr


@pytest.mark.parametrize(("old", "new", "message"), [
    ('versionScheme = "library"', 'versionScheme = "libary"',
     'nix/packages/dagster-postgres.nix: versionScheme must be one of "dagster", "library", not "libary"'),
    ('path = "python_modules/libraries/dagster-postgres"', 'path = "../dagster-postgres"',
     "nix/packages/dagster-postgres.nix: path must be a relative directory of the monorepo"),
    ('distribution = "dagster-postgres"', 'distribution = "dagster postgres"',
     "nix/packages/dagster-postgres.nix: distribution must be a package-index name"),
])
def test_a_bad_declaration_fails_that_package_only_naming_its_file(nix_copy: Path, old: str, new: str, message: str):
    _edit(nix_copy / "packages" / "dagster-postgres.nix", old, new)
    # The set still evaluates and the others still build their source tree...
    graph = load_package_graph(NixCli(nix_dir=str(nix_copy), scope="bootstrap"))
    assert graph["dagster-postgres"].eval_error is None and graph["dagster"].eval_error is None
    assert nix_build(nix_copy, "dagster-src").returncode == 0
    # ...and that package's source fails with the reason; the lock generator refuses it too.
    proc = nix_build(nix_copy, "dagster-postgres.src")
    assert proc.returncode != 0
    assert message in proc.stderr
    with pytest.raises(AssertionError, match=re.escape(message)):
        requirements(nix_copy)


def test_a_dependency_absent_from_the_lock_names_the_command_that_adds_it(nix_copy: Path):
    file = nix_copy / "packages" / "dagster-postgres.nix"
    file.write_text(file.read_text().replace("    psycopg2-binary\n", "    psycopg2-binary\n    asyncpg\n"))
    # The package fails alone (its evaluation ends the whole one, so graph.py finds it by halves); the rest load.
    graph = load_package_graph(NixCli(nix_dir=str(nix_copy), scope="bootstrap"))
    # dagster-nix-builder takes dagster-postgres, so evaluating it fails the same way.
    assert [attr for attr in graph if graph[attr].eval_error] == ["dagster-nix-builder", "dagster-postgres"]
    assert not graph["dagster"].eval_error and not graph["dagster-webserver"].eval_error
    text = graph["dagster-postgres"].eval_error
    assert "undefined variable 'asyncpg'" in text
    assert "nix/packages/dagster-postgres.nix" in text
    assert "/usr/bin/python3 nix/bootstrap/lock.py" in text


def test_the_committed_lock_covers_what_the_package_set_asks_of_python3packages():
    """Every python3Packages attribute an expression names is a locked wheel of every target, and no package of
    the set is locked as a wheel (the lock was made from the set: `lock.py` with no package list of its own)."""
    facts = nixpkgs_versions.package_set_facts(NIX_DIR)
    asked = {attr for package in facts.values() for attr in package["dependencies"]} | {"hatchling", "setuptools"}
    own = set(requirements(NIX_DIR)["own"])
    lock = json.loads((NIX_DIR / "bootstrap" / "wheels.json").read_text())
    assert lock["dagster"] == requirements(NIX_DIR)["version"]
    for target, locked in lock["targets"].items():
        wheels = set(locked["wheels"])
        assert asked <= wheels, (target, sorted(asked - wheels))
        assert not own & wheels, (target, sorted(own & wheels))
