"""What Nix prints, for every supported Nix (2.8 through current releases), in one place.

Each function here takes the text one Nix command printed and returns the same shape whatever the Nix
version; :class:`NixVersion` says which command line to use where versions differ. Pure: no processes, no
Dagster. Recorded outputs of real Nix versions are replayed against it in ``tests/test_nix_output.py``
(``tests/fixtures/nix-<version>/``).

Differences handled (2.8 and 2.26 as recorded; the newer shapes from Nix's release notes and issues):

- ``nix --version``: ``nix (Nix) 2.8.0``; also ``nix (Determinate Nix 3.6.2) 2.29.0`` and
  ``nix (Lix, like Nix) 2.91.1`` (the last number that looks like a version is Nix's).
- ``nix path-info --json``: a list of objects with ``path`` (and ``valid: false`` for an invalid path)
  up to 2.18 and in Lix; since 2.19 an object keyed by store path, ``null`` for an invalid path; since 2.33
  ``--json-format 2`` wraps it as ``{"version": 2, "storeDir": …, "info": {<base name>: …}}``.
- ``nix derivation show`` (2.15+; before it, ``nix show-derivation``, kept as a deprecated alias): an
  object keyed by ``.drv`` path; ``inputDrvs`` values are output lists (2.8), later objects with
  ``outputs`` and ``dynamicOutputs`` (2.26); since 2.32 keys and output paths are base names; since 2.33
  (format version 4) wrapped as ``{"version": 4, "derivations": {…}}`` with ``inputs: {"srcs", "drvs"}``.
- ``nix build --json``: a list of ``{"drvPath", "outputs"}``: 2.8 lists the requested outputs, 2.26 every
  output, with ``startTime``/``stopTime``. ``--print-out-paths`` is missing in 2.8 (``unrecognised flag``),
  so the product reads ``--json``, which every version has.
- internal-json ``msg`` positions: 2.8 has ``file``, ``line``, ``column``; 2.26 puts the whole position into
  ``file`` (``/x/y.nix:3:8``) besides ``line``/``column``. Activity and result types are the same in both
  recordings; newer ones (``FETCH_TREE``, ``FETCH_STATUS``) are named.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from dagster_nix_builder.nix.errors import NixVersionError

MINIMUM_VERSION = (2, 8)
DEFAULT_STORE_DIR = "/nix/store"


def nix_store_dir() -> str:
    """The Nix store's directory (``NIX_STORE_DIR``, as Nix reads it, else ``/nix/store``)."""
    return os.environ.get("NIX_STORE_DIR") or DEFAULT_STORE_DIR

# Nix colours its messages even in JSON; strip the escapes so logs and errors read cleanly.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_POSITION = re.compile(r"^(?P<file>.*):(?P<line>\d+):(?P<column>\d+)$")


def strip_ansi(text: str) -> str:
    """Remove terminal colour escapes from ``text``."""
    return _ANSI.sub("", text)


# ---- the version ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NixVersion:
    """A Nix version as ``nix --version`` printed it, with the command lines that differ by version."""

    text: str
    number: tuple[int, int, int]
    lix: bool = False

    def __str__(self) -> str:
        return self.text

    def at_least(self, major: int, minor: int) -> bool:
        """Whether this is Nix ``major.minor`` or newer (Lix counts as the Nix 2.18 it forked from)."""
        number = (2, 18, 0) if self.lix else self.number
        return number[:2] >= (major, minor)

    def derivation_show(self) -> list[str]:
        """The subcommand that prints derivations as JSON: ``derivation show`` where it exists (2.15+)."""
        return ["derivation", "show"] if self.at_least(2, 15) else ["show-derivation"]

    def path_info_json(self) -> list[str]:
        """Flags of ``nix path-info`` for JSON: 2.33 deprecates ``--json`` without ``--json-format``."""
        return ["--json", "--json-format", "2"] if self.at_least(2, 33) else ["--json"]


def parse_version(text: str, executable: str = "nix") -> NixVersion:
    """Parse ``nix --version`` output; raise :class:`NixVersionError` below :data:`MINIMUM_VERSION`.

    Args:
        text: What ``nix --version`` printed (first line used).
        executable: The executable asked, named in the error.
    """
    line = strip_ansi(text).strip().splitlines()[0].strip() if text.strip() else ""
    found = _VERSION.findall(line)
    if not found:
        raise NixVersionError(executable, line or "(no version printed)", MINIMUM_VERSION)
    major, minor, patch = found[-1]
    version = NixVersion(line, (int(major), int(minor), int(patch or 0)), lix="Lix" in line)
    if not version.lix and version.number[:2] < MINIMUM_VERSION:
        raise NixVersionError(executable, line, MINIMUM_VERSION)
    return version


# ---- path-info -----------------------------------------------------------------------------------


def parse_path_info(stdout: str) -> dict[str, dict[str, Any] | None]:
    """``nix path-info --json`` of any version as ``{store path: info, or None if not valid}``.

    The info is Nix's object without ``path``/``valid`` (``narSize``, ``closureSize`` with ``-S``, …).
    """
    data = json.loads(stdout) if stdout.strip() else {}
    out: dict[str, dict[str, Any] | None] = {}
    if isinstance(data, list):  # Nix < 2.19, Lix
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                valid = entry.get("valid", True) is not False
                out[entry["path"]] = {k: v for k, v in entry.items() if k not in ("path", "valid")} if valid else None
        return out
    if not isinstance(data, dict):
        # ValueError, like json.loads on malformed text: one exception type for "Nix printed something else".
        raise ValueError(f"nix path-info --json printed neither a list nor an object: {stdout[:200]!r}")
    store_dir = DEFAULT_STORE_DIR
    if isinstance(data.get("info"), dict) and "version" in data:  # --json-format 2 (Nix 2.33+)
        store_dir = str(data.get("storeDir") or store_dir)
        data = data["info"]
    for path, info in data.items():
        out[_in_store(path, store_dir)] = dict(info) if isinstance(info, dict) else None
    return out


