"""The repository's package set as the tests see it: one attribute per file of nix/packages/ (the set is
data, so tests count files instead of repeating names)."""

from __future__ import annotations

from pathlib import Path

NIX_DIR = Path(__file__).resolve().parent.parent / "nix"
PACKAGES: tuple[str, ...] = tuple(sorted(p.stem for p in (NIX_DIR / "packages").glob("*.nix")))
# The six packages of the hand-run report, which the slower end-to-end tests build (a subset of the set).
SIX = ("dagster-src", "dagster-shared", "dagster-pipes", "dagster", "dagster-graphql", "dagster-webserver")
