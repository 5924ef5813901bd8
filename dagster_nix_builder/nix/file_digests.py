"""Digests of the files a package set's evaluation reads, computed without Nix: a component compares them
with those of its state to tell whether the graph must be asked of Nix again. The set's own folder
(:func:`tree_digest`) and what its packages take from outside it (``passthru.localSources``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def tree_digest(path: Path, *, exclude: Iterable[str] = (), suffixes: Iterable[str] = ()) -> str:
    """Content hash of the file ``path`` or of every file under it (relative paths and bytes, sorted order),
    leaving out ``.git`` and any file or directory named in ``exclude`` or ending in one of ``suffixes``."""
    skip, ends = {".git", *exclude}, tuple(suffixes)
    digest = hashlib.sha256()
    files = [path] if not path.is_dir() else []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.endswith(ends))
        files += [Path(root) / n for n in sorted(names) if n not in skip and not n.endswith(ends)]
    for file in files:
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        try:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        except OSError as exc:  # a dangling out-link, a missing file: its absence is its content
            digest.update(f"unreadable: {exc.__class__.__name__}".encode())
    return digest.hexdigest()


def local_sources(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the packages of an :func:`evaluate_package_set` document take from outside the package-set
    directory: each one's ``passthru.localSources`` (``root``, ``include``, ``exclude``, ``excludeSuffixes``:
    the rules of its ``builtins.path`` filter, e.g. this project's own package), in a stable order."""
    found = [info["localSources"] for info in document.get("packages", {}).values() if info.get("localSources")]
    return sorted(found, key=lambda spec: json.dumps(spec, sort_keys=True))


def local_sources_digest(sources: Iterable[Mapping[str, Any]]) -> str:
    """Content hash of the files ``sources`` select, by the rules their Nix filter applies: every path of
    ``include`` under ``root`` (a directory with all beneath it) but names in ``exclude`` (at any depth) and
    names ending in one of ``excludeSuffixes``. Without Nix, so a component's fingerprint can include it."""
    digest = hashlib.sha256()
    for spec in sources:
        digest.update(json.dumps(spec, sort_keys=True).encode())
        exclude, suffixes = spec.get("exclude", ()), spec.get("excludeSuffixes", ())
        for top in spec.get("include", ()):
            path = Path(spec["root"]) / top
            taken = path.exists() and path.name not in exclude and not path.name.endswith(tuple(suffixes))
            digest.update(f"{top}\0".encode())
            digest.update(tree_digest(path, exclude=exclude, suffixes=suffixes).encode() if taken else b"absent")
    return digest.hexdigest()
