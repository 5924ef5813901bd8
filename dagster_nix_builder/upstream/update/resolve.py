"""The resolve step: what the update pins. A given rev or version is validated (a release must have an sdist
of every distribution the package set declares, each at the version its declaration derives — Nix says
which); none given means the head of the followed branch (`git ls-remote`) or the newest complete release.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.version import InvalidVersion, Version

from dagster_nix_builder.upstream import lookup as git_upstream
from dagster_nix_builder.upstream.pins import Pins, validate_rev, validate_version
from dagster_nix_builder.upstream.update.declarations import (
    Declarations,
    names_to_ask,
    read_declarations,
    release_problems,
)
from dagster_nix_builder.upstream.update.model import Log, UpdateError, UpdateSettings, UpdateStep

CANDIDATES = 6
"""How many of the newest Dagster versions on the index the lookup of the newest complete release weighs."""


def resolve_rev(rev: str | None, pins: Pins, log: Log) -> str:
    """Git mode: `rev` validated, or the head of `pins.git.branch` at `pins.git.url`."""
    if rev is not None:
        return validate_rev(rev)
    try:
        head = git_upstream.ls_remote_head(pins.git.url, pins.git.branch, timeout=120)
    except git_upstream.UpstreamError as e:
        raise UpdateError(
            UpdateStep.RESOLVE, f"no rev given, and the head of {pins.git.branch} could not be read: {e}"
        ) from e
    log(f"{pins.git.url} {pins.git.branch} is at {head}")
    return head


@dataclass(frozen=True)
class Release:
    """A Dagster version and the package set's declarations at it.

    Attributes:
        version: The Dagster version (None: no complete one was found).
        declarations: attr -> declaration at `version`.
        problems: Why the newest candidate is not complete (each naming its file), when it is not.
    """

    version: str | None
    declarations: Declarations = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _at(pins: Pins, version: str) -> Pins:
    return replace(pins, source="release").with_release(version=version)


def _key(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


def _ask_index(names: list[str], settings: UpdateSettings, *, pre: bool) -> dict[str, list[str]]:
    try:
        return git_upstream.sdist_versions_of(names, pip_args=settings.pip_args, pre=pre, timeout=120)
    except git_upstream.UpstreamError as e:
        raise UpdateError(UpdateStep.RESOLVE, f"the package index could not be asked: {e}") from e


def complete_releases(
    settings: UpdateSettings, repo_dir: Path, pins: Pins, count: int = 1
) -> tuple[list[Release], tuple[str, ...]]:
    """The newest `count` Dagster versions of which every declared distribution has an sdist of its derived
    version, newest first, and why the newest incomplete candidate is not complete.

    The Dagster versions weighed are those the index has of the distributions whose version is Dagster's
    at the pinned release (the declarations say which), the newest `max(CANDIDATES, count)` of them; their
    declarations come from one Nix evaluation, the index from one pip process.
    """
    (current,) = read_declarations(settings, repo_dir, "release", [_at(pins, pins.release.version)], UpdateStep.RESOLVE)
    if not current:
        raise UpdateError(
            UpdateStep.RESOLVE,
            f"the package set declares no distribution (no package takes its source with "
            f"{settings.source_attr}.package {{ path, distribution, ... }}): nothing to look up",
        )
    found = _ask_index(names_to_ask(current), settings, pre=False)
    following = {d.distribution for d in current.values() if d.version == pins.release.version} or {
        d.distribution for d in current.values()
    }
    weighed = max(CANDIDATES, count)
    versions = sorted({v for dist in following for v in found.get(dist, [])}, key=_key, reverse=True)[:weighed]
    problems: tuple[str, ...] = ()
    releases: list[Release] = []
    candidates = read_declarations(settings, repo_dir, "release", [_at(pins, v) for v in versions], UpdateStep.RESOLVE)
    for version, declarations in zip(versions, candidates, strict=True):
        missing = release_problems(declarations, found)
        if not missing:
            releases.append(Release(version, declarations, problems))
            if len(releases) == count:
                break
        else:
            problems = problems or tuple(f"{version}: {p}" for p in missing)
    return releases, problems


def latest_complete_release(settings: UpdateSettings, repo_dir: Path, pins: Pins) -> Release:
    """The newest Dagster version of which every declared distribution has an sdist of its derived version
    (:func:`complete_releases`); its `version` None when there is none."""
    releases, problems = complete_releases(settings, repo_dir, pins)
    return releases[0] if releases else Release(None, {}, problems)


def resolve_release(version: str | None, settings: UpdateSettings, repo_dir: Path, pins: Pins, log: Log) -> Release:
    """Release mode: `version` validated and complete on the package index, or the newest complete one;
    with the package set's declarations at it."""
    if version is None:
        release = latest_complete_release(settings, repo_dir, pins)
        if release.version is None:
            raise UpdateError(
                UpdateStep.RESOLVE,
                "no version given, and no release has an sdist of every distribution the package set declares "
                "on the package index",
                release.problems,
            )
        log(f"newest complete release: {release.version}")
        return release
    version = validate_version(version)
    (declarations,) = read_declarations(settings, repo_dir, "release", [_at(pins, version)], UpdateStep.RESOLVE)
    if not declarations:
        raise UpdateError(
            UpdateStep.RESOLVE,
            f"the package set declares no distribution (no package takes its source with "
            f"{settings.source_attr}.package {{ path, distribution, ... }}): a release has nothing to pin",
        )
    problems = release_problems(declarations, _ask_index(names_to_ask(declarations), settings, pre=True))
    if problems:
        raise UpdateError(
            UpdateStep.RESOLVE, f"release {version} is not complete on the package index", problems
        )
    for d in sorted(declarations.values(), key=lambda d: d.distribution):
        log(f"{d.distribution} {d.version} ({d.file})")
    return Release(version, declarations)


__all__ = ["CANDIDATES", "Release", "complete_releases", "latest_complete_release", "resolve_release", "resolve_rev"]
