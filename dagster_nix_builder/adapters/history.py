"""The build times earlier runs recorded, read from the Dagster instance once per run (for
:class:`~dagster_nix_builder.nix.progress.Progress`).

A target's time is the ``build_seconds`` of its newest materialization (a package) or check evaluation (a test)
whose ``built_now`` is true: one that found the outputs valid recorded no build time. How long its run went on
after it is the newest result of that run among those read, minus its own (the events' timestamps).
The newest of every target is read in two batch queries; a target whose newest was not a build is looked up
further back alone (``LOOKBACK`` records), for at most ``MAX_LOOKUPS`` targets per run, so reading stays cheap
with thousands of packages: the rest count as never built (the median of the others).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance

from dagster_nix_builder.nix.outcomes import Target
from dagster_nix_builder.nix.progress import Recorded

LOOKBACK = 10
MAX_LOOKUPS = 100


def _build_seconds(metadata: Mapping[str, Any] | None) -> float | None:
    """The recorded build time, if this record is of a build."""
    if not metadata:
        return None
    built, seconds = metadata.get("built_now"), metadata.get("build_seconds")
    if built is None or seconds is None or not getattr(built, "value", False):
        return None
    return float(seconds.value)


def _materialization_metadata(entry: Any) -> Mapping[str, Any] | None:
    materialization = getattr(entry, "asset_materialization", None) if entry is not None else None
    return materialization.metadata if materialization is not None else None


def _evaluation_metadata(entry: Any) -> Mapping[str, Any] | None:
    event = getattr(entry, "dagster_event", None) if entry is not None else None
    if event is None or event.event_type != DagsterEventType.ASSET_CHECK_EVALUATION:
        return None  # planned only: that run stopped before the check had a result
    return event.asset_check_evaluation_data.metadata


def recorded_builds(
    instance: DagsterInstance, targets: Iterable[Target], keys: Mapping[str, AssetKey]
) -> dict[Target, Recorded]:
    """What earlier runs in ``instance`` recorded of the last build of each of ``targets`` (``keys``: the asset
    key of each package)."""
    targets = [t for t in targets if t.attr in keys]
    packages = {keys[t.attr]: t for t in targets if t.test is None}
    checks = {AssetCheckKey(keys[t.attr], t.test): t for t in targets if t.test is not None}
    found: dict[Target, tuple[float, Any]] = {}  # the seconds and the event log entry
    again: list[tuple[AssetKey | AssetCheckKey, Target]] = []
    for key, entry in instance.get_latest_materialization_events(list(packages)).items():
        seconds = _build_seconds(_materialization_metadata(entry))
        if seconds is not None:
            found[packages[key]] = (seconds, entry)
        elif entry is not None:
            again.append((key, packages[key]))
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(checks)) if checks else {}
    for check_key, record in latest.items():
        seconds = _build_seconds(_evaluation_metadata(record.event))
        if seconds is not None:
            found[checks[check_key]] = (seconds, record.event)
        elif record.event is not None:
            again.append((check_key, checks[check_key]))
    for lookup, target in again[:MAX_LOOKUPS]:
        back = _further_back(instance, lookup)
        if back is not None:
            found[target] = back
    ends: dict[str, float] = {}
    for _, entry in found.values():
        ends[entry.run_id] = max(ends.get(entry.run_id, entry.timestamp), entry.timestamp)
    return {
        target: Recorded(seconds, round(ends[entry.run_id] - entry.timestamp, 3), entry.run_id)
        for target, (seconds, entry) in found.items()
    }


def _further_back(instance: DagsterInstance, key: AssetKey | AssetCheckKey) -> tuple[float, Any] | None:
    """The newest recorded build of one target among its last ``LOOKBACK`` records: seconds and entry."""
    entries: Sequence[Any]
    if isinstance(key, AssetKey):
        entries = [r.event_log_entry for r in instance.fetch_materializations(key, limit=LOOKBACK).records]
        metadata = [_materialization_metadata(e) for e in entries]
    else:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=LOOKBACK)
        entries = [r.event for r in history]
        metadata = [_evaluation_metadata(e) for e in entries]
    for entry, each in zip(entries, metadata, strict=True):
        seconds = _build_seconds(each)
        if seconds is not None:
            return seconds, entry
    return None


__all__ = ["LOOKBACK", "MAX_LOOKUPS", "recorded_builds"]
