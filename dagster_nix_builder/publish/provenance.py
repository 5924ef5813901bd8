"""Provenance: what a downstream user needs to trust a publication, as one JSON document.

:func:`provenance` records, for one package as it is in the store: the source (a Dagster release with the
hash of each sdist, or a git URL, revision and hash — read from ``pins.json`` by
:mod:`~dagster_nix_builder.nix.source`), the derivation, each output with its NAR hash and sizes (``nix
path-info --json``), the Nix version, the scope, the builder host, the name of the signing key and where it
was published, with a UTC timestamp. :func:`write_provenance` writes it atomically. No Dagster import.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixBuilderError
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph
from dagster_nix_builder.nix.source import describe_source, read_source

SCHEMA = "dagster-nix-builder/provenance/1"


class ProvenanceError(NixBuilderError):
    """The provenance of a package cannot be stated (e.g. its outputs are not in the store)."""


# ---- the source pin -------------------------------------------------------------------------------


def source_record(nix_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The source part of a provenance document: what is built, pinned by which hashes.

    ``{"kind": "release", "version", "sdists": {name: SRI hash}}`` or ``{"kind": "git", "url", "rev",
    "hash", "branch"}``, plus ``description`` and ``pins_sha256`` (of ``pins.json`` as it is now), or
    ``{"kind": "unknown"}`` without a readable ``pins.json``.
    """
    pins = read_source(nix_dir)
    record: dict[str, Any] = {"kind": str(pins.get("source")) if pins else "unknown"}
    if pins and pins.get("source") == "release":
        release = pins.get("release") or {}
        record |= {"version": release.get("version"), "sdists": dict(release.get("hashes") or {})}
    elif pins and pins.get("source") == "git":
        git = pins.get("git") or {}
        record |= {key: git.get(key) for key in ("url", "rev", "hash", "branch")}
    record["description"] = describe_source(pins)
    if pins is not None:
        record["pins_sha256"] = hashlib.sha256((Path(nix_dir) / "pins.json").read_bytes()).hexdigest()
    return record


# ---- the document ---------------------------------------------------------------------------------


def provenance(
    cli: NixCli,
    graph: NixPackageGraph,
    package: NixPackage,
    *,
    key_name: str | None,
    builder_host: str,
    published_to: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance document of ``package`` (see the module docstring); its outputs must be valid.

    Args:
        key_name: the name of the key the publication is signed with (``name`` of ``name:base64``), or None.
        builder_host: the host that built and published it.
        published_to: where it went, e.g. ``{"cache": url, "index": url}``.

    Raises:
        ProvenanceError: an output is not valid in the store (build the package first).
    """
    paths = list(package.outputs.values())
    info = cli.path_info(paths)
    missing = [path for path in paths if path not in info]
    if not paths or missing:
        raise ProvenanceError(
            f"{package.attr} is not built ({', '.join(missing) or 'no outputs'} not valid in the store): build it "
            "first; its provenance names the NAR hash of every output."
        )
    outputs = {
        name: {
            "path": path,
            "narHash": info[path].get("narHash"),
            "narSize": info[path].get("narSize"),
            "closureSize": info[path].get("closureSize"),
            "references": sorted(info[path].get("references") or []),
        }
        for name, path in sorted(package.outputs.items())
    }
    return {
        "schema": SCHEMA,
        "package": {"attr": package.attr, "pname": package.pname, "version": package.version},
        "source": source_record(graph.nix_dir),
        "derivation": package.drv_path,
        "outputs": outputs,
        "nix_version": cli.nix_version().text,
        "scope": str(cli.scope) if cli.scope else None,
        "nix_args": {k: v for k, v in cli.package_args().items() if k != "scope"},
        "builder_host": builder_host,
        "signature_key_name": key_name,
        "published_to": dict(published_to),
        "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }


def write_provenance(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (temporary file in the same directory, fsync, rename):
    a reader sees the old document or the new one, never half of one. Creates the directory. Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = [
    "SCHEMA", "ProvenanceError", "describe_source", "provenance", "read_source", "source_record", "write_provenance",
]
