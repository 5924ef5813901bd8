"""Provenance with the real Nix: a small derivation built here, the repository's own pins, every field
present and equal to what `nix path-info` and `nix --version` say; the document written atomically."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import REPO_NIX

from dagster_nix_builder.adapters import results
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph
from dagster_nix_builder.nix.output import parse_path_info
from dagster_nix_builder.publish.provenance import (
    SCHEMA,
    ProvenanceError,
    describe_source,
    provenance,
    read_source,
    source_record,
    write_provenance,
)

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="Nix is not installed")

SET = textwrap.dedent(r"""
    { scope ? "auto", salt ? "" }:
    {
      tool = builtins.derivation {
        name = "tool-1.0"; pname = "tool"; version = "1.0"; inherit salt;
        outputs = [ "out" "dist" ];
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" ("export PATH=/usr/bin:/bin; mkdir -p $out/bin $dist; "
                       + "echo tool > $out/bin/tool; echo $out > $dist/ref") ];
      };
    }
""")
GIT_PINS = {
    "source": "git",
    "git": {"url": "file:///srv/dagster.git", "branch": "master", "rev": "a" * 40,
            "hash": "sha256-" + "B" * 43 + "=", "version": "1!0+dev"},
}


@pytest.fixture
def nix_set(tmp_path: Path, salt: str) -> tuple[NixCli, NixPackageGraph, NixPackage]:
    """The set with the repository's pins.json beside it, and its package (not built)."""
    nix_dir = tmp_path / "set"
    nix_dir.mkdir()
    (nix_dir / "default.nix").write_text(SET)
    shutil.copyfile(REPO_NIX / "pins.json", nix_dir / "pins.json")
    cli = NixCli(nix_dir=str(nix_dir), nix_args={"salt": salt}, out_link_dir=str(tmp_path / "results"))
    drv = cli.run(cli.instantiate_command(cli.package_dir, *cli.argstrs(), "-A", "tool")).stdout.strip()
    package = NixPackage("tool", (), drv_path=drv, outputs=cli.show_derivations([drv])[drv].outputs,
                         version="1.0", pname="tool")
    return cli, NixPackageGraph(str(nix_dir), {"tool": package}), package


def test_every_field_is_present_and_matches_nix(nix_set):
    cli, graph, package = nix_set
    cli.run(cli.store_command("--realise", str(package.drv_path)))
    doc = provenance(cli, graph, package, key_name="cache.example-1", builder_host="builder-7",
                     published_to={"cache": "http://127.0.0.1:1/cache"})
    assert set(doc) == {"schema", "package", "source", "derivation", "outputs", "nix_version", "scope", "nix_args",
                        "builder_host", "signature_key_name", "published_to", "timestamp"}
    assert doc["schema"] == SCHEMA
    assert doc["package"] == {"attr": "tool", "pname": "tool", "version": "1.0"}
    assert doc["derivation"] == package.drv_path and doc["derivation"].endswith(".drv")

    pins = json.loads((REPO_NIX / "pins.json").read_text())
    source = doc["source"]
    assert source["kind"] == pins["source"] == "release"
    assert source["version"] == pins["release"]["version"]
    assert source["sdists"] == pins["release"]["hashes"] and len(source["sdists"]) >= 10
    assert source["description"] == f"release {pins['release']['version']}"
    assert len(source["pins_sha256"]) == 64

    paths = sorted(package.outputs.values())
    command = ["nix", "path-info", *cli.nix_version().path_info_json(), *paths]
    proc = subprocess.run(command, capture_output=True, text=True, check=True, env=cli.subprocess_env())
    info = parse_path_info(proc.stdout)
    assert set(doc["outputs"]) == {"out", "dist"}
    for name, path in package.outputs.items():
        entry = doc["outputs"][name]
        assert entry["path"] == path
        assert entry["narHash"] == info[path]["narHash"] and entry["narHash"].startswith("sha256")
        assert entry["narSize"] == info[path]["narSize"] > 0
        assert entry["closureSize"] >= entry["narSize"]
    assert doc["outputs"]["dist"]["references"] == [package.outputs["out"]]

    version = subprocess.run(["nix", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert doc["nix_version"] == version
    assert doc["scope"] == "auto" and doc["nix_args"] == {"salt": cli.nix_args["salt"]}
    assert doc["builder_host"] == "builder-7" and doc["signature_key_name"] == "cache.example-1"
    assert doc["published_to"] == {"cache": "http://127.0.0.1:1/cache"}
    stamp = datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)
    json.dumps(doc)  # a JSON document as it is


def test_a_package_not_built_has_no_provenance(nix_set):
    cli, graph, package = nix_set
    with pytest.raises(ProvenanceError, match="tool is not built"):
        provenance(cli, graph, package, key_name=None, builder_host="h", published_to={})


def test_a_git_pin_gives_url_rev_and_hash(tmp_path: Path):
    (tmp_path / "pins.json").write_text(json.dumps(GIT_PINS))
    record = source_record(tmp_path)
    assert {k: record[k] for k in ("kind", "url", "rev", "hash", "branch")} == {
        "kind": "git", **{k: GIT_PINS["git"][k] for k in ("url", "rev", "hash", "branch")}}
    assert record["description"] == f"git file:///srv/dagster.git rev {'a' * 40} hash {GIT_PINS['git']['hash']}"


def test_without_pins_the_source_is_unknown(tmp_path: Path):
    assert read_source(tmp_path) is None and source_record(tmp_path) == {
        "kind": "unknown", "description": "unknown (no pins.json)"}
    (tmp_path / "pins.json").write_text("{not json")
    assert read_source(tmp_path) is None


def test_the_pins_are_read_in_one_place():
    assert results.read_source is read_source and results.describe_source is describe_source


def test_write_provenance_is_atomic_and_replaces(tmp_path: Path):
    where = tmp_path / "cache" / "provenance" / "tool-1.0.json"
    assert write_provenance({"a": 1}, where) == where
    assert json.loads(where.read_text()) == {"a": 1}
    write_provenance({"a": 2, "b": [1]}, where)
    assert json.loads(where.read_text()) == {"a": 2, "b": [1]}
    assert sorted(p.name for p in where.parent.iterdir()) == ["tool-1.0.json"]  # no temporary file left
    with pytest.raises(TypeError):
        write_provenance({"a": object()}, where)
    assert json.loads(where.read_text()) == {"a": 2, "b": [1]}
    assert sorted(p.name for p in where.parent.iterdir()) == ["tool-1.0.json"]
