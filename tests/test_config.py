"""Configuration of the `nix` resource: environment over file over defaults, and every bad input named by
file, line and key. In-process: ``resource_from_environment`` is what the code location calls."""

import shutil
from pathlib import Path

import pytest

from dagster_nix_builder.errors import NixConfigError
from dagster_nix_builder.resource import NixResource, read_config, resource_from_environment

pytestmark = pytest.mark.skipif(shutil.which("nix") is None, reason="nix is not installed")

DEFAULTS = {"nix_dir": "/repo/nix", "out_link_dir": "/repo/.nix-results"}


def _resource(tmp_path: Path, text: str | None, **environ: str) -> NixResource:
    config = tmp_path / "nix-builder.yaml"
    if text is not None:
        config.write_text(text)
    return resource_from_environment(environ, defaults=DEFAULTS, default_config=config)


def test_defaults_without_file_or_environment(tmp_path: Path):
    nix = _resource(tmp_path, None)
    assert (nix.nix_dir, nix.out_link_dir, nix.scope) == ("/repo/nix", "/repo/.nix-results", "auto")


def test_file_over_defaults_for_every_field_nix_dir_and_out_link_dir_included(tmp_path: Path):
    nix = _resource(tmp_path, "nix_dir: /elsewhere/nix\nout_link_dir: links\nscope: bootstrap\nmax_jobs: 3\n")
    assert nix.nix_dir == "/elsewhere/nix"
    assert nix.out_link_dir == str(tmp_path / "links")  # relative to the file's folder
    assert (nix.scope, nix.max_jobs) == ("bootstrap", 3)


def test_environment_over_file(tmp_path: Path):
    nix = _resource(
        tmp_path, "nix_dir: /from/file\nout_link_dir: /from/file-links\nscope: bootstrap\nmax_jobs: 3\n",
        DAGSTER_NIX_DIR="/from/env", DAGSTER_NIX_OUT_LINK_DIR="/from/env-links", DAGSTER_NIX_SCOPE="nixpkgs",
        DAGSTER_NIX_EXECUTABLE=shutil.which("nix") or "nix",
    )
    assert (nix.nix_dir, nix.out_link_dir, nix.scope) == ("/from/env", "/from/env-links", "nixpkgs")
    assert nix.max_jobs == 3  # not set in the environment: the file's


def test_named_file_over_the_default_file(tmp_path: Path):
    named = tmp_path / "other.yaml"
    named.write_text("scope: nixpkgs\n")
    nix = _resource(tmp_path, "scope: bootstrap\n", DAGSTER_NIX_CONFIG=str(named))
    assert nix.scope == "nixpkgs"


def test_env_values_in_the_file_are_read_at_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEST_DNB_CORES", "5")
    nix = _resource(tmp_path, "cores: {env: TEST_DNB_CORES}\n")
    assert nix.resolved("cores") == 5


def test_missing_named_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(NixConfigError) as excinfo:
        _resource(tmp_path, "scope: bootstrap\n", DAGSTER_NIX_CONFIG=str(missing))
    assert str(excinfo.value) == (
        f"DAGSTER_NIX_CONFIG names {missing}, which does not exist "
        f"(unset it to use {tmp_path / 'nix-builder.yaml'} if it exists, else the defaults)"
    )


def test_unknown_key_names_file_line_and_the_closest_key(tmp_path: Path):
    with pytest.raises(NixConfigError) as excinfo:
        _resource(tmp_path, "scope: bootstrap\nmax_job: 4\n")
    message = str(excinfo.value)
    assert message.startswith(f"{tmp_path / 'nix-builder.yaml'}:2: unknown key 'max_job'; did you mean 'max_jobs'?")
    assert "known keys: builders, cores, executable," in message


def test_wrong_types_name_file_line_and_key(tmp_path: Path):
    with pytest.raises(NixConfigError) as excinfo:
        _resource(tmp_path, "scope: bootstrap\nmax_jobs: four\nnix_args: [a, b]\n")
    path = tmp_path / "nix-builder.yaml"
    assert str(excinfo.value) == (
        "2 invalid NixResource values:\n"
        f"{path}:2: max_jobs: Input should be a valid integer, unable to parse string as an integer (got 'four')\n"
        f"{path}:3: nix_args: Input should be a valid dictionary (got ['a', 'b'])"
    )


def test_malformed_env_value(tmp_path: Path):
    with pytest.raises(NixConfigError) as excinfo:
        _resource(tmp_path, "builders: {env: 3}\n")
    assert str(excinfo.value) == (
        f"{tmp_path / 'nix-builder.yaml'}:1: builders: an environment variable is written {{env: NAME}}, "
        "not {'env': 3}"
    )


def test_yaml_error_names_file_and_line(tmp_path: Path):
    with pytest.raises(NixConfigError) as excinfo:
        _resource(tmp_path, "scope: bootstrap\nnix_args:\n  salt: [unclosed\n")
    assert str(excinfo.value) == (
        f"{tmp_path / 'nix-builder.yaml'}:4:1: invalid YAML: while parsing a flow sequence (line 3, "
        "column 9), expected ',' or ']', but got '<stream end>'"
    )
    assert "<unicode string>" not in str(excinfo.value)


def test_not_a_mapping(tmp_path: Path):
    with pytest.raises(NixConfigError) as excinfo:
        _resource(tmp_path, "- scope\n")
    assert str(excinfo.value) == (
        f"{tmp_path / 'nix-builder.yaml'}: expected a mapping of NixResource fields (lines `key: value`), not a list"
    )


def test_empty_file_is_the_defaults(tmp_path: Path):
    assert _resource(tmp_path, "# nothing yet\n").nix_dir == "/repo/nix"


def test_from_yaml_reads_the_same_way(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("nix_dir: sub\n")
    assert NixResource.from_yaml(config).nix_dir == str(tmp_path / "sub")
    assert read_config(config).lines == {"nix_dir": 1}
    with pytest.raises(NixConfigError, match=r"c\.yml: no such file"):
        NixResource.from_yaml(tmp_path / "c.yml")
