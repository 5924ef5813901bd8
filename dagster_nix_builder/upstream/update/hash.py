"""The hash and version steps: Nix computes the source's hash, and the source says its version.

Hash: the source is built with the candidate pins passed as `--arg pins` and a fake hash; Nix fails and
prints the real one (`specified:`/`got:`), one per declared distribution's sdist in release mode. Nothing is
written for this, so a build running beside the update reads the committed pins.

Version (git mode): the source is built at its real hash and `__version__` read from its own
`python_modules/dagster/dagster/version.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dagster_nix_builder.nix.log_format import error_messages
from dagster_nix_builder.nix.output import parse_build_json, strip_ansi
from dagster_nix_builder.upstream.pins import FAKE_HASH, Pins, validate_sri_hash, validate_version
from dagster_nix_builder.upstream.update.declarations import Declarations, sdist_drv_paths, with_fake_hashes
from dagster_nix_builder.upstream.update.model import Log, UpdateError, UpdateSettings, UpdateStep
from dagster_nix_builder.upstream.update.nix import build_with_pins, nix_cli, nix_errors

VERSION_FILE = "python_modules/dagster/dagster/version.py"
"""Where Dagster's monorepo says its version (`__version__ = "..."`); git mode pins what it says."""

_HASH_MISMATCH_RE = re.compile(
    r"hash mismatch in fixed-output derivation '(?P<drv>[^']+)':\s*"
    r"specified:\s*(?P<specified>\S+)\s*got:\s*(?P<got>\S+)"
)
_VERSION_LINE_RE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


@dataclass(frozen=True)
class HashMismatch:
    """One `specified`/`got` pair Nix printed for a fixed-output derivation."""

    drv_path: str
    specified: str
    got: str

    @property
    def drv_name(self) -> str:
        """The derivation name, e.g. `dagster_shared-1.13.27.tar.gz`."""
        return Path(self.drv_path).name.split("-", 1)[1].removesuffix(".drv")


def parse_hash_mismatches(stderr: str) -> list[HashMismatch]:
    """The hash mismatches in a Nix stderr (internal-json or plain), in order."""
    text = "\n".join(error_messages(stderr).messages)
    return [HashMismatch(m["drv"], m["specified"], m["got"]) for m in _HASH_MISMATCH_RE.finditer(strip_ansi(text))]


def sdist_package_name(drv_name: str, version: str) -> str | None:
    """Map an sdist derivation name back to its package: `dagster_shared-1.13.27.tar.gz` -> `dagster-shared`
    (for reading a log; the hash step asks Nix which derivation is whose: `dagster-src.sdists`)."""
    suffix = f"-{version}.tar.gz"
    if not drv_name.endswith(suffix):
        return None
    return drv_name.removesuffix(suffix).replace("_", "-").lower()


def read_version_file(text: str) -> str | None:
    """`__version__` of a `version.py` (as Dagster's packages write it), or None."""
    m = _VERSION_LINE_RE.search(text)
    return m.group(1) if m else None


def discover_hashes(
    settings: UpdateSettings,
    repo_dir: Path,
    mode: str,
    target: str,
    candidate: Pins,
    log: Log,
    declarations: Declarations | None = None,
) -> dict[str, str]:
    """The hashes of the candidate's source: `{source_attr: hash}` (git), or one per distribution the
    package set declares (release: `declarations` at `target`), keyed by distribution."""
    fake = candidate.with_git(hash=FAKE_HASH) if mode == "git" else with_fake_hashes(candidate, declarations or {})
    cli = nix_cli(settings, repo_dir, mode, fake)
    proc = build_with_pins(cli, [settings.source_attr], fake, timeout=settings.timeout_seconds, log=log)
    mismatches = parse_hash_mismatches(proc.stderr)
    if proc.returncode == 0 and not mismatches:
        raise UpdateError(UpdateStep.HASH, "Nix accepted the fake hash: the source is not fixed-output?")
    if mode == "git":
        got = [m for m in mismatches if m.specified == FAKE_HASH]
        if len(got) != 1:
            raise UpdateError(
                UpdateStep.HASH,
                f"expected Nix to report one hash mismatch for {settings.source_attr}, "
                f"got {len(got)}: the rev could not be fetched or the source failed to build",
                nix_errors(proc.stderr),
            )
        log(f"{settings.source_attr}: {got[0].got}")
        return {settings.source_attr: validate_sri_hash(got[0].got)}
    # Which distribution a mismatch belongs to: its derivation is that distribution's `dagster-src.sdists`.
    owner = {drv: dist for dist, drv in sdist_drv_paths(settings, repo_dir, fake).items()}
    versions = {d.distribution: d.version for d in (declarations or {}).values()}
    hashes: dict[str, str] = {}
    for m in mismatches:
        dist = owner.get(m.drv_path)
        if dist is not None and m.specified == FAKE_HASH:
            hashes[dist] = validate_sri_hash(m.got)
            log(f"{dist} {versions.get(dist)}: {m.got}")
    missing = [d for d in sorted(fake.release.hashes) if d not in hashes]
    if missing:
        files = {d.distribution: d.file for d in (declarations or {}).values()}
        raise UpdateError(
            UpdateStep.HASH,
            f"Nix reported no hash for the sdists of Dagster {target}: "
            + ", ".join(f"{d} {versions.get(d)} ({files.get(d)})" for d in missing),
            nix_errors(proc.stderr),
        )
    return hashes


def source_version(settings: UpdateSettings, repo_dir: Path, pins: Pins, log: Log) -> tuple[str, Path]:
    """Git mode: the version the source says it is (`__version__` of its dagster/version.py; the pinned one
    when the tree has no such file: a repository not laid out like Dagster's), and the source tree."""
    cli = nix_cli(settings, repo_dir, "git", pins)
    proc = build_with_pins(cli, [settings.source_attr], pins, timeout=settings.timeout_seconds, log=log)
    if proc.returncode != 0:
        raise UpdateError(
            UpdateStep.VERSION,
            f"building {settings.source_attr} at its real hash failed (exit {proc.returncode})",
            nix_errors(proc.stderr),
        )
    tree = next(iter(next(iter(parse_build_json(proc.stdout).values()), {}).values()), None)
    if tree is None:
        raise UpdateError(UpdateStep.VERSION, f"nix build printed no output path: {proc.stdout[-500:]}")
    version_file = Path(tree) / VERSION_FILE
    if not version_file.is_file():
        log(f"the source has no {VERSION_FILE}: git.version stays {pins.git.version}")
        return pins.git.version, Path(tree)
    version = read_version_file(version_file.read_text(errors="replace"))
    if version is None:
        raise UpdateError(
            UpdateStep.VERSION, f"{VERSION_FILE} of rev {pins.git.rev} has no line __version__ = \"...\""
        )
    try:
        validate_version(version)
    except ValueError as e:
        raise UpdateError(UpdateStep.VERSION, f"{VERSION_FILE} of rev {pins.git.rev}: {e}") from e
    if version != pins.git.version:
        log(f"the source reports version {version} (was {pins.git.version})")
    return version, Path(tree)


__all__ = [
    "VERSION_FILE",
    "HashMismatch",
    "discover_hashes",
    "parse_hash_mismatches",
    "read_version_file",
    "sdist_package_name",
    "source_version",
]
