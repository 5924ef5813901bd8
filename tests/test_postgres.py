"""dagster-postgres' check against a real PostgreSQL (nix/package-tests.nix, ``packageTests.postgres``): the host's
Debian PostgreSQL on loopback, the Nix-built dagster CLI migrating an instance stored there, a materialization
read back; built with the real Nix in the bootstrap scope (sandbox on too), and failing with a clear message when
it cannot work."""

from __future__ import annotations

import glob
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
ATTR = "dagster-postgres.tests.postgres"
NIX_ENV = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(nix_dir=NIX_DIR), "NIX_PATH": ""}
SANDBOX_ON = ["--option", "sandbox", "true", "--option", "sandbox-fallback", "false"]
HOST_MAJORS = sorted((Path(p).parts[-3] for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")),
                     key=lambda v: [int(x) for x in v.split(".")])

pytestmark = [
    pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed"),
    pytest.mark.skipif(not HOST_MAJORS, reason="no PostgreSQL from Debian (scripts/setup.sh installs it)"),
]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=NIX_ENV, check=False)


def build_test(args: str, *extra: str) -> subprocess.CompletedProcess:
    """packageTests.postgres { <args> } with the bootstrap scope's python3 and postgresql."""
    expr = (f"let s = import {NIX_DIR} {{ scope = \"bootstrap\"; }}; b = import {NIX_DIR}/bootstrap {{}}; "
            f"t = import {NIX_DIR}/package-tests.nix {{ inherit (b) runCommand python3 postgresql; }}; "
            f"in t.postgres {{ {args} }}")
    return run(["nix-build", "-E", expr, "--no-out-link", *extra])


def processes_with(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if marker in line]


def test_the_bootstrap_postgresql_borrows_the_newest_debian_postgresql():
    expr = f"let p = (import {NIX_DIR}/bootstrap {{}}).postgresql; in [ p.name p.version ]"
    proc = run(["nix-instantiate", "--eval", "--json", "--strict", "-E", expr])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == [f"postgresql-host-{HOST_MAJORS[-1]}", HOST_MAJORS[-1]]
    built = run(["nix-build", "-E", f"(import {NIX_DIR}/bootstrap {{}}).postgresql", "--no-out-link"])
    assert built.returncode == 0, built.stderr[-3000:]
    for program in ("initdb", "postgres", "pg_ctl", "psql"):
        link = Path(built.stdout.strip()) / "bin" / program
        assert os.readlink(link) == f"/usr/lib/postgresql/{HOST_MAJORS[-1]}/bin/{program}"


def test_the_check_is_wired_non_blocking_in_both_scopes():
    expr = (f"let a = import {NIX_DIR} {{ scope = \"bootstrap\"; }}; "
            f"n = import {NIX_DIR} {{ scope = \"nixpkgs\"; pkgs = import {NIX_DIR}/bootstrap {{}}; }}; "
            "t = a.dagster-postgres.tests.postgres; "
            "in [ t.blocking t.meta.description (t.drvPath == n.dagster-postgres.tests.postgres.drvPath) ]")
    proc = run(["nix-instantiate", "--eval", "--json", "--strict", "-E", expr])
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocking, description, same = json.loads(proc.stdout)
    assert blocking is False and same is True
    assert description.startswith("The Nix-built dagster CLI migrates") and description.endswith(".")


