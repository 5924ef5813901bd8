"""The source pin of a package set as its builds report it: ``<nix_dir>/pins.json`` read leniently (the one
reading of it outside :mod:`dagster_nix_builder.upstream.pins`, which validates and writes it) and one line
saying what the packages are built from. Materializations and provenance documents both state it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def read_source(nix_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The source pin of the package set (``<nix_dir>/pins.json``), if present and a JSON object."""
    pins = Path(nix_dir) / "pins.json"
    try:
        data = json.loads(pins.read_text()) if pins.is_file() else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def describe_source(pins: Mapping[str, Any] | None) -> str:
    """One line saying what the packages are built from."""
    if not pins:
        return "unknown (no pins.json)"
    kind = pins.get("source")
    if kind == "git":
        git = pins.get("git") or {}
        return f"git {git.get('url')} rev {git.get('rev')} hash {git.get('hash')}"
    if kind == "release":
        return f"release {(pins.get('release') or {}).get('version')}"
    return f"{kind}"
