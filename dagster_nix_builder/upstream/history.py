"""Upstream history as partitions: the pins of one Dagster release or one commit, resolved the way the update's
resolve and hash steps would (a release: complete on the package index, Nix's hash of each declared sdist; a
rev: Nix's hash of the tree and the version its own ``version.py`` says), without writing ``nix/pins.json``.

What is resolved is kept in a small JSON file (:class:`PartitionPinsStore`, written atomically, outside the
checkout and the store: by default in the Dagster instance's directory), so a partition's pins are asked of the
index and Nix once; the materialization of a partition passes them to Nix as ``--arg pins``. The wheel lock is not
regenerated for a partition (as in a bisect step): the committed ``nix/bootstrap/wheels.json`` is what builds.

Which partitions there are is what the sensors found (:func:`partition_requests`): the keys validated, the newest
``keep`` kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from dagster import AddDynamicPartitionsRequest, DeleteDynamicPartitionsRequest, SensorEvaluationContext
from packaging.version import InvalidVersion, Version

from dagster_nix_builder.upstream.pins import Pins, PinsError, atomic_write_bytes, validate_rev, validate_version
from dagster_nix_builder.upstream.update.bisect import BisectError
from dagster_nix_builder.upstream.update.hash import discover_hashes
from dagster_nix_builder.upstream.update.model import Log, UpdateError, UpdateSettings
from dagster_nix_builder.upstream.update.probe import RevProbe, StepCache
from dagster_nix_builder.upstream.update.resolve import resolve_release

HistoryKind = Literal["releases", "commits"]
STORE_FORMAT = 1
STORE_NAME = "nix-partition-pins.json"
"""The store's file name in the Dagster instance's directory (its default place)."""


class PartitionKeyError(ValueError):
    """A partition key that cannot name a release or a commit."""


def validate_partition_key(kind: HistoryKind, key: str) -> str:
    """A release partition's key is a version (PEP 440, as the index has it), a commit partition's the full
    40-hex rev (lowercase: the key as git prints it).

    Raises:
        PartitionKeyError: naming the key and what it must be.
    """
    try:
        if kind == "commits":
            rev = validate_rev(key)
            if rev != key:
                raise PartitionKeyError(f"partition key {key!r}: a commit's key is its rev in lowercase ({rev})")
            return rev
        version = validate_version(key)
        Version(version)
    except (PinsError, InvalidVersion) as e:
        what = "a full 40-hex commit id" if kind == "commits" else "a release version such as 1.13.27"
        raise PartitionKeyError(f"partition key {key!r} is not {what}: {e}") from None
    return version


def partition_pins(
    settings: UpdateSettings, kind: HistoryKind, key: str, base: Pins, *, steps: Path | None = None, log: Log
) -> Pins:
    """The pins of one partition: ``base`` (the checkout's pins) with its source at ``key``.

    Args:
        settings: How the update runs Nix and pip (its package set is the one resolved against).
        kind: ``releases`` (``key`` a version) or ``commits`` (``key`` a rev of ``base.git.url``).
        key: The partition key (validated here).
        base: The checkout's pins (the git upstream, the pins of whatever the partition does not move).
        steps: The bisect's record of each rev's source (:class:`StepCache`): a rev resolved by a bisect is
            not asked of Nix again, and the other way round.
        log: Progress messages.

    Raises:
        PartitionKeyError: the key is no version or rev.
        UpdateError: the release is not complete on the index, or Nix could not hash its sdists.
        BisectError: the rev cannot be fetched.
    """
    key = validate_partition_key(kind, key)
    repo_dir = Path(settings.repo_dir)
    if kind == "commits":
        return RevProbe(settings, base, StepCache(steps), log=log).pins_at(key)
    candidate = replace(base, source="release").with_release(version=key, hashes={})
    release = resolve_release(key, settings, repo_dir, candidate, log)
    hashes = discover_hashes(settings, repo_dir, "release", key, candidate, log, release.declarations)
    return candidate.with_release(hashes=dict(sorted(hashes.items())))


class PartitionPinsStore:
    """The resolved pins of each partition, by kind and key, in one JSON file (each value a fact about an
    immutable release or rev, so the last writer wins and a lost file is only resolved again)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            return {"format": STORE_FORMAT, "releases": {}, "commits": {}}
        return data

    def get(self, kind: HistoryKind, key: str) -> Pins | None:
        """The stored pins of a partition (None: never resolved, or unreadable)."""
        entry = self._read().get(kind, {}).get(key)
        try:
            return Pins.from_dict(entry) if isinstance(entry, dict) else None
        except PinsError:
            return None

    def put(self, kind: HistoryKind, key: str, pins: Pins) -> None:
        """Store a partition's pins (read again first: another run may have stored another partition)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self._read()
        data.setdefault(kind, {})[key] = pins.to_dict()
        atomic_write_bytes(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def pins_for(self, kind: HistoryKind, key: str, resolve: Callable[[], Pins], log: Log) -> Pins:
        """The partition's pins: stored, or resolved now and stored."""
        key = validate_partition_key(kind, key)
        known = self.get(kind, key)
        if known is not None:
            log(f"partition {key}: pins from {self.path}")
            return known
        pins = resolve()
        self.put(kind, key, pins)
        log(f"partition {key}: pins resolved and stored in {self.path}")
        return pins


def newest_first(kind: HistoryKind, keys: list[str]) -> list[str]:
    """Partition keys newest first: releases by version, commits in the order they were added (latest last)."""
    if kind == "commits":
        return list(reversed(keys))

    def order(key: str) -> Version:
        try:
            return Version(key)
        except InvalidVersion:
            return Version("0")

    return sorted(keys, key=order, reverse=True)


PartitionRequest = AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest


@dataclass(frozen=True)
class PartitionFollow:
    """Versions as partitions: the dynamic partitions a sensor adds what it finds to.

    Attributes:
        name: The ``DynamicPartitionsDefinition``'s name.
        kind: ``releases`` (the release sensor adds versions) or ``commits`` (the commit sensor adds revs).
        keep: How many partitions stay: the newest (releases by version, commits by when they were added).
    """

    name: str
    kind: HistoryKind
    keep: int = 10


def partition_requests(
    context: SensorEvaluationContext, follow: PartitionFollow | None, found: Sequence[str]
) -> list[PartitionRequest]:
    """The requests adding each of ``found`` that is no partition yet, and deleting the oldest beyond ``keep``."""
    if follow is None:
        return []
    existing = list(context.instance.get_dynamic_partitions(follow.name))
    new = []
    for key in found:
        try:
            key = validate_partition_key(follow.kind, key)
        except PartitionKeyError as e:
            context.log.warning(f"not a partition: {e}")
            continue
        if key not in existing and key not in new:
            new.append(key)
    dropped = newest_first(follow.kind, existing + new[::-1])[follow.keep :]
    requests: list[PartitionRequest] = []
    if added := [k for k in new if k not in dropped]:
        context.log.info(f"new partitions of {follow.name}: {', '.join(added)}")
        requests.append(AddDynamicPartitionsRequest(follow.name, added))
    if gone := [k for k in dropped if k in existing]:
        context.log.info(f"partitions of {follow.name} beyond keep={follow.keep}, deleted: {', '.join(gone)}")
        requests.append(DeleteDynamicPartitionsRequest(follow.name, gone))
    return requests


__all__ = [
    "STORE_NAME", "BisectError", "HistoryKind", "PartitionFollow", "PartitionKeyError", "PartitionPinsStore",
    "PartitionRequest", "UpdateError", "newest_first", "partition_pins", "partition_requests",
    "validate_partition_key",
]  # fmt: skip
