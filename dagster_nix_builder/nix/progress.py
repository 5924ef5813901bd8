"""A run's progress and how long is left, from earlier build times (no Dagster import).

:class:`Progress` is told, once, what earlier runs recorded of each target (:class:`Recorded`: the seconds of its
last build, and how long that run went on after it) and then every outcome as it finishes. After each package
built it gives the line ``"<attr> built in 1.2 s: k of n done (j of m checks), about T s left"``, and at the end
a summary table (target, built or valid, where, seconds, expected, finished at).

The estimate, after a package ``p`` is built, is the larger of two:

- if ``p`` was built in an earlier run, that run's time left after ``p`` (``left``), scaled by the work left now
  over the work that was left then (the recorded seconds of the targets that finished after ``p`` in that run):
  so a run like the last one is expected to end as it did, with the derivations that are no target (sources,
  third-party wheels) and Nix's parallelism in it, and a run with less to build ends sooner; a package without
  such a record keeps the end the last estimate expected;
- the work left spread over the jobs: the recorded seconds of every target without an outcome yet (a target
  never built before counts as the median of the others) over the number of jobs Nix runs at once. Nix's
  order varies from run to run, and this bound keeps a package that finished late last time and early now
  from promising the end too soon.

With no recorded build time at all (a first run) there is no estimate: the line says so. A target found valid
costs nothing and gets no line.

Lines are throttled for large runs: none while the previous line is less than ``min_interval`` seconds old
(default 1 s); the line of the last package, if it was built, always. Every estimate is kept in
:attr:`Progress.estimates`, logged or not. Each outcome is O(1); the history is sorted once, the table built once.
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
class Recorded:
    """What an earlier run recorded of one target: the seconds of its last build, and (if known) how many
    seconds that run went on after the target finished and which run it was."""

    seconds: float
    left: float | None = None
    run: str | None = None


@dataclass(frozen=True)
class Estimate:
    """One estimate (None: no records), after the ``done``-th of ``total`` packages finished, ``elapsed`` s
    into the run."""

    elapsed: float
    done: int
    total: int
    seconds_left: float | None
    logged: bool


def target_of(outcome: Outcome) -> Target:
    """The build target an outcome settles."""
    return Target(outcome.attr, outcome.test.name if isinstance(outcome, TestOutcome) else None)


def _names(targets: Iterable[Target]) -> str:
    names = [t.installable for t in targets]
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def _work_left_then(recorded: Mapping[Target, Recorded]) -> dict[Target, float]:
    """For each target with a ``left``: the recorded seconds of the targets of its run that finished after it."""
    runs: dict[str | None, list[tuple[float, Target]]] = {}
    for target, record in recorded.items():
        if record.left is not None:
            runs.setdefault(record.run, []).append((record.left, target))
    then: dict[Target, float] = {}
    for members in runs.values():
        members.sort(key=lambda m: m[0])  # last to finish first
        total, i = 0.0, 0
        while i < len(members):  # targets that finished at the same moment are not after each other
            j = i
            while j < len(members) and members[j][0] == members[i][0]:
                then[members[j][1]] = total
                j += 1
            total += sum(recorded[t].seconds for _, t in members[i:j])
            i = j
    return then


class Progress:
    """Progress of one run of ``targets`` (see the module docstring). ``recorded``: what earlier runs recorded
    of each target; ``jobs``: how many derivations Nix builds at once."""

    def __init__(
        self,
        targets: Iterable[Target],
        recorded: Mapping[Target, Recorded],
        *,
        jobs: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = MIN_INTERVAL_S,
    ) -> None:
        self.targets = list(dict.fromkeys(targets))
        self.packages = sum(1 for t in self.targets if t.test is None)
        self.checks = len(self.targets) - self.packages
        self.recorded = {t: recorded[t] for t in self.targets if t in recorded}
        self.guessed = [t for t in self.targets if t not in self.recorded]
        self.median = statistics.median(r.seconds for r in self.recorded.values()) if self.recorded else None
        fallback = self.median if self.median is not None else 1.0
        self.expected = {t: self.recorded[t].seconds if t in self.recorded else fallback for t in self.targets}
        self._then = _work_left_then(self.recorded)
        self.jobs = max(1, jobs or 1)
        self.clock = clock
        self.min_interval = min_interval
        self.start = clock()
        self.outcomes: dict[Target, tuple[Outcome, float]] = {}
        self.estimates: list[Estimate] = []
        self._end: float | None = None
        self._left_work = sum(self.expected.values())
        self._done_packages = 0
        self._done_checks = 0
        self._last_line: float | None = None

    def basis(self) -> str:
        """What the estimate rests on, in one sentence."""
        if self.median is None:
            return "no estimate: no earlier build times recorded (this run records them)"
        known = len(self.targets) - len(self.guessed)
        text = f"estimated from the recorded build times of {known} of {len(self.targets)} targets"
        if self.guessed:
            text += (f"; never built before, so taken as the median of the others ({self.median:.1f} s): "
                     f"{_names(self.guessed)}")
        return text

    def seconds_left(self, now: float | None = None, after: Target | None = None) -> float | None:
        """The time left (see the module docstring), ``after`` the package built last; None without records."""
        if self.median is None:
            return None
        now = self.clock() if now is None else now
        spread = max(0.0, self._left_work) / self.jobs
        record = self.recorded.get(after) if after is not None else None
        if after is not None and record is not None and record.left is not None:
            then = self._then.get(after, 0.0)
            like_then = record.left * self._left_work / then if then > 0 else record.left + spread
            self._end = now + like_then
        expected = self._end - now if self._end is not None else 0.0
        return max(spread, expected, 0.0)

    def add(self, outcome: Outcome) -> str | None:
        """Take one finished outcome; the progress line to log now, if any (after a package built only)."""
        target = target_of(outcome)
        if target in self.outcomes or target not in self.expected:
            return None
        now = self.clock()
        self.outcomes[target] = (outcome, now - self.start)
        self._left_work -= self.expected[target]
        if target.test is not None:
            self._done_checks += 1
            return None
        self._done_packages += 1
        if not (outcome.built_now or outcome.build_seconds > 0):
            return None  # found valid (or blocked): nothing was built, nothing new to say
        left = self.seconds_left(now, target)
        last = self._done_packages == self.packages
        logged = last or self._last_line is None or now - self._last_line >= self.min_interval
        self.estimates.append(Estimate(round(now - self.start, 3), self._done_packages, self.packages, left, logged))
        if not logged:
            return None
        self._last_line = now
        what = f"built in {outcome.build_seconds:.1f} s" if outcome.ok else "failed"
        checks = f" ({self._done_checks} of {self.checks} checks)" if self.checks else ""
        about = f"about {left:.0f} s left" if left is not None else "no estimate"
        line = f"{target.attr} {what}: {self._done_packages} of {self.packages} done{checks}, {about}"
        return line + (f" ({self.basis()})" if len(self.estimates) == 1 else "")

    def summary(self) -> str:
        """The table of every target: finished ones in the order they finished, then those without outcome."""
        elapsed = self.clock() - self.start
        rows = [("target", "status", "where", "seconds", "expected", "finished at")]
        for target, (outcome, at) in self.outcomes.items():
            status = "failed" if not outcome.ok else ("built" if outcome.built_now else "valid")
            rows.append((target.installable, status, outcome.where, f"{outcome.build_seconds:.1f}",
                         f"{self.expected[target]:.1f}", f"{at:.1f}"))
        for target in self.targets:
            if target not in self.outcomes:
                rows.append((target.installable, "not reported", "local", "", f"{self.expected[target]:.1f}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        built = sum(1 for o, _ in self.outcomes.values() if o.built_now)
        head = (f"Summary: {self._done_packages} of {self.packages} packages and {self._done_checks} of "
                f"{self.checks} checks in {elapsed:.1f} s, {built} built now; {self.basis()}")
        return "\n".join([head, *lines])


__all__ = ["Estimate", "Progress", "Recorded", "target_of"]
