"""The Flox backend: command lines, package-name validation, the ``.flox/pkgs`` layout, and (only where the
``flox`` CLI exists) a real ``flox build`` through Dagster.

No fake flox: the layout is checked with the real Nix by evaluating ``.flox/pkgs`` the way Flox does
(each file called with callPackage in a scope extended with its sibling packages), and it must give the
very derivations the Nix backend builds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from repo_packages import PACKAGES

from dagster_nix_builder import NixResource
from dagster_nix_builder.flox.resource import (
    FLOX_NOT_INSTALLED,
    FloxLayout,
    FloxNotFoundError,
    FloxPackageError,
    FloxResource,
    flox_build_command,
    flox_init_command,
    prepare_layout,
    validate_package_names,
)
from dagster_nix_builder.nix.settings import bootstrap_nix_config

REPO_NIX = Path(__file__).resolve().parent.parent / "nix"
NIX_ENV = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}
needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix is not installed")
needs_flox = pytest.mark.skipif(shutil.which("flox") is None, reason=FLOX_NOT_INSTALLED)


# ---- names and command lines ----------------------------------------------------------------------


def test_package_names_are_validated_and_deduplicated() -> None:
    assert validate_package_names(["dagster-webserver", "dagster", "dagster-webserver"]) == [
        "dagster-webserver",
        "dagster",
    ]
    assert validate_package_names(["python3'", "_x", "a-1"]) == ["python3'", "_x", "a-1"]


@pytest.mark.parametrize(
    "bad",
    ["", "-h", "--dir=/", "1abc", "a b", "a/b", "../x", "x.nix", "a.b", ".#hello", "nixpkgs#hello", "a;rm", "é"],
)
def test_malformed_package_names_are_refused(bad: str) -> None:
    with pytest.raises(FloxPackageError, match="not a Flox package name"):
        validate_package_names([bad])


def test_unknown_and_missing_package_names_are_refused() -> None:
    with pytest.raises(FloxPackageError, match=r"Unknown package 'dagster-cloud'; known: dagster, dagster-src"):
        validate_package_names(["dagster-cloud"], known={"dagster", "dagster-src"})
    with pytest.raises(FloxPackageError, match="No package to build"):
        validate_package_names([])


def test_build_command_is_an_argument_list(tmp_path: Path) -> None:
    command = flox_build_command("/usr/bin/flox", tmp_path, ["dagster-webserver", "dagster-src"])
    assert command == ["/usr/bin/flox", "build", "-d", str(tmp_path), "dagster-webserver", "dagster-src"]
    with pytest.raises(FloxPackageError):
        flox_build_command("/usr/bin/flox", tmp_path, ["dagster", "--stability=unstable"])


def test_init_command(tmp_path: Path) -> None:
    assert flox_init_command("flox", tmp_path) == ["flox", "init", "-d", str(tmp_path), "-n", "dagster-nix-builder"]


def test_resource_without_flox_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("nix") is None:
        pytest.skip("nix is not installed")
    with pytest.raises(Exception, match=FLOX_NOT_INSTALLED) as info:
        FloxResource(nix_dir=str(REPO_NIX), flox_executable="flox-that-does-not-exist")
    # pydantic wraps the validator's error; the message and type are ours.
    assert "FloxNotFoundError" in repr(info.value) or isinstance(info.value, FloxNotFoundError)


def test_flox_resource_is_a_nix_resource_with_its_own_build() -> None:
    # The documented hook: nix_assets calls `nix.stream(context)` on the resource bound to "nix";
    # FloxResource overrides it (and `build`), nothing else.
    assert issubclass(FloxResource, NixResource)
    assert FloxResource.stream is not NixResource.stream
    assert FloxResource.build is not NixResource.build
    assert FloxResource.load_graph is NixResource.load_graph and FloxResource.cli is NixResource.cli


# ---- layout ------------------------------------------------------------------------------------------


def test_layout_of_the_repo_package_set(tmp_path: Path) -> None:
    project = tmp_path / "project"
    layout = prepare_layout(REPO_NIX, project)
    assert isinstance(layout, FloxLayout)
    assert sorted(layout.packages) == list(PACKAGES)
    for name in PACKAGES:
        copied = project / ".flox" / "pkgs" / f"{name}.nix"
        assert copied.is_file() and not copied.is_symlink()
        assert copied.read_bytes() == (REPO_NIX / "packages" / f"{name}.nix").read_bytes()
    # dagster-src.nix reads ../pins.json when called by plain callPackage (as Flox does).
    assert (project / ".flox" / "pins.json").read_bytes() == (REPO_NIX / "pins.json").read_bytes()
    assert not (project / ".flox" / "default.nix").exists()
    # Flox builds only git-tracked files.
    tracked = subprocess.run(
        ["git", "-C", str(project), "ls-files", ".flox"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tracked) == sorted([".flox/pins.json", *(f".flox/pkgs/{n}.nix" for n in PACKAGES)] + [
        f".flox/{p.name}" for p in REPO_NIX.iterdir() if p.is_file() and p.name not in {"default.nix", "pins.json"}
    ])
    assert layout.result_link("dagster") == project / "result-dagster"
    assert layout.result_link("dagster", "dist") == project / "result-dagster-dist"


def test_layout_follows_the_package_set(tmp_path: Path) -> None:
    nix_dir = tmp_path / "set"
    (nix_dir / "packages").mkdir(parents=True)
    (nix_dir / "default.nix").write_text("{ }: { }\n")
    (nix_dir / "packages" / "a.nix").write_text("{ }: 1\n")
    (nix_dir / "packages" / "b.nix").write_text("{ a }: a\n")
    project = tmp_path / "project"
    assert prepare_layout(nix_dir, project).packages == ("a", "b")
    (nix_dir / "packages" / "b.nix").unlink()
    (nix_dir / "packages" / "c.nix").write_text("{ a }: a + 1\n")
    assert prepare_layout(nix_dir, project).packages == ("a", "c")
    assert sorted(p.name for p in (project / ".flox" / "pkgs").iterdir()) == ["a.nix", "c.nix"]


def test_layout_refuses_names_flox_cannot_build(tmp_path: Path) -> None:
    nix_dir = tmp_path / "set"
    (nix_dir / "packages").mkdir(parents=True)
    (nix_dir / "packages" / "-evil.nix").write_text("{ }: 1\n")
    with pytest.raises(FloxPackageError):
        prepare_layout(nix_dir, tmp_path / "project")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="No packages"):
        prepare_layout(empty, tmp_path / "project2")


# What Flox's Nix-expression builder does with .flox/pkgs (a scope extended with the collected packages,
# each file called with callPackage), over our bootstrap scope instead of nixpkgs, which is not here.
FLOX_LIKE_EVAL = """
{ floxDir, bootstrap }:
let
  inherit (builtins) attrNames filter functionArgs head intersectAttrs listToAttrs mapAttrs match readDir;
  base = import bootstrap { };
  entries = readDir (floxDir + "/pkgs");
  names = map (f: head (match "(.*)\\\\.nix" f)) (filter (f: match ".*\\\\.nix" f != null) (attrNames entries));
  scope = base // packages;
  callPackage = file: let fn = import file; in fn (intersectAttrs (functionArgs fn) scope);
  packages = listToAttrs (map (n: { name = n; value = callPackage (floxDir + "/pkgs/${n}.nix"); }) names);
