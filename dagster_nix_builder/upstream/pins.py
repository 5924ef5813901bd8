"""The pin file `nix/pins.json`: read, validate and write it atomically.

The Nix package set reads this file with `builtins.fromJSON`; this module is the only Python code that
writes it. Writes go to a temporary file in the same directory, are fsynced, then renamed over the
original, so a killed process leaves either the old or the new file, never a half-written one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

FAKE_HASH = "sha256-" + "A" * 43 + "="
"""A well-formed hash no source has; Nix fails on it and prints the real one."""

SourceMode = Literal["release", "git"]
SOURCE_MODES: tuple[str, ...] = ("release", "git")

_REV_RE = re.compile(r"[0-9a-f]{40}")
_SRI_SHA256_RE = re.compile(r"sha256-[A-Za-z0-9+/]{43}=")
_VERSION_RE = re.compile(r"[0-9A-Za-z!+._-]+")
_DISTRIBUTION_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


class PinsError(ValueError):
    """The pin file or a value meant for it is invalid."""


def validate_rev(rev: str) -> str:
    """Check a git revision is a full commit id.

    Args:
        rev: The revision, 40 lowercase or uppercase hex digits.

    Returns:
        The revision in lowercase.

    Raises:
        PinsError: If it is not 40 hex digits.
    """
    if not isinstance(rev, str) or not _REV_RE.fullmatch(rev.lower()):
        raise PinsError(f"invalid git revision {rev!r}: expected 40 hex digits")
    return rev.lower()


def validate_sri_hash(value: str) -> str:
    """Check a value is an SRI sha256 hash (`sha256-` and 44 base64 characters)."""
    if not isinstance(value, str) or not _SRI_SHA256_RE.fullmatch(value):
        raise PinsError(f"invalid hash {value!r}: expected an SRI sha256 hash like {FAKE_HASH}")
    return value


def validate_distribution(name: str) -> str:
    """Check a key of `release.hashes` is a normalized distribution name (`dagster-postgres`: lowercase
    letters and digits, single `-` between them), as the package set's declarations normalize it."""
    if not isinstance(name, str) or not _DISTRIBUTION_RE.fullmatch(name):
        raise PinsError(
            f"invalid distribution {name!r} in release.hashes: expected a normalized name such as 'dagster-postgres'"
        )
    return name


