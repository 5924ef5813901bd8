"""The reproducibility gate: does a package rebuild bit for bit?

:func:`check_reproducible` rebuilds the package's derivation with Nix's own check,
``nix-store --realise --check --keep-failed <drv>`` (the same flags on every Nix: ``nix build`` of a ``.drv``
changed meaning at 2.13), which builds it again beside its valid outputs and compares NAR hashes. Nix 2.8 and
2.26 behave alike here:

- identical: exit 0, nothing left;
- different: exit 104 (100 + 4, "not deterministic") and, with ``--keep-failed``, the rebuilt output is moved
  to ``<out>.check`` — a directory in the store that is *not* a valid path — and the build directory is kept
  (``note: keeping build directory '/tmp/nix-build-…'``). Nix stops at the first output that differs, so
  ``<out>.check`` exists for that output only; the others are not compared (:attr:`Reproducibility.unchecked`).

The two trees are then compared here (file list, SHA-256 of contents, symlink targets, the executable bit — all
that a NAR records) to name the differing files, with diffoscope's text report when ``diffoscope`` is on PATH.
Finally what the check left is removed: ``<out>.check`` through ``nix-store --delete`` (Nix deletes an invalid
path; if it refuses, the path is reported in :attr:`Reproducibility.left_behind`) and the kept build directory.
The valid outputs are only read. No Dagster import.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixBuilderError, NixCommandError
from dagster_nix_builder.nix.graph import NixPackage
from dagster_nix_builder.nix.log_format import error_messages

CHECK_SUFFIX = ".check"
NOT_DETERMINISTIC = 104  # nix-store's exit status: 100 (build failure) + 4 (not deterministic)
DIFF_LIMIT = 20_000  # characters of diffoscope's report kept
DIFFOSCOPE_TIMEOUT_S = 300.0
_KEPT_BUILD_DIR = re.compile(r"keeping build directory '([^']+)'")


class ReproducibilityError(NixBuilderError):
    """The check could not run (outputs not built, the rebuild failed): says nothing about reproducibility."""


@dataclass(frozen=True)
class Reproducibility:
    """The outcome of rebuilding one package and comparing it with the outputs in the store."""

    attr: str
    identical: bool
    differing_files: list[str] = field(default_factory=list)
    """Paths relative to the output; for an output other than ``out`` prefixed with ``<output>:``. An entry
    ``<output>:`` alone (empty path) means the output's root itself differs (e.g. a file became a directory)."""
    diff: str | None = None
    """diffoscope's text report (truncated to :data:`DIFF_LIMIT` characters); None without diffoscope."""
    seconds: float = 0.0
    differing_outputs: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """When an output differs, the others: Nix stops at the first output that differs (in its own order) and
    keeps no copy of the others, so whether they rebuild identically is not known."""
    left_behind: list[str] = field(default_factory=list)
    """What the check left and could not be removed (Nix refused to delete it)."""


# ---- comparing two trees --------------------------------------------------------------------------


def tree_entries(root: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Every entry under ``root`` (itself as ``""``) → what a NAR records of it: ``("dir",)``,
    ``("symlink", target)``, ``("file", executable, sha256)``."""
    base = Path(root)
    entries: dict[str, tuple[str, ...]] = {}
    stack = [base]
    while stack:
        path = stack.pop()
        rel = "" if path == base else path.relative_to(base).as_posix()
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            entries[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[rel] = ("dir",)
            stack.extend(sorted(path.iterdir(), reverse=True))
        else:
            entries[rel] = ("file", "x" if info.st_mode & stat.S_IXUSR else "-", _sha256(path))
    return entries


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def differing_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """Relative paths present in only one of the trees ``a`` and ``b`` or different in them, sorted."""
    left, right = tree_entries(a), tree_entries(b)
    return sorted(p for p in left.keys() | right.keys() if left.get(p) != right.get(p))


def diffoscope_report(a: str, b: str, limit: int = DIFF_LIMIT) -> str | None:
    """diffoscope's text report of ``a`` against ``b`` (truncated to ``limit``), or None without diffoscope."""
    exe = shutil.which("diffoscope")
    if exe is None:
        return None
    try:
        proc = processes.run(
            [exe, "--no-progress", "--exclude-directory-metadata=yes", "--text", "-",
             "--max-text-report-size", str(limit * 2), a, b],
            capture_output=True, text=True, errors="replace", timeout=DIFFOSCOPE_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"(diffoscope did not finish within {DIFFOSCOPE_TIMEOUT_S:.0f} s)"
    text = proc.stdout if proc.stdout.strip() else proc.stderr
    return text if len(text) <= limit else text[:limit] + f"\n… (truncated: {len(text)} characters)"


# ---- the check ------------------------------------------------------------------------------------


def check_reproducible(cli: NixCli, package: NixPackage) -> Reproducibility:
    """Rebuild ``package``'s derivation with Nix's check and compare it with its valid outputs.

    Raises:
        ReproducibilityError: the package has no derivation, its outputs are not all valid (build it first),
            or the rebuild failed for another reason than a difference (Nix's messages included).
    """
    if not package.drv_path or not package.outputs:
        raise ReproducibilityError(f"{package.attr} has no derivation to rebuild (it did not evaluate).")
    invalid = cli.invalid_paths(list(package.outputs.values()))
    if invalid:
        raise ReproducibilityError(
            f"{package.attr} is not built yet ({', '.join(sorted(invalid))} not valid): build it first, then check "
            "that it rebuilds bit for bit."
        )
    checks = {name: path + CHECK_SUFFIX for name, path in package.outputs.items()}
    stale = _clean_up(cli, [p for p in checks.values() if os.path.lexists(p)], "")  # a copy an earlier check left
    if stale:
        raise ReproducibilityError(f"{', '.join(stale)} (left by an earlier check) could not be deleted through Nix: "
                                   "delete it as the store's owner, then check again.")  # fmt: skip
    started = time.monotonic()
    command = cli.store_command("--realise", "--check", "--keep-failed", package.drv_path)
    proc = cli.run(command, check=False)
    kept = {name: path for name, path in checks.items() if os.path.lexists(path)}
    try:
        if not kept and proc.returncode != 0:
            raise ReproducibilityError(
                f"Rebuilding {package.attr} to check it failed (exit {proc.returncode}), so whether it is "
                f"reproducible is unknown:\n" + str(NixCommandError(command, proc.returncode, _messages(proc)))
            )
        files: list[str] = []
        reports: list[str] = []
        for name, check_path in kept.items():
            out = package.outputs[name]
            prefix = "" if name == "out" else f"{name}:"
            files += [prefix + p for p in differing_paths(out, check_path)] or [f"{prefix}(NAR differs)"]
            report = diffoscope_report(out, check_path)
            if report is not None:
                reports.append(report)
    finally:
        left = _clean_up(cli, list(kept.values()), proc.stderr)
    return Reproducibility(
        package.attr, not kept, files, "\n".join(reports)[:DIFF_LIMIT] if reports else None,
        round(time.monotonic() - started, 3), sorted(kept), _unchecked(package.outputs, kept), left,
    )  # fmt: skip


def _messages(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return list(error_messages(proc.stderr).messages) or proc.stderr.strip().splitlines()[-20:]


def _unchecked(outputs: Mapping[str, str], differing: Mapping[str, str]) -> list[str]:
    """The outputs whose verdict is unknown (see :attr:`Reproducibility.unchecked`)."""
    return sorted(name for name in outputs if name not in differing) if differing else []


def _clean_up(cli: NixCli, check_paths: list[str], stderr: str) -> list[str]:
    """Delete the ``.check`` paths (through Nix only) and the kept build directories; return what remains."""
    for kept in _KEPT_BUILD_DIR.findall(stderr):  # Nix 2.8: <tmp>/nix-build-<drv>-N; 2.26: …/nix-build-<drv>-N/build
        top = next((p for p in (Path(kept), *Path(kept).parents) if p.name.startswith("nix-build-")), None)
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
    if check_paths:
        cli.run(cli.store_command("--delete", *check_paths), check=False)
    return [p for p in check_paths if os.path.lexists(p)]


__all__ = [
    "CHECK_SUFFIX", "Reproducibility", "ReproducibilityError", "check_reproducible", "differing_paths",
    "diffoscope_report", "tree_entries",
]
