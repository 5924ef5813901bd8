"""Sensors that follow upstream and request update runs.

- The commit sensor (git mode) asks `git ls-remote` for the head of the followed branch; a head that
  differs from the pinned rev requests one update run with `run_key` = the rev, so a rev is never
  processed twice.
- The release sensor (release mode) asks the package index for the newest Dagster version of which every
  distribution the package set declares has an sdist of the version its declaration derives (Nix says
  which distributions and versions); a newer version than the pinned one requests one update run.

With versions as partitions (``history:`` of ``defs.yaml``, :class:`PartitionFollow`), each also adds what it
finds as a dynamic partition of the package assets (the head rev; the newest ``keep`` complete releases), in
either source mode, and deletes the oldest beyond ``keep``.

An unchanged upstream, an upstream that cannot be reached, or pins in the other source mode are skips
with their reason, never crashes. Both keep a JSON cursor (what they last saw and requested), which the
daemon stores across restarts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AutomationCondition,
    DefaultSensorStatus,
    Definitions,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from packaging.version import InvalidVersion, Version

from dagster_nix_builder.nix.settings import DEFAULT_NIX_CONFIG
from dagster_nix_builder.upstream import lookup as git_upstream
from dagster_nix_builder.upstream.history import PartitionFollow, PartitionRequest, partition_requests
from dagster_nix_builder.upstream.pins import Pins, PinsError, read_pins
from dagster_nix_builder.upstream.update.bisect_job import build_bisect_job
from dagster_nix_builder.upstream.update.job import (
    REPO_ROOT,
    PinUpdater,
    build_update_job,
    update_job,
    update_run_config,
)
from dagster_nix_builder.upstream.update.model import UpdateError, UpdateSettings
from dagster_nix_builder.upstream.update.resolve import complete_releases

COMMIT_SENSOR_NAME = "dagster_upstream_commit_sensor"
RELEASE_SENSOR_NAME = "dagster_release_sensor"
TAG_PREFIX = "dagster-nix-builder"


@dataclass(frozen=True)
class UpstreamCursor:
    """The sensors' JSON cursor.

    Attributes:
        last_seen: The head rev or release version seen at the last successful look.
        last_requested: The rev or version of the last run requested.
        last_error: Why the last look failed, or None.
    """

    last_seen: str | None = None
    last_requested: str | None = None
    last_error: str | None = None

    @classmethod
    def from_json(cls, text: str | None) -> UpstreamCursor:
        """Parse a cursor; a missing or unreadable one is a fresh start."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(**{k: data.get(k) for k in ("last_seen", "last_requested", "last_error")})

    def to_json(self) -> str:
        """Serialise the cursor (stable key order)."""
        return json.dumps(asdict(self), sort_keys=True)


def _skip(
    reason: str, cursor: UpstreamCursor, context: SensorEvaluationContext, partitions: Sequence[PartitionRequest] = ()
) -> SensorResult:
    context.log.info(reason)
    return SensorResult(
        skip_reason=SkipReason(reason), cursor=cursor.to_json(), dynamic_partitions_requests=list(partitions)
    )


def _pins_in_mode(
    pins_path: Path, source: str, cursor: UpstreamCursor, context: SensorEvaluationContext, *, any_mode: bool = False
) -> Pins | SensorResult:
    """The pins, if they select `source` (or in any mode, with `any_mode`); otherwise the skip the sensor
    returns."""
    try:
        pins = read_pins(pins_path)
    except (OSError, PinsError) as e:
        return _skip(f"cannot read {pins_path}: {e}", cursor, context)
    if pins.source != source and not any_mode:
        return _skip(_other_mode(pins, source), cursor, context)
    return pins


def _other_mode(pins: Pins, source: str) -> str:
    return f"pins select source {pins.source!r}; this sensor follows {source} mode"