def validate_version(version: str) -> str:
    """Check a version string is non-empty and made of version characters only."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or version.startswith("-"):
        raise PinsError(f"invalid version {version!r}")
    return version


def validate_git_argument(value: str, what: str) -> str:
    """Check a URL or ref can be passed to git as a positional argument.

    Values are always passed as separate arguments (never through a shell); this rejects the ones git would
    read as an option or that cannot be a single argument.

    Raises:
        PinsError: If the value is empty, starts with `-`, or contains a NUL, a newline or whitespace only.
    """
    if not isinstance(value, str) or not value.strip():
        raise PinsError(f"invalid {what}: empty")
    if value.startswith("-"):
        raise PinsError(f"invalid {what} {value!r}: must not start with '-'")
    if any(c in value for c in "\0\n\r"):
        raise PinsError(f"invalid {what} {value!r}: contains a control character")
    return value


@dataclass(frozen=True)
class GitPin:
    """The `git` section: Dagster's repository at one commit.

    Attributes:
        url: Repository URL given to git.
        branch: The branch the commit sensor follows.
        rev: The pinned commit (40 hex digits), or None before the first update.
        hash: NAR hash (SRI) of the checkout without `.git`, or None.
        version: The version the packages built from git report.
    """

    url: str
    branch: str
    rev: str | None
    hash: str | None
    version: str


@dataclass(frozen=True)
class ReleasePin:
    """The `release` section: one Dagster release, one sdist per distribution the package set declares.

    Which distributions those are, and each one's version at `version`, is the package set's to say
    (`dagster-src.declarations`): this file accepts any distribution name (normalized: lowercase, `-`), and
    the update job writes exactly the declared ones, dropping the hash of a distribution no package declares.

    Attributes:
        version: The Dagster version, e.g. `1.13.27`.
        hashes: Distribution (normalized name, e.g. `dagster-postgres`) -> SRI sha256 of its sdist file.
    """

    version: str
    hashes: Mapping[str, str]


@dataclass(frozen=True)
class Pins:
    """The whole pin file.

    Attributes:
        source: Which section `dagster-src` is built from, `release` or `git`.
        release: The release section.
        git: The git section.
        extra: Top-level keys this module does not know, kept as they are.
    """

    source: SourceMode
    release: ReleasePin
    git: GitPin
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pins:
        """Build and validate from parsed JSON.

        Raises:
            PinsError: If a section or value is missing or malformed.
        """
        if not isinstance(data, Mapping):
            raise PinsError("pins must be a JSON object")
        try:
            source = data["source"]
            rel = data["release"]
            gitd = data["git"]
            if source not in SOURCE_MODES:
                raise PinsError(f"invalid source {source!r}: expected one of {SOURCE_MODES}")
            hashes = dict(rel["hashes"])
            for name, value in hashes.items():
                validate_distribution(name)
                if value is not None:
                    validate_sri_hash(value)
            release = ReleasePin(version=validate_version(rel["version"]), hashes=hashes)
            rev = gitd.get("rev")
            hash_ = gitd.get("hash")
            git = GitPin(
                url=validate_git_argument(gitd["url"], "git url"),
                branch=validate_git_argument(gitd["branch"], "git branch"),
                rev=None if rev is None else validate_rev(rev),
                hash=None if hash_ is None else validate_sri_hash(hash_),
                version=validate_version(gitd["version"]),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise PinsError(f"malformed pins: {type(e).__name__}: {e}") from e
        extra = {k: v for k, v in data.items() if k not in ("source", "release", "git")}
        return cls(source=source, release=release, git=git, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the file's canonical order."""
        return {
            "source": self.source,
            "release": {"version": self.release.version, "hashes": dict(self.release.hashes)},
            "git": {
                "url": self.git.url,
                "branch": self.git.branch,
                "rev": self.git.rev,
                "hash": self.git.hash,
                "version": self.git.version,
            },
            **self.extra,
        }

    def with_git(self, **changes: Any) -> Pins:
        """A copy with fields of the git section replaced."""
        return replace(self, git=replace(self.git, **changes))

    def with_release(self, **changes: Any) -> Pins:
        """A copy with fields of the release section replaced."""
        return replace(self, release=replace(self.release, **changes))

    def current(self) -> str:
        """What is pinned in the active mode: the rev (or `none`) in git mode, the version in release mode."""
        if self.source == "git":
            return self.git.rev or "none"
        return self.release.version


def render_pins(pins: Pins) -> bytes:
    """Serialise pins in the stable format: JSON, indent 2, trailing newline."""
    return (json.dumps(pins.to_dict(), indent=2) + "\n").encode()


def parse_pins(data: bytes) -> Pins:
    """Parse and validate the bytes of a pin file."""
    try:
        return Pins.from_dict(json.loads(data))
    except json.JSONDecodeError as e:
        raise PinsError(f"pins are not valid JSON: {e}") from e


def read_pins(path: Path | str) -> Pins:
    """Read and validate a pin file.

    Raises:
        PinsError: If it is not valid.
        OSError: If it cannot be read.
    """
    return parse_pins(Path(path).read_bytes())


def write_pins(path: Path | str, pins: Pins) -> None:
    """Write pins atomically in the stable format."""
    atomic_write_bytes(path, render_pins(pins))


def atomic_write_bytes(
    path: Path | str, data: bytes, *, before_replace: Callable[[Path], None] | None = None
) -> None:
    """Replace a file's content atomically.

    Writes a temporary file in the same directory, fsyncs it, renames it over `path` and fsyncs the
    directory. The file keeps its permission bits. Readers see the old or the new content, never a mix.

    Args:
        path: The file to write.
        data: Its new content.
        before_replace: Called with the temporary file's path just before the rename; tests use it to kill
            a writer at the worst moment.
    """
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stale_temp_files(path: Path | str) -> list[Path]:
    """Temporary files a killed `atomic_write_bytes` of `path` left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f"{TEMP_PREFIX}{path.name}.*{TEMP_SUFFIX}"))


def remove_stale_temp_files(path: Path | str) -> list[Path]:
    """Delete the temporary files a killed writer of `path` left behind; returns what was removed."""
    removed = stale_temp_files(path)
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed
