"""Each package's ``passthru.tests`` (nix/package-tests.nix), built with the real Nix in the bootstrap scope:
they pass on the real packages, fail when they should and say why, rebuild to the same output, build in the
sandbox, and graph.nix exports them as the packages' checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from dagster_nix_builder.nix.settings import bootstrap_nix_config

REPO = Path(__file__).resolve().parents[1]
NIX_DIR = REPO / "nix"
GRAPH_NIX = REPO / "dagster_nix_builder" / "nix" / "graph.nix"
# The checks of each package: (blocking) per test name.
TESTS = {
    "dagster-src": {},
    "dagster-shared": {"imports": True},
    "dagster-pipes": {"imports": True},
    "dagster": {"imports": True, "version": False},
    "dagster-graphql": {"imports": True, "version": False},
    "dagster-webserver": {"imports": True, "version": False, "webserver": False},
    "dagster-cloud-cli": {"imports": True, "version": False},
    "dagster-dg-core": {"imports": True},
    "dagster-rest-resources": {"imports": True},
    "dagster-dg-cli": {"imports": True, "version": False},
    "dagster-postgres": {"imports": True, "postgres": False},
    "dagster-nix-builder": {"imports": True},
}
ALL_TESTS = [f"{package}.tests.{name}" for package, tests in TESTS.items() for name in tests]
NIX_ENV = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}
SANDBOX_ON = ["--option", "sandbox", "true", "--option", "sandbox-fallback", "false"]

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed")


def run(cmd: list[str], nix_dir: Path = NIX_DIR) -> subprocess.CompletedProcess:
    env = {**NIX_ENV, "NIX_CONFIG": bootstrap_nix_config(nix_dir=nix_dir)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def nix_build(nix_dir: Path, *attrs: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = ["nix-build", str(nix_dir), "--no-out-link", *extra]
    for attr in attrs:
        cmd += ["-A", attr]
    return run(cmd, nix_dir)


def graph(nix_dir: Path, only: str = "") -> subprocess.CompletedProcess:
    cmd = ["nix-instantiate", "--eval", "--json", "--strict", str(GRAPH_NIX), "--argstr", "location", str(nix_dir)]
    return run(cmd + (["--argstr", "only", only] if only else []), nix_dir)


def nix_eval(expr: str) -> object:
    proc = run(["nix-instantiate", "--eval", "--json", "--strict", "-E", expr])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture
def nix_copy(tmp_path: Path) -> Path:
    """A private copy of nix/ that a test may break (the same package derivations as nix/)."""
    copy = tmp_path / "nix"
    shutil.copytree(NIX_DIR, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_graph_nix_exports_every_packages_tests_with_blocking_and_description():
    proc = graph(NIX_DIR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)["packages"]
    assert {attr: {name: t["blocking"] for name, t in info["tests"].items()} for attr, info in data.items()} == TESTS
    for info in data.values():
        assert info["evalFailed"] is False
        for name, test in info["tests"].items():
            # outputs as a package's: Nix would write a set with an outPath attribute as that string.
            assert sorted(test) == ["blocking", "description", "drvPath", "outputs", "under"]
            assert test["drvPath"].endswith(f"-test-{name}.drv")
            assert list(test["outputs"]) == ["out"] and test["outputs"]["out"].startswith("/nix/store/")
            assert isinstance(test["description"], str) and test["description"].endswith(".")
    assert data["dagster"]["tests"]["version"]["description"] == (
        f"dagster, dagster-daemon answer --version with exit 0 and version {data['dagster']['version']}.")
    assert "dagster-webserver-debug (without --version) exists and is executable" in \
        data["dagster-webserver"]["tests"]["version"]["description"]
    # A package does not depend on itself through the argument its tests take.
    assert "dagster" not in data["dagster"]["deps"]


def test_runcommand_keeps_passthru_and_meta_without_changing_the_derivation():
    bootstrap = f"(import {NIX_DIR}/bootstrap {{}})"
    assert nix_eval(
        f"let b = {bootstrap}; "
        "plain = b.runCommand \"x\" { a = \"1\"; } \"echo > $out\"; "
        "rich = b.runCommand \"x\" { a = \"1\"; passthru = { blocking = true; }; "
        "meta.description = \"d\"; } \"echo > $out\"; "
        "in [ (plain.drvPath == rich.drvPath) rich.blocking rich.meta.description (plain ? meta) ]"
    ) == [True, True, "d", False]
    # Each package's tests are its attribute `tests` and `passthru.tests` alike, as in nixpkgs.
    expr = (f"let s = import {NIX_DIR} {{}}; in builtins.mapAttrs (n: p: [ p.drvPath "
            "(builtins.attrNames (p.tests or {})) (p.passthru.tests or null == p.tests or null) ]) s")
    data = nix_eval(expr)
    assert {attr: names for attr, (_, names, _) in data.items()} == {a: sorted(t) for a, t in TESTS.items()}
    assert all(same for _, _, same in data.values())


def test_the_nixpkgs_scope_wires_the_same_tests():
    """No nixpkgs here: the nixpkgs code path against the bootstrap scope's same names gives the same tests."""
    both = nix_eval(
        f"let a = import {NIX_DIR} {{ scope = \"bootstrap\"; }}; "
        f"b = import {NIX_DIR} {{ scope = \"nixpkgs\"; pkgs = import {NIX_DIR}/bootstrap {{}}; }}; "
        "f = s: builtins.mapAttrs (n: p: builtins.mapAttrs (t: d: d.drvPath) (p.tests or {})) s; in [ (f a) (f b) ]")
    assert both[0] == both[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("withoutVersion = [ \"nope\" ];", "withoutVersion names nope, which is not among the executables"),
        ("executables = [ ];", "no executables to check"),
        ("withoutVersion = [ \"dagster\" \"dagster-daemon\" ];", "at least one must answer --version"),
    ],
)
def test_a_version_test_that_cannot_check_anything_fails_at_evaluation(args: str, message: str):
    expr = (f"let s = import {NIX_DIR} {{}}; t = import {NIX_DIR}/package-tests.nix "
            f"{{ inherit (import {NIX_DIR}/bootstrap {{}}) runCommand python3; }}; "
            f"in (t.version {{ package = s.dagster; {args} }}).drvPath")
    proc = run(["nix-instantiate", "--eval", "-E", expr])
    assert proc.returncode != 0
    assert message in proc.stderr


