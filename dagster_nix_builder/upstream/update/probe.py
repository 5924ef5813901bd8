"""The steps of a bisect: the source at one rev, built and checked for real, as the update's build and check
steps would (`rebuild.plan`, `rebuild.run`, `rebuild.check`), with the rev's pins passed to Nix
(`--arg pins`): nothing is written into `nix/pins.json`, the checkout or the store by hand.

A step seen once is never built again: its source's hash and version are recorded per URL and rev (found by
Nix once, `hash.discover_hashes` and `hash.source_version`); with them the rev's derivations are known
without building, and a rev whose every output is valid is good from the store alone, while one whose
derivation failed before is bad from the record of failures kept by derivation path (`StepCache`, a small
JSON file). The lock step is not run: a requirement the wheel lock lacks fails the build or the import check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dagster_nix_builder.upstream import lookup
from dagster_nix_builder.upstream.pins import Pins, atomic_write_bytes, validate_rev
from dagster_nix_builder.upstream.update.bisect import BisectError, BisectResult, Verdict, bisect
from dagster_nix_builder.upstream.update.hash import discover_hashes, source_version
from dagster_nix_builder.upstream.update.model import FailedTarget, Log, UpdateError, UpdateSettings, UpdateStep
from dagster_nix_builder.upstream.update.rebuild import BuildTimeoutError, check, plan, run

CACHE_FORMAT = 1


class StepCache:
    """What earlier steps found, in a JSON file: each rev's source (`hash`, `version`) per URL, and each
    failed derivation's failure (package or test, reason, log tail) by its path.

    Written atomically after each step, merged with what another bisect wrote meanwhile (last writer wins
    for one key: every value is a fact about an immutable rev or derivation).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {"format": CACHE_FORMAT, "sources": {}, "failures": {}}
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {"format": CACHE_FORMAT, "sources": {}, "failures": {}}  # a cache: started again
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return {"format": CACHE_FORMAT, "sources": {}, "failures": {}}
        data.setdefault("sources", {})
        data.setdefault("failures", {})
        return data

    def source(self, url: str, rev: str) -> tuple[str, str] | None:
        """The hash and version of the source at `rev` of `url`, when a step found them."""
        entry = self.data["sources"].get(url, {}).get(rev)
        return (str(entry["hash"]), str(entry["version"])) if isinstance(entry, dict) else None

    def remember_source(self, url: str, rev: str, hash_: str, version: str) -> None:
        self.data["sources"].setdefault(url, {})[rev] = {"hash": hash_, "version": version}
        self._save()

    def failures(self, drv_paths: Sequence[str]) -> list[FailedTarget]:
        """The recorded failures of these derivations."""
        found = self.data["failures"]
        return [FailedTarget.from_dict(found[d]) for d in drv_paths if isinstance(found.get(d), dict)]

    def remember_failures(self, failures: Sequence[FailedTarget]) -> None:
        """Record failures of derivations (those without one, a `--version` run or a custom check, are not
        cached: they run again at no build's cost)."""
        new = {f.drv_path: f.to_dict() for f in failures if f.drv_path}
        if new:
            self.data["failures"].update(new)
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ours, self.data = self.data, self._read()  # another bisect may have written meanwhile
        for url, revs in ours["sources"].items():
            self.data["sources"].setdefault(url, {}).update(revs)
        self.data["failures"].update(ours["failures"])
        atomic_write_bytes(self.path, (json.dumps(self.data, indent=1, sort_keys=True) + "\n").encode())


