"""The Nix package set in nix/, built with the real Nix (bootstrap scope: no nixpkgs here)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from repo_packages import PACKAGES, SIX

from dagster_nix_builder.nix.settings import DEFAULT_NIX_CONFIG, bootstrap_nix_config

REPO = Path(__file__).resolve().parents[1]
NIX_DIR = REPO / "nix"
PYTHON_PACKAGES = {
    "dagster-shared": "dagster_shared",
    "dagster-pipes": "dagster_pipes",
    "dagster": "dagster",
    "dagster-graphql": "dagster_graphql",
    "dagster-webserver": "dagster_webserver",
}
FAKE_HASH = "sha256-" + "A" * 43 + "="
NIX_ENV = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed")


def nix_build(nix_dir: Path, *attrs: str, out_link: Path, **argstrs: str) -> subprocess.CompletedProcess:
    cmd = ["nix-build", str(nix_dir), "--out-link", str(out_link)]
    for attr in attrs:
        cmd += ["-A", attr]
    for name, value in argstrs.items():
        cmd += ["--argstr", name, value]
    env = {**NIX_ENV, "NIX_CONFIG": bootstrap_nix_config(nix_dir=nix_dir)}  # sees a local git upstream
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def nix_eval(expr: str) -> object:
    out = subprocess.run(["nix-instantiate", "--eval", "--json", "--strict", "-E", expr],
                         capture_output=True, text=True, env=NIX_ENV, check=True).stdout
    return json.loads(out)


@pytest.fixture
def nix_copy(tmp_path: Path) -> Path:
    """A private copy of nix/ that a test may break."""
    copy = tmp_path / "nix"
    shutil.copytree(NIX_DIR, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_every_expression_parses():
    files = sorted(NIX_DIR.rglob("*.nix"))
    assert len(files) >= 9
    for file in files:
        subprocess.run(["nix-instantiate", "--parse", str(file)], capture_output=True, check=True, env=NIX_ENV)


def test_default_nix_exposes_exactly_the_files_of_packages():
    assert sorted(nix_eval(f"builtins.attrNames (import {NIX_DIR} {{}})")) == sorted(PACKAGES)


def test_auto_scope_is_bootstrap_without_nixpkgs():
    expr = (f"let s = import {NIX_DIR} {{}}; b = import {NIX_DIR} {{ scope = \"bootstrap\"; }}; "
            "in s.dagster.drvPath == b.dagster.drvPath")
    assert nix_eval(expr) is True


def test_nixpkgs_scope_without_nixpkgs_says_what_to_pass():
    result = subprocess.run(["nix-instantiate", str(NIX_DIR), "-A", "dagster", "--argstr", "scope", "nixpkgs"],
                            capture_output=True, text=True, env=NIX_ENV, check=False)
    assert result.returncode != 0
    assert "--arg pkgs 'import <nixpkgs> {}'" in result.stderr


def test_nixpkgs_scope_wires_the_same_expressions():
    """No nixpkgs here: the nixpkgs code path is evaluated against the bootstrap scope's same names."""
    stand_in = f"(import {NIX_DIR}/bootstrap {{}})"
    drvs = nix_eval(f"builtins.mapAttrs (n: p: p.drvPath) (import {NIX_DIR} "
                    f"{{ scope = \"nixpkgs\"; pkgs = {stand_in}; }})")
    assert sorted(drvs) == sorted(PACKAGES)


