"""This repository as a flake (flake.nix, no inputs): real Nix, in each world whose Nix has flakes (2.8 and
2.26 both do, behind ``experimental-features = nix-command flakes``).

Every test works on a fresh clone of the project in a temporary directory (``project_clone.fresh_clone``: the
files git tracks or would track, committed), never on the checkout, and asserts that Nix wrote no
``flake.lock`` there: a flake without inputs needs none. The commands are the README's ("This repository as
a flake"): ``--impure`` (the bootstrap scope reads the host's /usr/bin/python3 and /usr/lib/postgresql while
evaluating) and ``--accept-flake-config`` (the flake's ``nixConfig.extra-sandbox-paths``, what the bootstrap
builders borrow when the sandbox is on), with no substituter (no binary cache is reachable here).

The overlay's test evaluates ``overlays.default`` against a stand-in nixpkgs written below — a tiny fake
``pkgs`` with nixpkgs' shape (``pythonPackagesExtensions``, ``python3.pkgs``, ``buildPythonPackage``), NOT
nixpkgs, which cannot be fetched here: it proves the overlay's wiring, not a build with nixpkgs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from project_clone import fresh_clone
from repo_packages import PACKAGES

REPO = Path(__file__).resolve().parent.parent
PINS = json.loads((REPO / "nix" / "pins.json").read_text())
VERSION = PINS["release"]["version"]  # 1.13.27: the version every package of the set is built at
FLAKE_CONFIG = "experimental-features = nix-command flakes\nsubstituters ="
NIX_ENV = {**os.environ, "NIX_CONFIG": FLAKE_CONFIG, "NIX_PATH": ""}
# What the README's commands pass besides NIX_CONFIG.
FLAKE_ARGS = ["--impure", "--accept-flake-config"]
TIMEOUT = 3600  # a cold `nix flake check` builds the whole set and its tests


def nix_version() -> tuple[int, ...]:
    if shutil.which("nix") is None:
        return ()
    out = subprocess.run(["nix", "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"(\d+)\.(\d+)", out)
    return tuple(int(part) for part in found.groups()) if found else ()


NIX = nix_version()
pytestmark = pytest.mark.skipif(NIX < (2, 4), reason=f"needs a Nix with flakes (2.4 or newer), not {NIX or 'none'}")


def nix(clone: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # stdin is not a terminal: Nix never asks whether to accept the flake's configuration.
    result = subprocess.run(["nix", *args], cwd=clone, capture_output=True, text=True, env=NIX_ENV,
                            stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False)
    if check:
        assert result.returncode == 0, f"nix {' '.join(args)} failed:\n{result.stderr[-6000:]}"
    return result


def nix_json(clone: Path, *args: str) -> object:
    return json.loads(nix(clone, *args).stdout)


def sandbox_on() -> bool:
    """Whether this Nix builds in its sandbox (Debian 13's default; Debian 12's nix.conf turns it off)."""
    for command in (["nix", "config", "show", "sandbox"], ["nix", "show-config"]):
        out = subprocess.run(command, capture_output=True, text=True, env=NIX_ENV, check=False).stdout
        if out.strip() in ("true", "false"):
            return out.strip() == "true"
        for line in out.splitlines():
            if line.startswith("sandbox = "):
                return line == "sandbox = true"
    return False


def assert_untouched(clone: Path) -> None:
    """Nix wrote no flake.lock (nor anything else) into the clone."""
    assert not (clone / "flake.lock").exists()
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--ignored"],
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_clone(tmp_path_factory.mktemp("flake") / "repo")


@pytest.fixture(scope="module")
def system(clone: Path) -> str:
    return str(nix_json(clone, "eval", "--impure", "--json", "--expr", "builtins.currentSystem"))


def expected_checks() -> dict[str, str]:
    """<package>-<test> -> the test's derivation name, read from the package set itself (not the flake)."""
    expr = (f"let set = import {REPO / 'nix'} {{ scope = \"bootstrap\"; }}; in "
            "builtins.mapAttrs (n: p: builtins.mapAttrs (t: d: d.name) (p.passthru.tests or { })) set")
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
                         capture_output=True, text=True, env=NIX_ENV, check=True).stdout
    return {f"{package}-{test}": name for package, tests in json.loads(out).items() for test, name in tests.items()}