in
mapAttrs (n: p: p.drvPath) packages
"""


@needs_nix
def test_flox_layout_gives_the_nix_backends_derivations(tmp_path: Path) -> None:
    # The self package (dagster-nix-builder.nix) builds from the project around its file: .flox/pkgs/../..
    for name in ("pyproject.toml", "README.md"):
        (tmp_path / "project").mkdir(exist_ok=True)
        shutil.copy2(REPO_NIX.parent / name, tmp_path / "project" / name)
    shutil.copytree(REPO_NIX.parent / "dagster_nix_builder", tmp_path / "project" / "dagster_nix_builder",
                    ignore=shutil.ignore_patterns("__pycache__", ".local_defs_state"))
    layout = prepare_layout(REPO_NIX, tmp_path / "project")
    expr = tmp_path / "flox-like.nix"
    expr.write_text(FLOX_LIKE_EVAL)
    flox_like = json.loads(
        subprocess.run(
            [
                "nix-instantiate", "--eval", "--strict", "--json", str(expr),
                "--arg", "floxDir", str(layout.flox_dir), "--arg", "bootstrap", str(REPO_NIX / "bootstrap"),
            ],
            capture_output=True, text=True, check=True, env=NIX_ENV,
        ).stdout
    )
    graph = NixResource(nix_dir=str(REPO_NIX), scope="bootstrap").load_graph()
    assert sorted(flox_like) == list(PACKAGES)
    assert flox_like == {attr: graph[attr].drv_path for attr in PACKAGES}


# ---- the real thing ----------------------------------------------------------------------------------


@needs_flox
def test_real_flox_build_through_dagster(tmp_path: Path) -> None:
    from dagster import materialize

    from dagster_nix_builder import nix_assets

    flox = FloxResource(
        nix_dir=str(REPO_NIX), project_dir=str(tmp_path / "flox"), out_link_dir=str(tmp_path / "results")
    )
    graph = flox.load_graph()
    result = materialize(
        [nix_assets(graph)], resources={"nix": flox}, selection=["dagster-src", "dagster-pipes"]
    )
    assert result.success
    materializations = {
        m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("nix_packages")
    }
    assert sorted(materializations) == ["dagster-pipes", "dagster-src"]
    for attr, metadata in materializations.items():
        link = tmp_path / "flox" / f"result-{attr}"
        assert link.is_symlink() and os.path.exists(link)
        # The same record as the Nix backend's, about what Flox built.
        assert metadata["out_path"].value == os.path.realpath(link)
        assert metadata["nar_size"].value > 0
        assert (tmp_path / "results" / f"result-{attr}").is_symlink()


# ---- the run-time half, against a FAKE flox ----------------------------------------------------------
# tests/fixtures/fake-flox is not Flox: it builds .flox/pkgs with nix-build the way Flox lays results out
# (result-<name> next to .flox), so the out-link reading, outcomes, failures and materializations of
# FloxBuild run against real Nix builds here. The real CLI is tested above where installed.

FAKE_FLOX = Path(__file__).parent / "fixtures" / "fake-flox"
SMALL_SET_DEFAULT = """{ ... }:
let
  inherit (builtins) attrNames filter functionArgs head intersectAttrs listToAttrs match readDir;
  entries = readDir ./packages;
  names = map (f: head (match "(.*)\\\\.nix" f)) (filter (f: match ".*\\\\.nix" f != null) (attrNames entries));
  callPackage = file: let fn = import file; in fn (intersectAttrs (functionArgs fn) packages);
  packages = listToAttrs (map (n: { name = n; value = callPackage (./packages + "/${n}.nix"); }) names);
