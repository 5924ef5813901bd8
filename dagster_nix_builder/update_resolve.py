"""The resolve step: what the update pins. A given rev or version is validated (a release must have all
five sdists on the package index); none given means the head of the followed branch (`git ls-remote`) or
the newest complete release."""

from __future__ import annotations

from collections.abc import Sequence

from dagster_nix_builder import git_upstream
from dagster_nix_builder.pins import RELEASE_PACKAGES, Pins, validate_rev, validate_version
from dagster_nix_builder.update_model import Log, UpdateError, UpdateStep


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


def resolve_release(version: str | None, pip_args: Sequence[str], log: Log) -> str:
    """Release mode: `version` validated and complete on the package index, or the newest complete one."""
    try:
        if version is None:
            latest = git_upstream.latest_release(pip_args=pip_args)
            if latest is None:
                raise UpdateError(
                    UpdateStep.RESOLVE,
                    f"no version given, and no release has all of {', '.join(RELEASE_PACKAGES)} as sdists "
                    "on the package index",
                )
            log(f"newest complete release: {latest}")
            return latest
        version = validate_version(version)
        missing = git_upstream.missing_sdists(version, pip_args=pip_args)
    except git_upstream.UpstreamError as e:
        raise UpdateError(UpdateStep.RESOLVE, f"the package index could not be asked: {e}") from e
    if missing:
        raise UpdateError(
            UpdateStep.RESOLVE,
            f"release {version} is not complete on the package index: no sdist for {', '.join(missing)}",
        )
    return version


__all__ = ["resolve_release", "resolve_rev"]
