"""The bisect in Dagster: the `bisect_dagster_src` job (by hand, two revs), and the bisect the update job runs
when a git-mode update fails at its build or check step (`bisect_failed_update`), which names the first bad
commit in the update's failure.

By hand::

    printf 'ops:\\n  bisect:\\n    config:\\n      good: <40 hex>\\n      bad: <40 hex>\\n' > bisect.yaml
    dagster job execute -m dagster_nix_builder.definitions -j bisect_dagster_src -c bisect.yaml
"""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at decoration time.
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import Config, Failure, JobDefinition, MetadataValue, OpExecutionContext, Output, job, op
from pydantic import Field

from dagster_nix_builder.nix.errors import NixBuilderError
from dagster_nix_builder.upstream.pins import Pins, PinsError, read_pins, validate_git_argument, validate_rev
from dagster_nix_builder.upstream.update.bisect import BisectError, BisectResult
from dagster_nix_builder.upstream.update.model import UpdateError, UpdateSettings, UpdateStep
from dagster_nix_builder.upstream.update.probe import bisect_git, verdict_of_update

BISECT_OP_NAME = "bisect"
BISECT_JOB_NAME = "bisect_dagster_src"
CACHE_FILE = "nix-bisect-steps.json"
"""What bisect steps found (sources by rev, failures by derivation), in the Dagster instance's directory."""


class BisectConfig(Config):
    """Run config of the bisect: the two ends of the range."""

    good: str = Field(description="The last good rev (40 hex digits), e.g. the pin before the failed update.")
    bad: str = Field(description="The failing rev (40 hex digits), a descendant of `good`.")
    url: str | None = Field(default=None, description="The git upstream (default: git.url of nix/pins.json).")
    branch: str | None = Field(
        default=None, description="The branch holding the range (default: git.branch of nix/pins.json)."
    )
    rebuild_failed: bool = Field(
        default=False,
        description="Build again what an earlier step recorded as failed (a failure that was the machine's).",
    )


def cache_path(context: OpExecutionContext, configured: str | None) -> Path:
    """The steps' JSON file: the resource's, or one in the Dagster instance's directory."""
    return Path(configured) if configured else Path(context.instance.root_directory) / CACHE_FILE


def pins_for(pins_path: Path, url: str | None, branch: str | None) -> Pins:
    """The checkout's pins, at another upstream or branch when given."""
    pins = read_pins(pins_path)
    return pins.with_git(
        url=validate_git_argument(url, "git url") if url is not None else pins.git.url,
        branch=validate_git_argument(branch, "git branch") if branch is not None else pins.git.branch,
    )


def metadata(result: BisectResult) -> dict[str, Any]:
    """Run metadata of a bisect: the first bad commit, what fails there with its log tail, the steps."""
    failures = result.verdict.failures
    return {
        "bisect/first_bad": result.first_bad,
        "bisect/subject": result.subject or "",
        "bisect/fails": result.verdict.describe(),
        "bisect/packages": MetadataValue.json(sorted({f.attr for f in failures})),
        "bisect/checks": MetadataValue.json([f.test for f in failures if f.test is not None]),
        "bisect/log_tail": MetadataValue.md("```\n" + "\n".join(result.lines()[:80]) + "\n```"),
        "bisect/steps": MetadataValue.json([v.to_dict() for v in result.steps]),
        "bisect/builds": result.builds,
        "bisect/bound": result.bound,
        "bisect/candidates": result.candidates,
    }


def bisect_failed_update(
    context: OpExecutionContext,
    settings: UpdateSettings,
    pins_path: Path,
    error: UpdateError,
    *,
    url: str | None,
    branch: str | None,
    cache_file: str | None,
) -> dict[str, Any]:
    """After a git-mode update failed at its build or check step: bisect the commits between the pin before
    (the last good one) and the rev it tried, add the first bad commit to `error` (its notes), and return the
    run metadata. Nothing to do (no last good rev: the first pin, a switch from release mode) returns {}."""
    if error.mode != "git" or error.step not in (UpdateStep.BUILD, UpdateStep.CHECK) or error.new is None:
        return {}
    try:
        good = validate_rev(error.old or "")
    except PinsError:
        context.log.info(f"no bisect: no git rev was pinned before ({error.old}), so no last good commit")
        return {}
    known = verdict_of_update(error)
    try:
        result = bisect_git(
            settings, good, error.new, pins=pins_for(pins_path, url, branch),
            cache_path=cache_path(context, cache_file), known={error.new: known} if known else None,
            log=context.log.info,
        )  # fmt: skip
    except (BisectError, NixBuilderError, PinsError) as e:  # the update's own failure stays what is raised
        error.notes.append(f"bisect: not done: {e}")
        return {"bisect/error": str(e)}
    error.notes += result.lines()
    return metadata(result)


def build_bisect_job(
    *, name: str = BISECT_JOB_NAME, resource_defs: Mapping[str, Any] | None = None
) -> JobDefinition:
    """The bisect job: one op, the `pin_updater` resource's checkout and Nix (a `PinUpdater`)."""

    @op(
        name=BISECT_OP_NAME,
        description="Find the first bad commit between a good and a bad rev of the git upstream: a real build "
        "and check of the source per step, at most ⌈log2 n⌉ + 1 of them; nix/pins.json is never written.",
        required_resource_keys={"pin_updater"},
        tags={"kind": "nix"},
    )
    def bisect_op(context: OpExecutionContext, config: BisectConfig) -> Iterator[Any]:
        updater = context.resources.pin_updater
        try:
            result = bisect_git(
                updater.settings(), config.good, config.bad, pins=pins_for(updater.pins_path(), config.url,
                config.branch), cache_path=cache_path(context, updater.bisect_cache_file or None),
                rebuild_failed=config.rebuild_failed, log=context.log.info,
            )  # fmt: skip
        except (BisectError, NixBuilderError, PinsError) as e:
            raise Failure(description=f"bisect failed: {e}") from e
        yield Output(result.to_dict(), metadata=metadata(result))

    @job(
        name=name,
        description="Bisect dagster-src: the first bad commit between two revs, with what fails there.",
        resource_defs=dict(resource_defs or {}),
    )
    def bisect_job() -> None:
        bisect_op()

    return bisect_job


__all__ = ["BISECT_JOB_NAME", "BisectConfig", "bisect_failed_update", "build_bisect_job"]