# --- what the flake exposes ----------------------------------------------------------------------------

def test_flake_show_lists_every_package_its_tests_as_checks_and_the_overlay(clone: Path, system: str):
    shown = nix_json(clone, "flake", "show", "--json", *FLAKE_ARGS)
    assert isinstance(shown, dict)
    assert set(shown) == {"packages", "checks", "overlays"}
    assert set(shown["packages"]) == set(shown["checks"]) == {"x86_64-linux", "aarch64-linux"}
    packages = shown["packages"][system]
    assert set(packages) == set(PACKAGES) | {"default"}
    assert packages["dagster-webserver"]["type"] == "derivation"
    assert packages["dagster-webserver"]["name"] == f"dagster-webserver-{VERSION}"
    assert packages["default"]["name"] == packages["dagster-webserver"]["name"]
    checks = expected_checks()
    assert len(checks) >= len(PACKAGES) - 1  # every package but dagster-src has at least one test
    assert {"dagster-webserver-webserver", "dagster-postgres-postgres", "dagster-imports"} <= set(checks)
    assert {name: check["name"] for name, check in shown["checks"][system].items()} == checks
    assert shown["overlays"] == {"default": {"type": "nixpkgs-overlay"}}
    assert_untouched(clone)


def test_the_flake_builds_the_same_derivations_as_nix_build(clone: Path):
    """The flake calls nix/default.nix as `nix-build nix --argstr scope bootstrap` does: the same .drv, so a
    package built either way is built once."""
    flake = nix(clone, "eval", "--raw", *FLAKE_ARGS, ".#dagster-webserver.drvPath").stdout
    plain = subprocess.run(["nix-instantiate", str(REPO / "nix"), "-A", "dagster-webserver", "--argstr", "scope",
                            "bootstrap"], capture_output=True, text=True, env=NIX_ENV, check=True).stdout.strip()
    assert flake == plain


def test_pure_evaluation_says_to_pass_impure(clone: Path):
    result = nix(clone, "build", "--no-link", ".#dagster-webserver", check=False)
    assert result.returncode != 0
    assert "pure evaluation forbids that. Pass --impure" in result.stderr
    assert "/usr/bin/python3" in result.stderr
    assert_untouched(clone)


# --- building and checking -----------------------------------------------------------------------------