def test_a_package_whose_tests_throw_is_an_evaluation_failure(nix_copy: Path):
    edit(nix_copy / "packages/dagster-pipes.nix",
         "imports = packageTests.imports { package = dagster-pipes; };", "imports = throw \"tests of pipes broke\";")
    proc = graph(nix_copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)["packages"]
    assert data["dagster-pipes"]["evalFailed"] is True and data["dagster-pipes"]["tests"] == {}
    assert data["dagster"]["evalFailed"] is False and sorted(data["dagster"]["tests"]) == ["imports", "version"]
    alone = graph(nix_copy, only="dagster-pipes")
    assert alone.returncode != 0 and "tests of pipes broke" in alone.stderr


def test_every_test_of_one_package_passes_and_says_what_it_checked():
    proc = nix_build(NIX_DIR, "dagster-pipes.tests.imports")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip())
    package = nix_build(NIX_DIR, "dagster-pipes").stdout.strip()
    lines = out.read_text().splitlines()
    assert lines[0] == f"imports {package}"
    assert lines[1].startswith(f"dagster_pipes {package}/lib/python3")


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        # A module nothing provides.
        ('[ "dagster_pipes" "no_such_module_here" ]',
         ["`import no_such_module_here`: ModuleNotFoundError",
          "module 'no_such_module_here' is not in the package's closure and no known Nix input provides it"]),
        # A module a pinned wheel provides, but not in this package's closure: the fix is named.
        ('[ "yaml" ]', ["`import yaml`", ("module 'yaml' is not in the package's closure: it is provided by "
                                          "python3Packages.pyyaml, add that to the package's dependencies")]),
    ],
    ids=["unknown", "known"],
)
def test_an_imports_test_of_a_module_outside_the_closure_fails_naming_it(
    nix_copy: Path, modules: str, expected: list[str]
):
    edit(nix_copy / "packages/dagster-pipes.nix", "packageTests.imports { package = dagster-pipes; }",
         f"packageTests.imports {{ package = dagster-pipes; modules = {modules}; }}")
    proc = nix_build(nix_copy, "dagster-pipes.tests.imports")
    assert proc.returncode != 0
    assert "error: dagster-pipes test imports failed:" in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]


def test_a_version_test_expecting_another_version_fails(nix_copy: Path):
    edit(nix_copy / "packages/dagster-graphql.nix", "packageTests.version { package = dagster-graphql; }",
         "packageTests.version { package = dagster-graphql; version = \"9.9.9\"; }")
    proc = nix_build(nix_copy, "dagster-graphql.tests.version")
    assert proc.returncode != 0
    assert "error: dagster-graphql test version failed: dagster-graphql --version printed 'dagster-graphql, version" \
        in proc.stderr, proc.stderr[-3000:]
    assert "expected version 9.9.9" in proc.stderr


def test_an_executable_without_version_must_be_declared(nix_copy: Path):
    edit(nix_copy / "packages/dagster-webserver.nix", " withoutVersion = [ \"dagster-webserver-debug\" ];", "")
    proc = nix_build(nix_copy, "dagster-webserver.tests.version")
    assert proc.returncode != 0
    assert "dagster-webserver-debug has no --version option (exit 2" in proc.stderr, proc.stderr[-3000:]
    assert "declare it in withoutVersion" in proc.stderr


