"""The package set's Requires-Dist against nixpkgs' versions (nixpkgs_versions.py).

The unit tests assert the comparison on hand-made METADATA. The Nix tests evaluate the real expressions,
ask a stand-in nixpkgs (a tiny fake ``pkgs``: nixpkgs itself cannot be fetched here) and build the five
wheels for real, checking them against the recorded versions of nixpkgs (../shared/nixpkgs/python-versions.json)
with markers for nixpkgs' python3, so the next Dagster release's new bound fails here, not on a user's machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from repo_packages import PACKAGES

from dagster_nix_builder.nix import nixpkgs_versions as nv

REPO = Path(__file__).resolve().parent.parent
NIX_DIR = REPO / "nix"
RECORD = REPO.parent / "shared" / "nixpkgs" / "python-versions.json"
# python3Packages attributes the expressions take whose nixpkgs versions the record does not hold (their bounds
# would be unverified against nixpkgs here: README, "What cannot be verified here"). None since the refreshed
# record added the 13 the five packages added after the six (and this project's own) take.
NOT_RECORDED: set[str] = set()

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix is not installed")
needs_record = pytest.mark.skipif(not RECORD.is_file(), reason=f"{RECORD} is not there")


def metadata(name: str, version: str, *requires: str) -> str:
    return "Metadata-Version: 2.4\nName: {}\nVersion: {}\n{}\n".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )


# --- the comparison -------------------------------------------------------------------------------------

def test_a_violated_bound_is_reported_verbatim():
    result = nv.compare([metadata("dagster", "1.0", "coloredlogs<=14.0,>=6.1", "click<9")],
                        {"coloredlogs": "15.0.1", "click": "8.3.3"}, "3.14")
    assert result.violated == [nv.Unmet("dagster", "coloredlogs<=14.0,>=6.1", "coloredlogs", "15.0.1")]
    assert not result.missing and not result.ok


def test_markers_are_evaluated_for_the_target_python_with_extras_off():
    meta = metadata(
        "dagster", "1.0",
        "grpcio<1.50; python_version < '3.13'",      # excluded for 3.14
        "grpcio>=1.66.2; python_version >= '3.13'",  # applies
        "pywin32!=226; platform_system == 'Windows'",
        "pytest>=99; extra == 'test'",
    )
    assert nv.compare([meta], {"grpcio": "1.78.0"}, "3.14").ok
    # The same metadata for 3.12: the first requirement applies and is violated.
    assert [u.requirement for u in nv.compare([meta], {"grpcio": "1.78.0"}, "3.12").violated] == [
        "grpcio<1.50; python_version < '3.13'"
    ]


def test_a_relaxed_name_is_not_a_violation_but_a_missing_one_still_fails():
    meta = metadata("dagster", "1.0", "Coloredlogs<=14.0", "toposort>=1.0")
    result = nv.compare([meta], {"coloredlogs": "15.0.1"}, "3.14", {"dagster": ["coloredlogs"]})
    assert result.violated == [] and result.unneeded_relaxes == []
    assert result.missing == [nv.Unmet("dagster", "toposort>=1.0", "toposort", None)]
    assert "missing: dagster: requires 'toposort>=1.0', but toposort is not provided" in result.report()


def test_a_relax_that_nothing_violates_is_reported_and_true_relaxes_all():
    meta = metadata("dagster", "1.0", "protobuf<7", "coloredlogs<=14.0")
    versions = {"protobuf": "6.33.1", "coloredlogs": "15.0.1"}
    result = nv.compare([meta], versions, "3.14", {"dagster": ["protobuf", "coloredlogs"]})
    assert result.ok and result.unneeded_relaxes == [("dagster", "protobuf")]
    assert nv.compare([meta], versions, "3.14", {"dagster": True}) == nv.Comparison()


def test_the_set_provides_its_own_packages_at_their_versions():
    shared = metadata("dagster_shared", "1.13.27")
    dagster = metadata("dagster", "1.13.27", "dagster-shared==1.13.27", "dagster-pipes==1.13.27")
    result = nv.compare([shared, dagster], {"dagster-shared": "0.1"}, "3.14")
    assert result.violated == []  # the set's own 1.13.27 wins over the map's
    assert [u.distribution for u in result.missing] == ["dagster-pipes"]


# --- asking Nix (evaluation only) -----------------------------------------------------------------------

def write_fake_nixpkgs(directory: Path, python3: str, versions: dict[str, str]) -> Path:
    """A stand-in for nixpkgs (not nixpkgs): `import <dir> {}` gives python3.pythonVersion and
    python3Packages.<attr>.version, plus one attribute that throws like a broken package."""
    attrs = "".join(f'    {json.dumps(a)}.version = {json.dumps(v)};\n' for a, v in versions.items())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.nix").write_text(
        "{ ... }: {\n"
        f'  python3.pythonVersion = "{python3}";\n'
        "  python3Packages = {\n"
        f"{attrs}"
        '    broken = throw "broken";\n'
        "  };\n"
        "}\n"
    )
    return directory


@needs_nix
def test_the_attributes_asked_of_nixpkgs_come_from_the_expressions():
    facts = nv.package_set_facts(NIX_DIR)
    assert {"dagster", "dagster-graphql", "dagster-pipes", "dagster-shared", "dagster-webserver", "dagster-dg-cli",
            "dagster-postgres"} <= set(facts) <= set(PACKAGES) - {"dagster-src"}
    attrs = {a for pkg in facts.values() for a in pkg["dependencies"]}
    assert {"coloredlogs", "gql", "requests-toolbelt", "uvicorn", "pyyaml", "psycopg2-binary", "typer"} <= attrs
    assert not attrs & set(facts)  # the set's own packages are not asked of nixpkgs
    if RECORD.is_file():  # the record covers every attribute the expressions take but NOT_RECORDED
        record = json.loads(RECORD.read_text())
        extras = set(record["gql_optional_dependencies_requests"] + record["uvicorn_optional_dependencies_standard"])
        assert attrs - extras - set(record["packages"]) <= NOT_RECORDED


@needs_nix
def test_ask_nixpkgs_reads_a_stand_in_nixpkgs(tmp_path):
    fake = write_fake_nixpkgs(tmp_path / "fake-nixpkgs", "3.14", {"coloredlogs": "15.0.1", "gql": "4.0.0"})
    python3, versions = nv.ask_nixpkgs(["coloredlogs", "gql", "absent", "broken"], fake)
    assert python3 == "3.14"
    assert versions == {"coloredlogs": "15.0.1", "gql": "4.0.0", "absent": None, "broken": None}


@needs_nix
def test_a_nixpkgs_that_does_not_evaluate_is_a_nix_command_error(tmp_path):
    (tmp_path / "default.nix").write_text("{ ... }: { }\n")  # no python3
    with pytest.raises(nv.NixCommandError, match="python3"):
        nv.ask_nixpkgs(["coloredlogs"], tmp_path)


# --- the real wheels against nixpkgs' recorded versions -------------------------------------------------

@pytest.mark.slow  # builds the set's wheels with the real Nix (~40 s cold; seconds when in the store)
@needs_nix
@needs_record
def test_the_wheels_meet_nixpkgs_recorded_versions(tmp_path, capsys):
    python3, versions = nv.versions_from_record(json.loads(RECORD.read_text()))
    result = nv.check_package_set(NIX_DIR, versions, python3)
    # What the record cannot answer is exactly NOT_RECORDED.
    assert {u.distribution for u in result.missing} == NOT_RECORDED, result.report()
    result.missing.clear()
    assert result.ok, (
        f"A nixpkgs-scope build would fail nixpkgs' runtime-deps check (python3 {python3}):\n{result.report()}\n"
        "Relax the name in that package's pythonRelaxDeps (nix/packages/<package>.nix) with a comment why."
    )
    # Exact: a relax nixpkgs does not need (the bootstrap scope's lock may still: say so if you keep one).
    assert result.unneeded_relaxes == [], result.report()

    # The command, against a stand-in nixpkgs (a fake pkgs) carrying the recorded versions, and for what the
    # record lacks (NOT_RECORDED) the versions our own wheel lock holds (a stand-in: nothing says nixpkgs has those).
    lock = json.loads((NIX_DIR / "bootstrap" / "wheels.json").read_text())
    wheels = next(t["wheels"] for t in lock["targets"].values() if t["python"] == python3)
    fake = write_fake_nixpkgs(tmp_path / "fake-nixpkgs", python3,
                              {**{n: wheels[n]["version"] for n in NOT_RECORDED}, **versions})
    assert nv.main(["--nixpkgs", str(fake), "--nix-dir", str(NIX_DIR)]) == 0
    out = capsys.readouterr().out
    assert f"(python3 {python3})" in out and "every Requires-Dist is met" in out