def build_upstream_commit_sensor(
    *,
    job: JobDefinition = update_job,
    repo_dir: str | Path = REPO_ROOT,
    nix_dir: str = "nix",
    url: str | None = None,
    branch: str | None = None,
    name: str = COMMIT_SENSOR_NAME,
    minimum_interval_seconds: int = 600,
    default_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED,
    timeout_seconds: float = 60,
    partitions: PartitionFollow | None = None,
) -> SensorDefinition:
    """A sensor requesting an update run when the followed branch moves past the pinned rev.

    Args:
        job: The update job to run (its op is configured with `rev`).
        repo_dir: The checkout whose `nix/pins.json` holds the pinned rev.
        nix_dir: The package set directory, relative to `repo_dir`.
        url: Repository to follow; default: `git.url` of the pins (Dagster's GitHub repository).
        branch: Branch to follow; default: `git.branch` of the pins (`master`).
        name: Sensor name.
        minimum_interval_seconds: Seconds between evaluations.
        default_status: Whether the sensor runs as soon as the daemon loads it.
        timeout_seconds: Limit of `git ls-remote`.
        partitions: Add each head as a partition of these (``kind`` commits), in either source mode.
    """
    pins_path = Path(repo_dir) / nix_dir / "pins.json"

    @sensor(
        name=name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Requests an update run when the upstream branch head differs from the pinned rev.",
    )
    def _commit_sensor(context: SensorEvaluationContext) -> SensorResult:
        cursor = UpstreamCursor.from_json(context.cursor)
        pins = _pins_in_mode(pins_path, "git", cursor, context, any_mode=partitions is not None)
        if isinstance(pins, SensorResult):
            return pins
        follow_url = url or pins.git.url
        follow_branch = branch or pins.git.branch
        try:
            head = git_upstream.ls_remote_head(follow_url, follow_branch, timeout=timeout_seconds)
        except (git_upstream.UpstreamError, ValueError) as e:
            cursor = UpstreamCursor(cursor.last_seen, cursor.last_requested, str(e))
            return _skip(f"upstream unreachable: {e}", cursor, context)
        cursor = UpstreamCursor(head, cursor.last_requested, None)
        added = partition_requests(context, partitions, [head])
        if pins.source != "git":
            return _skip(_other_mode(pins, "git"), cursor, context, added)
        if head == pins.git.rev:
            return _skip(f"{follow_branch} head {head} is the pinned rev: nothing to update", cursor, context, added)
        if head == cursor.last_requested:
            return _skip(f"an update to {head} was already requested", cursor, context, added)
        cursor = UpstreamCursor(head, head, None)
        context.log.info(f"{follow_branch} moved to {head} (pinned: {pins.git.rev}): requesting an update")
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=head,
                    run_config=update_run_config(rev=head),
                    tags={f"{TAG_PREFIX}/rev": head, f"{TAG_PREFIX}/old": pins.git.rev or "none"},
                )
            ],
            cursor=cursor.to_json(),
            dynamic_partitions_requests=added,
        )

    return _commit_sensor


def build_release_sensor(
    *,
    job: JobDefinition = update_job,
    repo_dir: str | Path = REPO_ROOT,
    nix_dir: str = "nix",
    pip_args: Sequence[str] = (),
    scope: str | None = "bootstrap",
    nix_executable: str = "nix",
    nix_config: str = DEFAULT_NIX_CONFIG,
    name: str = RELEASE_SENSOR_NAME,
    minimum_interval_seconds: int = 3600,
    default_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED,
    timeout_seconds: float = 120,
    partitions: PartitionFollow | None = None,
) -> SensorDefinition:
    """A sensor requesting an update run when a newer Dagster release is complete on the package index:
    every distribution the package set declares has an sdist of the version its declaration derives (the
    declarations and versions are Nix's, `dagster-src.declarations` at the candidate pins).

    Args:
        job: The update job to run (its op is configured with `version`).
        repo_dir: The checkout whose `nix/pins.json` holds the pinned version.
        nix_dir: The package set directory, relative to `repo_dir`.
        pip_args: Extra pip arguments (the user's pip configuration applies anyway).
        scope: `--argstr scope` of the package set (None: none), as the update job's.
        nix_executable: The `nix` command (`nix-instantiate` beside it evaluates the declarations).
        nix_config: NIX_CONFIG of the evaluation.
        name: Sensor name.
        minimum_interval_seconds: Seconds between evaluations.
        default_status: Whether the sensor runs as soon as the daemon loads it.
        timeout_seconds: Limit of each pip call.
        partitions: Add the newest ``keep`` complete releases as partitions of these (``kind`` releases), in
            either source mode.
    """
    pins_path = Path(repo_dir) / nix_dir / "pins.json"
    settings = UpdateSettings(
        repo_dir=Path(repo_dir), nix_dir=nix_dir, nix_args={"scope": scope} if scope else {},
        nix_executable=nix_executable, nix_config=nix_config, pip_args=tuple(pip_args), timeout_seconds=timeout_seconds,
    )  # fmt: skip

    @sensor(
        name=name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Requests an update run when a newer Dagster release has an sdist of every distribution "
        "the package set declares.",
    )
    def _release_sensor(context: SensorEvaluationContext) -> SensorResult:
        cursor = UpstreamCursor.from_json(context.cursor)
        pins = _pins_in_mode(pins_path, "release", cursor, context, any_mode=partitions is not None)
        if isinstance(pins, SensorResult):
            return pins
        try:
            releases, problems = complete_releases(settings, Path(repo_dir), pins, partitions.keep if partitions else 1)
        except (UpdateError, ValueError) as e:
            cursor = UpstreamCursor(cursor.last_seen, cursor.last_requested, str(e))
            what = "package index unreachable" if "package index" in str(e) else "cannot look up releases"
            return _skip(f"{what}: {e}", cursor, context)
        if not releases:
            cursor = UpstreamCursor(cursor.last_seen, cursor.last_requested, None)
            return _skip(
                "no version has all of the package set's distributions as sdists: "
                + ("; ".join(problems) or "the package index has none of them"),
                cursor, context,
            )  # fmt: skip
        release = releases[0]
        latest = str(release.version)
        added = partition_requests(context, partitions, [str(r.version) for r in releases])
        cursor = UpstreamCursor(latest, cursor.last_requested, None)
        if pins.source != "release":
            return _skip(_other_mode(pins, "release"), cursor, context, added)
        pinned = pins.release.version
        if not _newer(latest, pinned):
            return _skip(f"newest complete release {latest} is not newer than pinned {pinned}", cursor, context, added)
        if latest == cursor.last_requested:
            return _skip(f"an update to {latest} was already requested", cursor, context, added)
        cursor = UpstreamCursor(latest, latest, None)
        versions = ", ".join(f"{d.distribution} {d.version}" for d in release.declarations.values())
        context.log.info(f"release {latest} is complete ({versions}): requesting an update")
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"release-{latest}",
                    run_config=update_run_config(version=latest),
                    tags={f"{TAG_PREFIX}/version": latest, f"{TAG_PREFIX}/old": pinned},
                )
            ],
            cursor=cursor.to_json(),
            dynamic_partitions_requests=added,
        )

    return _release_sensor