# A stand-in for dagster-webserver: answers /server_info but 500 on / ("answer"), or never answers
# ("silent"); either way it starts a child, as the real one starts its code server.
FAKE_SERVER = """\
import http.server, subprocess, sys, time
port = int(sys.argv[sys.argv.index("-p") + 1])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}-child"])
if "{mode}" == "silent":
    time.sleep(600)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status, body = (200, b'{{"dagster_webserver_version": "0"}}') if self.path == "/server_info" else (500, b"oops")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def fake_webserver_test(tmp_path: Path, mode: str, marker: str) -> str:
    server = tmp_path / "server.py"
    server.write_text(FAKE_SERVER.format(marker=marker, mode=mode))
    return (
        f"let b = import {NIX_DIR}/bootstrap {{}}; t = import {NIX_DIR}/package-tests.nix "
        "{ inherit (b) runCommand python3; }; "
        f"fake = b.runCommand \"fake-webserver-{marker}\" {{ server = /. + {json.dumps(str(server))}; }} ''\n"
        "  mkdir -p $out/bin\n"
        "  { echo \"#!${b.python3}/bin/python3 -BIS\"; cat $server; } > $out/bin/dagster-webserver\n"
        "  chmod +x $out/bin/dagster-webserver\n"
        "''; in t.webserver { package = fake; timeout = 8; }"
    )


def processes_with(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if marker in line]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("answer", ["/ answered HTTP 500", "has no dagster_webserver/webapp/build (the compiled UI)",
                    "/server_info: HTTP 200"]),
        ("silent", ["the webserver did not answer within 8 s", "statuses: no answer"]),
    ],
)
def test_a_webserver_that_does_not_serve_the_ui_fails_and_is_stopped(tmp_path: Path, mode: str, expected: list[str]):
    marker = f"fakews{uuid.uuid4().hex[:12]}"
    proc = run(["nix-build", "-E", fake_webserver_test(tmp_path, mode, marker), "--no-out-link"])
    assert proc.returncode != 0
    assert "error: fake-webserver-" in proc.stderr and "test webserver failed" in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]
    # The server and its child were stopped by the test itself, before its builder exited.
    assert "test webserver: webserver stopped" in proc.stderr
    assert processes_with(marker) == []


@pytest.mark.slow
def test_the_tests_of_the_whole_set_pass_and_write_nothing_into_the_store():
    proc = nix_build(NIX_DIR, *ALL_TESTS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    outs = dict(zip(ALL_TESTS, proc.stdout.split(), strict=False))
    packages = dict(zip(TESTS, nix_build(NIX_DIR, *TESTS).stdout.split(), strict=False))
    version = nix_eval(f"(import {NIX_DIR} {{}}).dagster.version")
    for attr, out in outs.items():
        package, _, name = attr.split(".")
        assert Path(out).read_text().splitlines()[0] == f"{name} {packages[package]}"
    assert f"dagster-daemon --version: exit 0, prints {version}" in Path(outs["dagster.tests.version"]).read_text()
    assert "dagster-webserver-debug exists and is executable (no --version)" in \
        Path(outs["dagster-webserver.tests.version"]).read_text()
    assert "/ HTTP 200 the UI's HTML" in Path(outs["dagster-webserver.tests.webserver"]).read_text()
    # Importing and running the packages wrote nothing into their closures.
    closure = subprocess.run(["nix-store", "-qR", *packages.values()], capture_output=True, text=True,
                             check=True).stdout.split()
    verify = subprocess.run(["nix-store", "--verify-path", *closure], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr[-3000:]


@pytest.mark.parametrize("attr", ["dagster-pipes.tests.imports", "dagster.tests.version",
                                  "dagster-webserver.tests.webserver"])
def test_a_passing_test_rebuilds_to_the_same_output(attr: str):
    built = nix_build(NIX_DIR, attr)
    assert built.returncode == 0, built.stderr[-3000:]
    rebuilt = run(["nix", "build", "--rebuild", "--no-link", "-f", str(NIX_DIR), attr])
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]


@pytest.mark.parametrize("attr", ["dagster-shared.tests.imports", "dagster-graphql.tests.version",
                                  "dagster-webserver.tests.webserver"])
def test_the_tests_build_in_the_sandbox(attr: str):
    """The sandbox forced on per call, with the host paths the product declares (NIX_ENV): built, then
    built again inside it (--check), which also compares the outputs."""
    built = nix_build(NIX_DIR, attr)
    assert built.returncode == 0, built.stderr[-3000:]
    checked = nix_build(NIX_DIR, attr, extra=("--check", *SANDBOX_ON))
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "passed" in checked.stderr
