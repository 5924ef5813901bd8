"""A run's progress and how long is left, from earlier build times (no Dagster import).

:class:`Progress` is told, once, the seconds each target took when it was last built (what earlier runs
recorded) and then every outcome as it finishes. After each finished package it gives the line
``"<attr> built in 1.2 s: k of n done, about T s left"``, and at the end a summary table (target, built or
valid, where, seconds, expected).

The estimate: each target weighs its recorded seconds (a target never built before weighs the median of the
others; with no record at all every target weighs alike). Work done is the weight of what this run built, work
left the weight of what has no outcome yet (a target found valid costs nothing and leaves both). The time left
is the work left at this run's own pace, elapsed seconds per unit of work done: so the machine's speed, Nix's
parallelism and the derivations that are no target (sources, third-party wheels) are taken from the run
itself. Before anything is built the pace is one over the number of jobs (the recorded seconds run in
parallel).

Lines are throttled for large runs: one after a finished package unless the previous line is less than
``min_interval`` seconds old (default 1 s); the line of the last package always. Every estimate is kept in
:attr:`Progress.estimates`, logged or not. Each outcome is O(1); the table is built once.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from dagster_nix_builder.nix.outcomes import Outcome, Target, TestOutcome

MIN_INTERVAL_S = 1.0
NAMES_SHOWN = 5


@dataclass(frozen=True)
class Estimate:
    """One estimate, after the ``done``-th of ``total`` packages finished, ``elapsed`` s into the run."""

    elapsed: float
    done: int
    total: int
    seconds_left: float
    logged: bool


def target_of(outcome: Outcome) -> Target:
    """The build target an outcome settles."""
    return Target(outcome.attr, outcome.test.name if isinstance(outcome, TestOutcome) else None)


def _names(targets: Iterable[Target]) -> str:
    names = [t.installable for t in targets]
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


class Progress:
    """Progress of one run of ``targets`` (see the module docstring). ``recorded``: the seconds of each
    target's last build, from earlier runs; ``jobs``: how many derivations Nix builds at once."""

    def __init__(
        self,
        targets: Iterable[Target],
        recorded: Mapping[Target, float],
        *,
        jobs: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = MIN_INTERVAL_S,
    ) -> None:
        self.targets = list(dict.fromkeys(targets))
        self.packages = sum(1 for t in self.targets if t.test is None)
        self.checks = len(self.targets) - self.packages
        known = {t: float(recorded[t]) for t in self.targets if t in recorded}
        self.guessed = [t for t in self.targets if t not in known]
        self.median = statistics.median(known.values()) if known else None
        fallback = self.median if self.median is not None else 1.0
        self.expected = {t: known.get(t, fallback) for t in self.targets}
        self.jobs = max(1, jobs or 1)
        self.clock = clock
        self.min_interval = min_interval
        self.start = clock()
        self.outcomes: dict[Target, Outcome] = {}
        self.estimates: list[Estimate] = []
        self._done_work = 0.0
        self._left_work = sum(self.expected.values())
        self._done_packages = 0
        self._done_checks = 0
        self._last_line: float | None = None

    def basis(self) -> str:
        """What the estimate rests on, in one sentence."""
        if self.median is None:
            return "no earlier build times: every target weighs alike until this run's pace is known"
        known = len(self.targets) - len(self.guessed)
        text = f"estimated from the recorded build times of {known} of {len(self.targets)} targets"
        if self.guessed:
            text += (f"; never built before, so taken as the median of the others ({self.median:.1f} s): "
                     f"{_names(self.guessed)}")
        return text

    def seconds_left(self, now: float | None = None) -> float:
        """The time left: the work left at this run's pace so far."""
        elapsed = (self.clock() if now is None else now) - self.start
        pace = elapsed / self._done_work if self._done_work > 0 else 1.0 / self.jobs
        return max(0.0, self._left_work * pace)

    def add(self, outcome: Outcome) -> str | None:
        """Take one finished outcome; the progress line to log now, if any (after a package only)."""
        target = target_of(outcome)
        if target in self.outcomes or target not in self.expected:
            return None
        self.outcomes[target] = outcome
        weight = self.expected[target]
        self._left_work -= weight
        if outcome.built_now or outcome.build_seconds > 0:  # it ran (and may have failed): work done
            self._done_work += weight
        if target.test is not None:
            self._done_checks += 1
            return None
        self._done_packages += 1
        now = self.clock()
        left = self.seconds_left(now)
        last = self._done_packages == self.packages
        logged = last or self._last_line is None or now - self._last_line >= self.min_interval
        self.estimates.append(Estimate(round(now - self.start, 3), self._done_packages, self.packages, left, logged))
        if not logged:
            return None
        self._last_line = now
        what = f"built in {outcome.build_seconds:.1f} s" if outcome.built_now else outcome.status
        if not outcome.ok:
            what = "failed"
        checks = f" ({self._done_checks} of {self.checks} checks)" if self.checks else ""
        line = f"{target.attr} {what}: {self._done_packages} of {self.packages} done{checks}, about {left:.0f} s left"
        return line + (f" ({self.basis()})" if len(self.estimates) == 1 else "")

    def summary(self) -> str:
        """The table of every target: finished ones in the order they finished, then those without outcome."""
        elapsed = self.clock() - self.start
        rows = [("target", "status", "where", "seconds", "expected")]
        for target, outcome in self.outcomes.items():
            status = "failed" if not outcome.ok else ("built" if outcome.built_now else "valid")
            rows.append((target.installable, status, outcome.where, f"{outcome.build_seconds:.1f}",
                         f"{self.expected[target]:.1f}"))
        for target in self.targets:
            if target not in self.outcomes:
                rows.append((target.installable, "not reported", "local", "", f"{self.expected[target]:.1f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        built = sum(1 for o in self.outcomes.values() if o.built_now)
        head = (f"Summary: {self._done_packages} of {self.packages} packages and {self._done_checks} of "
                f"{self.checks} checks in {elapsed:.1f} s, {built} built now; {self.basis()}")
        return "\n".join([head, *lines])


__all__ = ["Estimate", "Progress", "target_of"]