def package_automation_condition() -> AutomationCondition:
    """The automation condition for the package assets: rebuild when a dependency was rebuilt.

    `AutomationCondition.eager()`: a package is requested when it is missing or any of its dependencies
    was materialized since it was last handled, and none of its dependencies is missing or in progress.
    So the packages downstream of `dagster-src` are rebuilt after the source changes, and a package whose
    build failed is requested again, once, as soon as its dependency is materialized again (fixed), not
    on every tick. Set it with `DagsterNixTranslatorSettings(automation_condition=...)`; the daemon's
    `default_automation_condition_sensor` evaluates it.
    """
    return AutomationCondition.eager()


def _newer(candidate: str, pinned: str) -> bool:
    try:
        return Version(candidate) > Version(pinned)
    except InvalidVersion:
        return candidate != pinned


upstream_commit_sensor = build_upstream_commit_sensor()
"""The commit sensor with default settings (this checkout, pins' url and branch)."""

release_sensor = build_release_sensor()
"""The release sensor with default settings (the user's pip configuration)."""


def update_definitions(
    *,
    repo_dir: str | Path = REPO_ROOT,
    nix_dir: str = "nix",
    scope: str | None = "bootstrap",
    pip_args: Sequence[str] = (),
    key_prefix: Sequence[str] = (),
    sensor_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED,
    partitions: PartitionFollow | None = None,
    **resource_fields: Any,
) -> Definitions:
    """The update job, both sensors and the `pin_updater` resource, ready to merge into a code location.

    Args:
        repo_dir: The git checkout holding `nix/pins.json` (commits are made there).
        nix_dir: The package set directory, relative to `repo_dir`.
        scope: `--argstr scope` of the package set.
        pip_args: Extra pip arguments of the release lookup.
        key_prefix: Prefix of the package asset keys (the translator's `key_prefix`).
        sensor_status: Default status of both sensors (turn them on in the UI, or pass RUNNING).
        partitions: Versions as partitions: the sensor of their kind adds what it finds to them.
        **resource_fields: Further fields of `PinUpdater` (e.g. `nix_executable`, `timeout_seconds`).

    Returns:
        A `Definitions`; merge it: `Definitions.merge(defs, update_definitions())`.
    """
    updater = PinUpdater(
        repo_dir=str(repo_dir),
        nix_dir=nix_dir,
        scope=scope,
        pip_args=list(pip_args),
        **resource_fields,
    )
    # The job carries its resource: Dagster would otherwise copy both sensors to bind it, passing the beta
    # `owners` parameter and warning on every load.
    job = build_update_job(key_prefix=key_prefix, resource_defs={"pin_updater": updater})
    return Definitions(
        jobs=[job, build_bisect_job(resource_defs={"pin_updater": updater})],
        sensors=[
            build_upstream_commit_sensor(
                job=job, repo_dir=repo_dir, nix_dir=nix_dir, default_status=sensor_status,
                partitions=partitions if partitions and partitions.kind == "commits" else None,
            ),
            build_release_sensor(
                job=job, repo_dir=repo_dir, nix_dir=nix_dir, pip_args=pip_args, default_status=sensor_status,
                scope=scope, nix_executable=resource_fields.get("nix_executable", "nix"),
                nix_config=resource_fields.get("nix_config", DEFAULT_NIX_CONFIG),
                partitions=partitions if partitions and partitions.kind == "releases" else None,
            ),
        ],
        resources={"pin_updater": updater},
    )