# ---- derivation show -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Derivation:
    """One store derivation as ``nix derivation show`` printed it, paths made absolute."""

    drv_path: str
    outputs: Mapping[str, str] = field(default_factory=dict)
    input_drvs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    input_srcs: tuple[str, ...] = ()
    system: str | None = None
    builder: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def parse_derivation_show(stdout: str, store_dir: str | None = None) -> dict[str, Derivation]:
    """``nix derivation show`` / ``nix show-derivation`` of any version as ``{drv path: Derivation}``.

    Outputs without a known path (content-addressed, not built yet) are left out of ``outputs``.
    """
    data = json.loads(stdout)
    if not isinstance(data, dict):
        raise ValueError(f"nix derivation show printed no object: {stdout[:200]!r}")
    store_dir = store_dir or nix_store_dir()
    if isinstance(data.get("derivations"), dict) and "version" in data:  # format version 4 (Nix 2.33+)
        store_dir = str(data.get("storeDir") or store_dir)
        data = data["derivations"]
    shown: dict[str, Derivation] = {}
    for key, drv in data.items():
        if not isinstance(drv, dict):
            continue
        drv_path = _in_store(key, store_dir)
        outputs = {
            name: _in_store(o["path"], store_dir)
            for name, o in (drv.get("outputs") or {}).items()
            if isinstance(o, dict) and isinstance(o.get("path"), str)
        }
        inputs = drv["inputs"] if isinstance(drv.get("inputs"), dict) else {}
        drvs = inputs.get("drvs", drv.get("inputDrvs")) or {}
        srcs = inputs.get("srcs", drv.get("inputSrcs")) or []
        input_drvs = {}
        for dep, wanted in drvs.items():
            names = wanted.get("outputs", []) if isinstance(wanted, dict) else wanted
            input_drvs[_in_store(dep, store_dir)] = tuple(names)
        shown[drv_path] = Derivation(
            drv_path=drv_path,
            outputs=outputs,
            input_drvs=input_drvs,
            input_srcs=tuple(_in_store(s, store_dir) for s in srcs),
            system=drv.get("system") or drv.get("platform"),
            builder=drv.get("builder"),
            env=dict(drv.get("env") or {}),
        )
    return shown


# ---- build --json --------------------------------------------------------------------------------


def parse_build_json(stdout: str) -> dict[str, dict[str, str]]:
    """``nix build --json`` as ``{drv path: {output name: store path}}``; empty when nothing was printed.

    Nix does not promise the order of its results, so they are keyed by derivation; results for several
    outputs of one derivation are merged.
    """
    if not stdout.strip():
        return {}
    data = json.loads(stdout)
    built: dict[str, dict[str, str]] = {}
    for result in data if isinstance(data, list) else []:
        if isinstance(result, dict) and isinstance(result.get("drvPath"), str):
            outputs = result.get("outputs") or {}
            built.setdefault(result["drvPath"], {}).update(
                {name: path for name, path in outputs.items() if isinstance(path, str)}
            )
    return built


# ---- internal-json -------------------------------------------------------------------------------


class ActivityType(IntEnum):
    """Activity types of Nix's logger (``src/libutil/logging.hh``; ``FETCH_TREE`` since 2.19)."""

    UNKNOWN = 0
    COPY_PATH = 100
    FILE_TRANSFER = 101
    REALISE = 102
    COPY_PATHS = 103
    BUILDS = 104
    BUILD = 105
    OPTIMISE_STORE = 106
    VERIFY_PATHS = 107
    SUBSTITUTE = 108
    QUERY_PATH_INFO = 109
    POST_BUILD_HOOK = 110
    BUILD_WAITING = 111
    FETCH_TREE = 112


class ResultType(IntEnum):
    """Result types of Nix's logger (``FETCH_STATUS`` in newer releases)."""

    FILE_LINKED = 100
    BUILD_LOG_LINE = 101
    UNTRUSTED_PATH = 102
    CORRUPTED_PATH = 103
    SET_PHASE = 104
    PROGRESS = 105
    SET_EXPECTED = 106
    POST_BUILD_LOG_LINE = 107
    FETCH_STATUS = 108


@dataclass(frozen=True)
class Position:
    """Where in a Nix file a message points."""

    file: str | None = None
    line: int | None = None
    column: int | None = None


def message_position(data: Mapping[str, Any]) -> Position:
    """The position of an internal-json ``msg`` in either form: separate ``file``/``line``/``column``
    (Nix 2.8) or ``"file": "/x/y.nix:3:1"`` (newer releases, separate fields possibly also present)."""
    file = data.get("file") if isinstance(data.get("file"), str) else None
    line = _int_or_none(data.get("line"))
    column = _int_or_none(data.get("column"))
    if file:
        m = _POSITION.match(file)
        if m:
            file = m["file"]
            line = line if line is not None else int(m["line"])
            column = column if column is not None else int(m["column"])
    return Position(file or None, line, column)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _in_store(path: str, store_dir: str) -> str:
    """``path`` as an absolute store path (newer formats print base names)."""
    return path if path.startswith("/") else f"{store_dir.rstrip('/')}/{path}"


__all__ = [
    "MINIMUM_VERSION",
    "ActivityType",
    "Derivation",
    "NixVersion",
    "Position",
    "ResultType",
    "message_position",
    "parse_build_json",
    "parse_derivation_show",
    "parse_path_info",
    "parse_version",
    "strip_ansi",
]