class RevProbe:
    """Builds and checks the source at one rev: the bisect's callback.

    Args:
        settings: How the update runs Nix.
        pins: The checkout's pins; each step builds them with the git source at its rev.
        cache: What earlier steps found.
        rebuild_failed: Build again what the cache says failed (a failure that was the machine's, not the
            rev's: a killed build).
        log: Progress messages.
    """

    def __init__(
        self, settings: UpdateSettings, pins: Pins, cache: StepCache, *, rebuild_failed: bool = False,
        log: Log | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.repo_dir = Path(settings.repo_dir).resolve()
        self.pins = replace(pins, source="git")
        self.cache = cache
        self.rebuild_failed = rebuild_failed
        self.log: Log = log or (lambda _message: None)

    def pins_at(self, rev: str) -> Pins:
        """The pins with the git source at `rev`, its hash and version (asked of Nix once per rev)."""
        url = self.pins.git.url
        known = self.cache.source(url, rev)
        if known is not None:
            return self.pins.with_git(rev=rev, hash=known[0], version=known[1])
        candidate = self.pins.with_git(rev=rev)
        try:
            hashes = discover_hashes(self.settings, self.repo_dir, "git", rev, candidate, self.log)
            final = candidate.with_git(hash=hashes[self.settings.source_attr])
            version, _tree = source_version(self.settings, self.repo_dir, final, self.log)
        except UpdateError as e:
            raise BisectError(f"the source at {rev} cannot be fetched: {e}") from e
        self.cache.remember_source(url, rev, str(final.git.hash), version)
        return final.with_git(version=version)

    def __call__(self, rev: str) -> Verdict:
        """The verdict on `rev`: from the store or the record of failures when they know, else by a build."""
        candidate = self.pins_at(rev)
        try:
            planned = plan(self.settings, self.repo_dir, "git", candidate)
        except UpdateError as e:  # the set does not evaluate at this rev: the update's build step fails so
            return Verdict(rev, False, False, e.step.value, e.reason, tuple(e.failures), tuple(e.messages))
        invalid = planned.cli.invalid_paths(planned.out_paths())
        pending = [t for t in planned.targets if invalid.intersection(planned.outputs(t))]
        recorded = [] if self.rebuild_failed else self.cache.failures([planned.drv_path(t) for t in pending])
        if recorded:
            step = "build" if any(f.test is None for f in recorded) else "check"
            return Verdict(rev, good=False, step=step, reason="recorded failure", failures=tuple(recorded))
        try:
            checks = check(self.settings, run(planned, self.settings, self.log), self.log)
        except BuildTimeoutError as e:
            raise BisectError(f"the build of {rev} was stopped: {e.reason}") from e
        except UpdateError as e:
            if e.step not in (UpdateStep.BUILD, UpdateStep.CHECK):
                raise
            self.cache.remember_failures(e.failures)
            return Verdict(rev, False, bool(pending), e.step.value, e.reason, tuple(e.failures), tuple(e.messages))
        return Verdict(rev, good=True, built=bool(pending), messages=tuple(checks))


def verdict_of_update(error: UpdateError) -> Verdict | None:
    """The failed update's own verdict on the rev it tried (no need to build it again), or None when it
    failed before building it."""
    if error.new is None or error.step not in (UpdateStep.BUILD, UpdateStep.CHECK):
        return None
    return Verdict(
        error.new, good=False, step=error.step.value, reason=error.reason, failures=tuple(error.failures),
        messages=tuple(error.messages),
    )  # fmt: skip


def bisect_git(
    settings: UpdateSettings,
    good: str,
    bad: str,
    *,
    pins: Pins,
    cache_path: Path | None,
    known: Mapping[str, Verdict] | None = None,
    rebuild_failed: bool = False,
    log: Log | None = None,
) -> BisectResult:
    """The first bad commit between `good` and `bad` of the git upstream `pins` name.

    Args:
        settings: How the update runs Nix (its checkout's package set is what is built).
        good: The last good rev (40 hex), e.g. the pin before a failed update.
        bad: The failing rev (40 hex).
        pins: The pins to build each rev with (the checkout's; `git.url` is the upstream).
        cache_path: The JSON file of what steps found (None: keep nothing).
        known: Verdicts already known, e.g. the failed update's own on `bad` (`verdict_of_update`).
        rebuild_failed: Build again what the cache says failed.
        log: Progress messages.

    Raises:
        BisectError: Bad revs, a history without the range, a bad end that passes, a rev that cannot be
            fetched or whose build was stopped.
    """
    say: Log = log or (lambda _message: None)
    try:
        good, bad = validate_rev(good), validate_rev(bad)
        history = lookup.commits_between(pins.git.url, pins.git.branch, good, bad, timeout=settings.timeout_seconds)
    except (ValueError, lookup.UpstreamError) as e:
        raise BisectError(str(e)) from e
    cache = StepCache(cache_path)
    for verdict in (known or {}).values():
        cache.remember_failures(verdict.failures)  # the update saw them fail: no step builds them again
    revs = [sha for sha, _subject in history]
    say(f"bisect: {len(revs)} commits after {good[:12]} up to {bad[:12]} in {pins.git.url}")
    probe = RevProbe(settings, pins, cache, rebuild_failed=rebuild_failed, log=say)
    result = bisect(good, revs, probe, known=known, subjects=dict(history), log=say)
    say(result.summary())
    return result


__all__ = ["RevProbe", "StepCache", "bisect_git", "verdict_of_update"]
