"""The settings passed to Nix per invocation: which host paths the bootstrap scope declares."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dagster_nix_builder.nix.settings import (
    DEFAULT_NIX_CONFIG,
    bootstrap_sandbox_paths,
    local_upstreams,
    nix_config_for_scope,
)


@pytest.fixture
def clean_pip_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_programs_and_the_interpreter_are_declared_but_never_bin(clean_pip_env):
    paths = bootstrap_sandbox_paths("/usr/bin/python3")
    assert "/usr" in paths
    # Nix mounts /bin/sh inside the sandbox's /bin; through a bind of the host's /bin it would overwrite the
    # host's shell. Only /bin/sh itself is declared, as a real file (a copied symlink would dangle).
    sources = [p.split("=", 1)[-1] for p in paths]
    assert not [s for s in sources if s == "/bin" or s.startswith("/bin/")]
    shell = [p for p in paths if p.startswith("/bin/sh=")]
    assert shell == [f"/bin/sh={os.path.realpath('/bin/sh')}"] and not os.path.islink(shell[0].split("=")[1])
    assert len(paths) == len(set(paths))


def test_an_interpreter_outside_usr_brings_its_prefix(tmp_path: Path, clean_pip_env):
    python = tmp_path / "py" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.symlink_to("/usr/bin/python3")  # resolved: its real prefix is /usr, already declared
    assert str(tmp_path / "py") not in bootstrap_sandbox_paths(str(python))
    real = tmp_path / "opt" / "bin" / "python3.13"
    real.parent.mkdir(parents=True)
    real.write_text("")
    assert str(tmp_path / "opt") in bootstrap_sandbox_paths(str(real))


def test_local_pip_locations_are_declared_remote_ones_are_not(tmp_path: Path, monkeypatch, clean_pip_env):
    wheels, index = tmp_path / "wheels", tmp_path / "index"
    wheels.mkdir()
    index.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", f"{wheels} {tmp_path / 'missing'}")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nextra-index-url = file://{index} https://example.invalid/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    paths = bootstrap_sandbox_paths()
    assert {str(wheels), str(index), str(config)} <= set(paths)
    assert str(tmp_path / "missing") not in paths
    assert not [p for p in paths if "example.invalid" in p]


@pytest.mark.parametrize("form", ["path", "file-url", "remote"])
def test_a_local_git_upstream_is_declared(tmp_path: Path, form: str):
    upstream = tmp_path / "upstream.git"
    upstream.mkdir()
    url = {"path": str(upstream), "file-url": f"file://{upstream}", "remote": "https://example.invalid/x.git"}[form]
    (tmp_path / "pins.json").write_text(json.dumps({"source": "git", "git": {"url": url}}))
    assert local_upstreams(tmp_path) == ([] if form == "remote" else [str(upstream)])
    assert (str(upstream) in bootstrap_sandbox_paths(nix_dir=tmp_path)) == (form != "remote")


def test_a_broken_pins_file_declares_nothing_and_leaves_the_error_to_nix(tmp_path: Path):
    (tmp_path / "pins.json").write_text("{not json")
    assert local_upstreams(tmp_path) == []


def test_only_the_bootstrap_scope_gets_host_paths():
    assert nix_config_for_scope(DEFAULT_NIX_CONFIG, "nixpkgs") == DEFAULT_NIX_CONFIG  # stays pure
    bootstrap = nix_config_for_scope(DEFAULT_NIX_CONFIG, "bootstrap")
    assert bootstrap.startswith(DEFAULT_NIX_CONFIG + "\n")
    assert bootstrap.splitlines()[-1].startswith("extra-sandbox-paths = /usr")