in
packages
"""


def _small_set(root: Path, salt: str) -> Path:
    def package(name: str, deps: list[str], script: str) -> str:
        return (
            f"{{ {', '.join(deps)} }}:\nbuiltins.derivation {{\n  name = \"{name}\";\n  salt = \"{salt}\";\n"
            "  system = builtins.currentSystem;\n  builder = \"/bin/sh\";\n"
            f"  args = [ \"-c\" \"{script}\" ];\n  deps = [ {' '.join(deps)} ];\n}}\n"
        )

    (root / "packages").mkdir(parents=True)
    (root / "default.nix").write_text(SMALL_SET_DEFAULT)
    files = {
        "base": package("base", [], "echo base > $out"),
        "mid": package("mid", ["base"], "echo mid $deps > $out"),
        "solo": package("solo", [], "echo solo > $out"),
        "broken": package("broken", [], "echo something broke >&2; exit 1"),
        "after-broken": package("after-broken", ["broken"], "echo $deps > $out"),
    }
    for name, text in files.items():
        (root / "packages" / f"{name}.nix").write_text(text)
    return root


@needs_nix
def test_flox_backend_run_time_with_the_fake_flox(tmp_path: Path, salt: str) -> None:
    from dagster import DagsterInstance, materialize

    from dagster_nix_builder import NixBuildError, nix_assets

    nix_dir = _small_set(tmp_path / "set", salt)
    flox = FloxResource(
        nix_dir=str(nix_dir), flox_executable=str(FAKE_FLOX),
        project_dir=str(tmp_path / "flox"), out_link_dir=str(tmp_path / "results"),
    )
    graph = flox.load_graph()
    assets = nix_assets(graph)

    instance = DagsterInstance.ephemeral()
    result = materialize([assets], resources={"nix": flox}, raise_on_error=False, instance=instance)
    assert not result.success
    # The same progress log and table as the Nix backend's (Flox reports the packages when it exits).
    (summary,) = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message.startswith("Summary: ")]
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in summary.splitlines()[3:]}
    assert {rows[a] for a in ("base", "mid", "solo")} == {"built"} and rows["broken"] == "failed"
    done = {
        m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("nix_packages")
    }
    # A failure fails only what it must, as with the Nix backend.
    assert sorted(done) == ["base", "mid", "solo"]
    for attr, metadata in done.items():
        link = tmp_path / "flox" / f"result-{attr}"
        assert metadata["out_path"].value == os.path.realpath(link)
        assert metadata["drv_path"].value == graph[attr].drv_path  # the very derivation Nix evaluates
        assert metadata["built_now"].value is True
        assert (tmp_path / "results" / f"result-{attr}").is_symlink()
    error = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(error.event_specific_data.error)
    assert NixBuildError.__name__ in message or "failed or blocked" in message
    assert "broken" in message and "after-broken" in message and "something broke" in message

    # Everything valid now: no rebuild, reported as already there.
    again = materialize([assets], resources={"nix": flox}, selection=["base", "mid"])
    assert again.success
    for m in again.asset_materializations_for_node("nix_packages"):
        assert m.metadata["built_now"].value is False