@pytest.mark.slow
def test_dagster_postgres_migrates_and_uses_an_instance_in_a_real_postgresql():
    built = run(["nix-build", str(NIX_DIR), "--argstr", "scope", "bootstrap", "-A", ATTR, "--no-out-link"])
    assert built.returncode == 0, built.stderr[-4000:]
    # Built again inside Nix's sandbox (the host paths the product declares): the same output.
    checked = run(["nix-build", str(NIX_DIR), "--argstr", "scope", "bootstrap", "-A", ATTR, "--no-out-link",
                   "--check", *SANDBOX_ON])
    assert checked.returncode == 0, checked.stderr[-4000:]
    log = checked.stderr
    for text in ("dagster-postgres test postgres: initdb (trust authentication",
                 "dagster-postgres test postgres: process 1: the Nix-built dagster CLI",
                 "`dagster instance migrate`",
                 "storages dagster_postgres.run_storage.run_storage.PostgresRunStorage",
                 "migrated: database dagster_nix_test has tables",
                 "read back: run status SUCCESS, 1 run(s) in the instance, latest materialization of "
                 "nix_postgres_check from run",
                 "psql: runs has 1 row(s) of the run; event_logs has 1 ASSET_MATERIALIZATION row(s) of it",
                 "dagster-postgres test postgres: postgres stopped",
                 "dagster-postgres test postgres: passed"):
        assert text in log, log[-4000:]
    package = run(["nix-build", str(NIX_DIR), "--argstr", "scope", "bootstrap", "-A", "dagster-postgres",
                   "--no-out-link"]).stdout.strip()
    lines = Path(built.stdout.strip()).read_text().splitlines()
    assert lines[0] == f"postgres {package}"
    assert lines[1] == (f"PostgreSQL {HOST_MAJORS[-1].split('.')[0]} on 127.0.0.1, database dagster_nix_test, "
                        "scheme postgresql+psycopg2, trust authentication")
    assert "event_logs" in lines[3].split() and "runs" in lines[3].split()
    assert "materialize nix_postgres_check: run SUCCESS; read back: run SUCCESS, its ASSET_MATERIALIZATION" in lines


def test_without_dagster_postgres_in_the_closure_the_migration_fails_naming_it():
    """dagster alone (no dagster_postgres): postgres starts, the CLI cannot load the instance's storage."""
    marker = f"pgtest_{uuid.uuid4().hex[:12]}"
    proc = build_test(f"package = s.dagster; database = \"{marker}\";")
    assert proc.returncode != 0
    assert "error: dagster test postgres failed: migrate (dagster instance migrate) exited 1" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Hint: module 'dagster_postgres' is not in the closure of" in proc.stderr
    # Stopped by the test itself, on failure too: no postgres of its cluster is left.
    assert "dagster test postgres: postgres stopped" in proc.stderr
    assert processes_with(marker) == []


def test_the_plain_postgresql_scheme_needs_psycopg_3_which_dagster_postgres_lacks():
    """A real finding: SQLAlchemy 2.1 maps postgresql:// to psycopg (3); dagster-postgres requires psycopg2-binary."""
    database = f"pg_{uuid.uuid4().hex[:8]}"
    proc = build_test(f"package = s.dagster-postgres; scheme = \"postgresql\"; database = \"{database}\";")
    assert proc.returncode != 0
    assert "No module named 'psycopg'" in proc.stderr, proc.stderr[-3000:]
    assert "Hint: the scheme postgresql:// made SQLAlchemy load psycopg (3)" in proc.stderr
    assert "use postgresql+psycopg2 (postgres_db.scheme)" in proc.stderr


@pytest.mark.parametrize(
    ("postgresql", "expected"),
    [
        ("postgresql = null;", "no PostgreSQL to test against: package-tests.nix was imported without `postgresql`"),
        ("postgresql = b.runCommand \"not-a-postgresql\" { } \"mkdir -p $out/bin\";",
         "/bin has no runnable initdb, postgres, psql: the postgresql input is not a PostgreSQL server "
         "(bootstrap scope: apt-get install postgresql"),
    ],
    ids=["missing", "no-server"],
)
def test_without_a_postgresql_the_check_fails_saying_what_is_missing(postgresql: str, expected: str):
    proc = build_test(f"package = s.dagster-postgres; {postgresql}")
    assert proc.returncode != 0
    assert "error: dagster-postgres test postgres failed: " in proc.stderr, proc.stderr[-3000:]
    assert expected in proc.stderr, proc.stderr[-3000:]


def test_the_package_files_default_test_helpers_take_postgresql_when_given():
    """Under callPackage without our context (Flox), dagster-postgres.nix imports package-tests.nix itself."""
    expr = (f"let b = import {NIX_DIR}/bootstrap {{}}; s = import {NIX_DIR} {{ scope = \"bootstrap\"; }}; "
            f"f = import {NIX_DIR}/packages/dagster-postgres.nix; "
            "args = { inherit (b) python3Packages runCommand python3; "
            "inherit (s) dagster-src dagster dagster-postgres; }; "
            "in [ (f args).tests.postgres.postgresql "
            "((f (args // { inherit (b) postgresql; })).tests.postgres.drvPath "
            "== s.dagster-postgres.tests.postgres.drvPath) ]")
    proc = run(["nix-instantiate", "--eval", "--json", "--strict", "-E", expr])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == ["", True]
