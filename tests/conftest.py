"""Shared fixtures: tiny real package sets built by the real Nix, and a fresh salt per test so every test
builds its own derivations."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from dagster_nix_builder import NixResource

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"
PYSET = FIXTURES / "pyset"
REPO_NIX = Path(__file__).resolve().parent.parent / "nix"


STORE = Path("/nix/store")
STORE_BEFORE = pytest.StashKey[set]()


def pytest_sessionstart(session):
    # What the store held before the suite: test_zz_store_integrity.py verifies everything added since.
    session.config.stash[STORE_BEFORE] = set(STORE.iterdir()) if STORE.is_dir() else set()


def pytest_collection_modifyitems(config, items):
    if shutil.which("nix") is None:
        skip = pytest.mark.skip(reason="nix is not installed (apt-get install nix-bin)")
        for item in items:
            if "needs_nix" in item.keywords or item.fspath.basename in {
                "test_graph.py", "test_build.py", "test_assets.py", "test_results.py", "test_definitions.py",
                "test_nix_calls.py", "test_orphans.py", "test_package_sources.py",
            }:
                item.add_marker(skip)


@pytest.fixture
def salt() -> str:
    """A fresh value of the package sets' ``salt`` argument: new derivations, so a real build."""
    return uuid.uuid4().hex


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A private copy of the tiny package set (tests may add or break expressions)."""
    dest = tmp_path / "tiny"
    shutil.copytree(TINY, dest)
    return dest


@pytest.fixture
def make_nix(tmp_path: Path, salt: str):
    """Factory of a NixResource on a fixture set with a fresh salt and a private out-link folder."""

    def make(nix_dir: Path = TINY, **nix_args: str) -> NixResource:
        return NixResource(
            nix_dir=str(nix_dir),
            out_link_dir=str(tmp_path / "results"),
            nix_args={"salt": salt, **nix_args},
        )

    return make