@pytest.mark.slow
def test_bootstrap_builds_all_six_and_they_run_from_the_store(tmp_path: Path):
    result = nix_build(NIX_DIR, *SIX, out_link=tmp_path / "result")
    assert result.returncode == 0, result.stderr[-4000:]
    outs = dict(zip(SIX, result.stdout.split(), strict=False))
    version = nix_eval(f"(import {NIX_DIR} {{}}).dagster.version")

    for package, exe in [("dagster", "dagster"), ("dagster", "dagster-daemon"),
                         ("dagster-graphql", "dagster-graphql"), ("dagster-webserver", "dagster-webserver")]:
        run = subprocess.run(
            [f"{outs[package]}/bin/{exe}", "--version"], capture_output=True, text=True, env={}, check=False
        )
        assert run.returncode == 0, run.stderr
        assert version in run.stdout
    # dagster-webserver-debug has no --version option upstream; it must still start from the store.
    run = subprocess.run([f"{outs['dagster-webserver']}/bin/dagster-webserver-debug", "--help"],
                         capture_output=True, text=True, env={}, check=False)
    assert run.returncode == 0 and "Usage: dagster-webserver-debug" in run.stdout, run.stderr

    # Only store paths: the closure's site-packages and the interpreter, nothing from the host's site.
    closure = subprocess.run(["nix-store", "-qR", *(outs[p] for p in PYTHON_PACKAGES)],
                             capture_output=True, text=True, check=True).stdout.split()
    site_dirs = [str(d) for p in closure for d in Path(p).glob("lib/python3*/site-packages")]
    python = next(f"{p}/bin/python3" for p in closure if Path(p, "bin/python3").exists())
    modules = [*PYTHON_PACKAGES.values(), "pydantic", "grpc"]
    code = (f"import {', '.join(modules)}, sys\n"
            f"files = [sys.modules[m].__file__ for m in {modules!r}]\n"
            "assert all(f.startswith('/nix/store/') for f in files), files\n"
            "print('ok', len(files))")
    run = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": ":".join(site_dirs)}, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == f"ok {len(modules)}"
    # A child the way a wrapper starts one (sys.executable, site enabled, PYTHONPATH set): the interpreter
    # is a virtual environment without the host's site-packages, so no host .pth hook runs in it.
    probe = ("import sys, certifi; "
             "print([p for p in sys.path if 'packages' in p and not p.startswith('/nix/store/')], certifi.__file__)")
    child = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                           env={"PYTHONPATH": ":".join(site_dirs)}, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    host_dirs, certifi = child.stdout.split(" ", 1)
    assert host_dirs == "[]" and certifi.startswith("/nix/store/")
    # Nothing above wrote into the store (a plain python3 without -B finds every module compiled
    # at build time): Nix still finds each path of the closure as it was built.
    verify = subprocess.run(["nix-store", "--verify-path", *closure], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr[-3000:]

    for package, module in PYTHON_PACKAGES.items():
        dist = subprocess.run(["nix-build", str(NIX_DIR), "-A", f"{package}.dist", "--no-out-link"],
                              capture_output=True, text=True, env=NIX_ENV, check=True).stdout.strip()
        assert [w.name for w in Path(dist).glob("*.whl")] == [f"{module}-{version}-py3-none-any.whl"]


SANDBOX_ON = ["--option", "sandbox", "true", "--option", "sandbox-fallback", "false"]


@pytest.mark.skipif(not Path("/usr/bin/bash-static").exists(), reason="needs bash-static (scripts/setup.sh --test)")
def test_a_sandbox_that_hides_the_host_is_named_and_the_declared_paths_build(tmp_path: Path):
    """Whatever nix.conf says: the sandbox forced on per call, as Debian 13's Nix has it by default."""
    # A new derivation each run (a valid output would not be built again).
    probe = (f"(import {NIX_DIR}/bootstrap {{}}).runCommand \"sandbox-probe-{uuid.uuid4().hex[:12]}\" {{}} "
             "\"tar --version > $out; cp --version >> $out\"")
    # Only a static shell, as Debian 13's default sandbox-paths give: the host's programs are hidden.
    hidden = subprocess.run(
        ["nix-build", "-E", probe, "--no-out-link", *SANDBOX_ON,
         "--option", "sandbox-paths", "/bin/sh=/usr/bin/bash-static"],
        capture_output=True, text=True, env={**NIX_ENV, "NIX_CONFIG": DEFAULT_NIX_CONFIG}, check=False)
    assert hidden.returncode != 0
    assert "this build cannot see them: Nix's sandbox is on" in hidden.stderr, hidden.stderr[-2000:]
    assert "--option extra-sandbox-paths '/usr /lib /lib64'" in hidden.stderr
    # What the product declares (NIX_ENV's extra-sandbox-paths) is enough, with Nix's own sandbox-paths or none.
    for sandbox_paths in ([], ["--option", "sandbox-paths", "/bin/sh=/usr/bin/bash-static"]):
        shown = subprocess.run(["nix-build", "-E", probe, "--no-out-link", *SANDBOX_ON, *sandbox_paths],
                               capture_output=True, text=True, env=NIX_ENV, check=False)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "GNU tar" in Path(shown.stdout.strip()).read_text()


@pytest.mark.slow
def test_a_sandboxed_rebuild_is_bit_identical(tmp_path: Path):
    """dagster-pipes rebuilt in the sandbox (--check) matches the build already in the store."""
    built = nix_build(NIX_DIR, "dagster-pipes", out_link=tmp_path / "result")
    assert built.returncode == 0, built.stderr[-3000:]
    check = subprocess.run(["nix-build", str(NIX_DIR), "-A", "dagster-pipes", "--check", "--no-out-link", *SANDBOX_ON],
                           capture_output=True, text=True, env=NIX_ENV, check=False)
    assert check.returncode == 0, check.stderr[-3000:]


# A wrong monorepo path (problem 4 of the hand-run report) is caught where it can be, from git:
# tests/test_package_data.py.


@pytest.mark.parametrize(
    ("package", "old", "new", "expected"),
    [
        # Problem 1: dagster-shared without pyyaml.
        ("dagster-shared", "    pyyaml\n", "", ["module 'yaml'", "python3Packages.pyyaml", "dagster-shared.nix:3"]),
        # Problem 2: pydantic (dagster reaches it through dagster-shared in 1.13).
        ("dagster-shared", "    pydantic\n", "", ["module 'pydantic'", "python3Packages.pydantic"]),
        # Problem 3: dagster-graphql without gql's requests transport.
        ("dagster-graphql", "  ++ python3Packages.gql.optional-dependencies.requests;", ";",
         ["module 'requests_toolbelt'", "python3Packages.requests-toolbelt", "dagster-graphql.nix"]),
    ],
)
def test_missing_runtime_dependency_fails_the_import_check(
    nix_copy: Path, tmp_path: Path, package: str, old: str, new: str, expected: list[str]
):
    edit(nix_copy / f"packages/{package}.nix", old, new)
    result = nix_build(nix_copy, package, out_link=tmp_path / "result")
    assert result.returncode != 0
    assert f"{package}: import check failed" in result.stderr
    for text in expected:
        assert text in result.stderr


def test_undeclared_requirement_fails_the_runtime_dependencies_check(nix_copy: Path, tmp_path: Path):
    # dagster_shared imports without packaging, but its metadata requires it (problem 1).
    edit(nix_copy / "packages/dagster-shared.nix", "    packaging\n", "")
    result = nix_build(nix_copy, "dagster-shared", out_link=tmp_path / "result")
    assert result.returncode != 0
    assert "dagster-shared: import check failed (dagster-shared.nix:3)" in result.stderr
    assert ("requires 'packaging>=20.9', so module 'packaging' must be importable, "
            "but python3Packages.packaging is not among its dependencies") in result.stderr


@pytest.mark.parametrize("wrong", [FAKE_HASH, ""], ids=["fake", "empty"])
def test_wrong_source_hash_shows_specified_and_got(nix_copy: Path, tmp_path: Path, wrong: str):
    pins = json.loads((nix_copy / "pins.json").read_text())
    real = pins["release"]["hashes"]["dagster-pipes"]
    pins["release"]["hashes"]["dagster-pipes"] = wrong  # Nix reads an empty hash as the fake one
    (nix_copy / "pins.json").write_text(json.dumps(pins))
    result = nix_build(nix_copy, "dagster-pipes", out_link=tmp_path / "result")
    assert result.returncode != 0
    assert "hash mismatch in fixed-output derivation" in result.stderr
    assert re.search(rf"specified:\s+{re.escape(FAKE_HASH)}", result.stderr)
    assert re.search(rf"got:\s+{re.escape(real)}", result.stderr)


@pytest.fixture
def upstream_dir():
    """A folder the nixbld users can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="dagster-upstream-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def make_monorepo(tmp_path: Path) -> tuple[Path, str]:
    """A real git repository in Dagster's layout, made from the pinned release's source tree."""
    tree = subprocess.run(["nix-build", str(NIX_DIR), "-A", "dagster-src", "--no-out-link"],
                          capture_output=True, text=True, env=NIX_ENV, check=True).stdout.strip()
    work = tmp_path / "work"
    for sub in ["python_modules/dagster-pipes", "python_modules/libraries/dagster-shared"]:
        shutil.copytree(Path(tree, sub), work / sub)
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "master", str(work)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "monorepo"], check=True)
    rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    bare = tmp_path / "dagster.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare, rev


@pytest.mark.parametrize("url_form", ["path", "file-url"])
def test_git_mode_builds_from_a_local_repository(
    nix_copy: Path, tmp_path: Path, upstream_dir: Path, url_form: str
):
    bare, rev = make_monorepo(upstream_dir)
    pins = json.loads((nix_copy / "pins.json").read_text())
    version = pins["release"]["version"]
    pins["source"] = "git"
    pins["git"] = {"url": str(bare) if url_form == "path" else f"file://{bare}", "branch": "master",
                   "rev": rev, "hash": FAKE_HASH, "version": version}
    (nix_copy / "pins.json").write_text(json.dumps(pins))

    first = nix_build(nix_copy, "dagster-pipes", out_link=tmp_path / "result")
    assert first.returncode != 0
    got = re.search(r"got:\s+(sha256-\S+)", first.stderr)
    assert got, first.stderr[-2000:]

    pins["git"]["hash"] = got.group(1)
    (nix_copy / "pins.json").write_text(json.dumps(pins))
    second = nix_build(nix_copy, "dagster-pipes", "dagster-shared", out_link=tmp_path / "result")
    assert second.returncode == 0, second.stderr[-3000:]
    pipes = second.stdout.split()[0]
    assert list(Path(pipes).glob("lib/python3*/site-packages/dagster_pipes/__init__.py"))


def test_git_mode_rejects_a_short_rev(nix_copy: Path, tmp_path: Path):
    pins = json.loads((nix_copy / "pins.json").read_text())
    pins["source"] = "git"
    pins["git"]["rev"] = "abc123"
    (nix_copy / "pins.json").write_text(json.dumps(pins))
    result = nix_build(nix_copy, "dagster-pipes", out_link=tmp_path / "result")
    assert result.returncode != 0
    assert "git.rev must be a full 40-hex commit" in result.stderr


def test_lock_pins_every_wheel_by_sha256():
    lock = json.loads((NIX_DIR / "bootstrap/wheels.json").read_text())
    # CPython 3.11 to 3.14 on both Linux systems Nix users run, each its own wheel tags.
    assert set(lock["targets"]) == {f"3.{minor}-{system}" for minor in (11, 12, 13, 14)
                                    for system in ("x86_64-linux", "aarch64-linux")}
    for key, target in lock["targets"].items():
        abi = "cp" + target["python"].replace(".", "")
        machine = target["system"].split("-")[0]
        assert key == f"{target['python']}-{target['system']}"
        assert re.fullmatch(r"[0-9a-z]{52}", target["wheelhouse"]), key
        for name, wheel in target["wheels"].items():
            assert re.fullmatch(r"[0-9a-f]{64}", wheel["sha256"]), name
            assert wheel["file"].endswith(".whl") and "/" not in wheel["file"]
            assert set(wheel["deps"]) <= set(target["wheels"]), name
            tags = wheel["file"].removesuffix(".whl").split("-")[-3:]
            assert tags[2] == "any" or machine in tags[2], (key, wheel["file"])
            assert tags[1] in (abi, "abi3", "none"), (key, wheel["file"])
    # No index host or local mirror path is written into the lock.
    text = (NIX_DIR / "bootstrap/wheels.json").read_text()
    assert "://" not in text and "/opt/" not in text


def sri(data: bytes) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.slow
def test_release_sdists_match_the_pins(tmp_path: Path):
    pins = json.loads((NIX_DIR / "pins.json").read_text())
    # Each distribution at the version its package file's versionScheme derives (dagster-postgres 0.29.27).
    declared = {d["distribution"]: d["version"] for d in nix_eval(f"(import {NIX_DIR} {{}}).dagster-src.declarations")
                .values()}  # fmt: skip
    assert set(declared) == set(pins["release"]["hashes"])
    for name, expected in pins["release"]["hashes"].items():
        sdist = subprocess.run(
            ["nix-build", "-E", (f"(import {NIX_DIR}/bootstrap {{}}).fetchPypi "
                                 f"{{ pname = \"{name.replace('-', '_')}\"; "
                                 f"version = \"{declared[name]}\"; hash = \"{expected}\"; }}"),
             "--no-out-link"],
            capture_output=True, text=True, env=NIX_ENV, check=True).stdout.strip()
        assert sri(Path(sdist).read_bytes()) == expected


def test_an_interpreter_without_a_lock_or_missing_fails_at_evaluation_naming_the_fix():
    def evaluate(args: str) -> subprocess.CompletedProcess:
        expr = f"(import {NIX_DIR}/bootstrap {{ {args} }}).python3.drvPath"
        return subprocess.run(["nix-instantiate", "--eval", "-E", expr],
                              capture_output=True, text=True, env=NIX_ENV, check=False)

    unlocked = evaluate('hostPythonVersion = "3.9";')
    assert unlocked.returncode != 0
    assert "nix/bootstrap/wheels.json has no lock for Python 3.9 on " in unlocked.stderr
    assert "nix/bootstrap/lock.py --dagster-version " in unlocked.stderr and "--target 3.9-" in unlocked.stderr
    missing = evaluate('hostPython = "/nonexistent/bin/python3.12";')
    assert missing.returncode != 0
    assert "the interpreter /nonexistent/bin/python3.12 does not exist; pass --argstr hostPython" in missing.stderr
    assert evaluate("").returncode == 0  # this machine's /usr/bin/python3 is found out and locked