def test_nix_build_dagster_webserver_and_it_answers_version(clone: Path, tmp_path: Path):
    link = tmp_path / "result"
    built = nix_json(clone, "build", *FLAKE_ARGS, "--json", "--out-link", str(link), ".#dagster-webserver")
    assert isinstance(built, list) and len(built) == 1
    out = built[0]["outputs"]["out"]
    assert os.path.realpath(link) == out and out.startswith("/nix/store/")
    run = subprocess.run([str(link / "bin" / "dagster-webserver"), "--version"], capture_output=True, text=True,
                         env={}, check=False, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"dagster-webserver, version {VERSION}"
    # Running it wrote nothing into the store (the wrapper runs python3 -B).
    verify = subprocess.run(["nix-store", "--verify-path", out], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    assert_untouched(clone)


def test_nix_flake_check_builds_every_check(clone: Path, system: str):
    nix(clone, "flake", "check", *FLAKE_ARGS)
    outs = nix_json(clone, "eval", "--json", *FLAKE_ARGS, f".#checks.{system}",
                    "--apply", "builtins.mapAttrs (name: check: check.outPath)")
    assert isinstance(outs, dict) and set(outs) == set(expected_checks())
    # Each check's output is in the store now: `nix flake check` built (or found) every one.
    valid = subprocess.run(["nix-store", "--check-validity", "--print-invalid", *outs.values()],
                           capture_output=True, text=True, check=True).stdout
    assert valid == ""
    webserver = Path(outs["dagster-webserver-webserver"]).read_text()
    assert "/server_info" in webserver and "HTTP 200" in webserver
    assert_untouched(clone)


@pytest.mark.skipif(not sandbox_on(), reason="this Nix builds without its sandbox, which hides nothing")
def test_in_the_sandbox_the_flake_config_is_what_lets_the_bootstrap_scope_see_the_host(clone: Path):
    """Without --accept-flake-config (and no extra-sandbox-paths of one's own) the builders cannot see the host's
    interpreter and tools, and the bootstrap scope says so; with it the same build passes (`--rebuild`:
    the derivation runs again though its output is in the store, and must give the same output)."""
    nix(clone, "build", *FLAKE_ARGS, "--no-link", ".#dagster-src")
    refused = nix(clone, "build", "--impure", "--no-link", "--rebuild", ".#dagster-src", check=False)
    assert refused.returncode != 0
    assert "the bootstrap scope borrows the host's /usr/bin/python3, tar and cp" in refused.stderr
    assert "Nix's sandbox is on" in refused.stderr
    nix(clone, "build", *FLAKE_ARGS, "--no-link", "--rebuild", ".#dagster-src")
    assert_untouched(clone)


# --- the overlay, against a stand-in nixpkgs ------------------------------------------------------------

# A stand-in for nixpkgs, NOT nixpkgs: `import <dir> { overlays; wheels; }` gives a fixed point of overlays over
# a top level with pythonPackagesExtensions, python313/python311 (each with `pkgs`: its own package set, every
# extension applied), python3 = python313, runCommand/fetchgit/fetchPypi/postgresql, all plain attribute sets.
# A python set holds `python`, a buildPythonPackage that records its arguments, and one stand-in package per
# name of `wheels` (the names the expressions take; their versions, stand-ins too, are the wheel lock's).
FAKE_NIXPKGS = r"""
{ overlays ? [ ], wheels, extensions ? true }:
let
  inherit (builtins) foldl' mapAttrs removeAttrs;
  fix = f: let x = f x; in x;
  extends = overlay: f: self: let super = f self; in super // overlay self super;
  standIn = name: { inherit name; type = "derivation"; outPath = "/stand-in/${name}"; };
  pythonSet = top: version: fix (foldl' (f: extension: extends extension f) (self:
    mapAttrs (name: wheel: standIn "python${version}-${name}-${wheel.version}" // {
      pname = name;
      inherit (wheel) version;
      fromStandInNixpkgs = true;
      optional-dependencies = mapAttrs (extra: map (dep: self.${dep})) wheel.extras;
    }) wheels // {
      python = standIn "python3-${version}" // { pythonVersion = version; };
      buildPythonPackage = args: standIn "${args.pname}-${args.version}" // (args.passthru or { }) // {
        inherit (args) pname version;
        builtBy = "buildPythonPackage of the stand-in's python ${version}";
        dependencies = args.dependencies or [ ];
      };
    }) (top.pythonPackagesExtensions or [ ]));
  base = self: {
    pythonPackagesExtensions = [ ];
    python313 = standIn "python3-3.13" // { pkgs = pythonSet self "3.13"; };
    python311 = standIn "python3-3.11" // { pkgs = pythonSet self "3.11"; };
    python3 = self.python313;
    python3Packages = self.python3.pkgs;
    python311Packages = self.python311.pkgs;
    runCommand = name: env: script: standIn name // (env.passthru or { });
    fetchgit = args: standIn (args.name or "source");
    fetchPypi = args: standIn "${args.pname}-${args.version}.tar.gz";
    postgresql = standIn "postgresql-17";
  };
  top = if extensions then base else self: removeAttrs (base self) [ "pythonPackagesExtensions" ];
in
fix (foldl' (f: overlay: extends overlay f) top overlays)
"""

OVERLAY_FACTS = r"""
let
  flake = builtins.getFlake "git+file://@CLONE@";
  lock = builtins.fromJSON (builtins.readFile @CLONE@/nix/bootstrap/wheels.json);
  wheels = lock.targets."3.13-x86_64-linux".wheels;
  # Another user's extension after ours: its dagster-shared must be what our dagster depends on.
  bumpShared = final: prev: {
    pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
      (pyFinal: pyPrev: { dagster-shared = pyPrev.dagster-shared // { version = "overridden"; }; })
    ];
  };
  pkgs = import @FAKE@ { inherit wheels; overlays = [ flake.overlays.default ]; };
  bumped = import @FAKE@ { inherit wheels; overlays = [ flake.overlays.default bumpShared ]; };
  describe = p: { inherit (p) pname version; builtBy = p.builtBy or null; standIn = p.fromStandInNixpkgs or false; };
  py = pkgs.python3Packages;
in {
  names = builtins.attrNames py;
  dagster = describe py.dagster;
  dependencies = map describe py.dagster.dependencies;
  webserver = describe py.dagster-webserver // { tests = builtins.attrNames py.dagster-webserver.tests; };
  postgres = describe py.dagster-postgres;
  python311 = describe pkgs.python311Packages.dagster;
  requests = describe py.requests;
  bumped = map describe bumped.python3Packages.dagster.dependencies;
}
"""


def test_the_overlay_layers_the_set_over_a_stand_in_nixpkgs_python3Packages(clone: Path, tmp_path: Path):  # noqa: N802
    fake = tmp_path / "stand-in-nixpkgs"
    fake.mkdir()
    (fake / "default.nix").write_text(FAKE_NIXPKGS)
    expr = OVERLAY_FACTS.replace("@CLONE@", str(clone)).replace("@FAKE@", str(fake))
    facts = nix_json(clone, "eval", "--impure", "--json", "--expr", expr)
    assert isinstance(facts, dict)

    built_by = "buildPythonPackage of the stand-in's python 3.13"
    # Every package of the set is in python3Packages, beside the stand-in's own.
    assert set(PACKAGES) <= set(facts["names"]) and "requests" in facts["names"]
    assert facts["dagster"] == {"pname": "dagster", "version": VERSION, "builtBy": built_by, "standIn": False}
    deps = {d["pname"]: d for d in facts["dependencies"]}
    # Its own dependencies from the overlay, at the release's version; third-party ones from the stand-in.
    assert deps["dagster-shared"] == {"pname": "dagster-shared", "version": VERSION, "builtBy": built_by,
                                      "standIn": False}
    assert deps["dagster-pipes"]["version"] == VERSION and not deps["dagster-pipes"]["standIn"]
    assert deps["pydantic"]["standIn"] and deps["pydantic"]["builtBy"] is None
    assert facts["webserver"]["version"] == VERSION and facts["webserver"]["builtBy"] == built_by
    assert facts["webserver"]["tests"] == ["imports", "version", "webserver"]
    major, minor, patch = VERSION.split(".")
    assert major == "1" and facts["postgres"]["version"] == f"0.{int(minor) + 16}.{patch}"  # its "library" scheme
    # Every interpreter's set, each with its own buildPythonPackage; what the set lacks stays the stand-in's.
    assert facts["python311"]["builtBy"] == "buildPythonPackage of the stand-in's python 3.11"
    assert facts["python311"]["version"] == VERSION
    assert facts["requests"]["standIn"]
    # An extension after ours that overrides dagster-shared reaches our dagster's dependencies.
    assert {d["pname"]: d["version"] for d in facts["bumped"]}["dagster-shared"] == "overridden"
    assert_untouched(clone)


def test_the_overlay_on_a_nixpkgs_without_python_packages_extensions_says_so(clone: Path, tmp_path: Path):
    """Before 22.11 nixpkgs had no pythonPackagesExtensions: the overlay refuses, never silently does nothing."""
    fake = tmp_path / "stand-in-nixpkgs"
    fake.mkdir()
    (fake / "default.nix").write_text(FAKE_NIXPKGS)
    expr = (f'let flake = builtins.getFlake "git+file://{clone}"; '
            f"pkgs = import {fake} {{ wheels = {{ }}; extensions = false; overlays = [ flake.overlays.default ]; }}; "
            "in builtins.length pkgs.pythonPackagesExtensions")
    result = nix(clone, "eval", "--impure", "--expr", expr, check=False)
    assert result.returncode != 0
    assert "needs a nixpkgs with pythonPackagesExtensions (22.11 or later)" in result.stderr
