"""Bisect: the first bad commit between a good rev and a bad one, by binary search over the commits between
them, each step a call of a build-and-check callback (`probe.RevProbe` builds a rev of the source for real).

Pure: no Nix, no git. `revs` are the commits after the good rev up to the bad one, oldest first (the bad one
last); every commit before the first bad one is assumed good and every one from it on bad, as `git bisect`
assumes. The bad end is probed first (a rev that passes now is no bad end: nothing to bisect), unless its
verdict is `known` (the failed update's own), then the range is halved: at most ⌈log2 n⌉ + 1 probes for n
commits, and the first bad commit is always one that was probed, so its failure (package, check, log tail)
is what the result names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster_nix_builder.upstream.update.model import FailedTarget, Log


class BisectError(RuntimeError):
    """The range cannot be bisected (empty, the bad end passes, a rev cannot be built at all)."""


@dataclass(frozen=True)
class Verdict:
    """What one rev is.

    Attributes:
        rev: The commit.
        good: Whether the source at it builds and passes every check.
        built: Whether a build ran for it here (False: every output was valid already, or its failure was
            recorded by derivation).
        step: `build` or `check` when bad: which step of an update it fails.
        reason: Why it is bad, in one line.
        failures: The packages and tests whose own derivation failed there.
        messages: The failure's further lines (Nix's messages, a check's output).
    """

    rev: str
    good: bool
    built: bool = False
    step: str | None = None
    reason: str = ""
    failures: tuple[FailedTarget, ...] = ()
    messages: tuple[str, ...] = ()

    def describe(self) -> str:
        """`good`, or what fails: `dagster-lib: check imports failed`."""
        if self.good:
            return "good"
        if self.failures:
            return "; ".join(
                f"{f.attr}: build failed" if f.test is None else f"{f.attr}: check {f.test} failed"
                for f in self.failures
            )
        return f"{self.step or 'build'} failed: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rev": self.rev, "good": self.good, "built": self.built, "step": self.step, "reason": self.reason,
            "failures": [f.to_dict() for f in self.failures], "messages": list(self.messages),
        }  # fmt: skip


@dataclass(frozen=True)
class BisectResult:
    """The first bad commit, and how it was found.

    Attributes:
        good: The good end (the last good pin).
        bad: The bad end (the rev that failed).
        first_bad: The first bad commit.
        subject: Its subject line, when known.
        verdict: Its verdict: the package and check that fail there, with the log tail.
        steps: Every rev probed, in order.
        candidates: How many commits the range held (after `good`, up to and with `bad`).
    """

    good: str
    bad: str
    first_bad: str
    verdict: Verdict
    steps: tuple[Verdict, ...]
    candidates: int
    subject: str | None = None
    subjects: Mapping[str, str] = field(default_factory=dict)

    @property
    def builds(self) -> int:
        """How many steps ran a build (the others were answered by the store or the recorded failures)."""
        return sum(1 for v in self.steps if v.built)

    @property
    def bound(self) -> int:
        """The most probes a range of this size takes: ⌈log2 n⌉ + 1."""
        return max_probes(self.candidates)

    def summary(self) -> str:
        """One paragraph: the first bad commit, what fails there, and how many builds it took."""
        subject = f" ({self.subject})" if self.subject else ""
        return (
            f"bisect: the first bad commit is {self.first_bad}{subject}: {self.verdict.describe()} "
            f"({len(self.steps)} of at most {self.bound} steps over {self.candidates} commits "
            f"{self.good[:12]}..{self.bad[:12]}, {self.builds} built)"
        )

    def lines(self) -> list[str]:
        """The summary, each failure with its log tail, and the steps."""
        out = [self.summary()]
        for f in self.verdict.failures:
            out.append(f"{f.name}: {f.reason}")
            out += [f"  > {line}" for line in f.log_tail]
        if not self.verdict.failures:
            out += list(self.verdict.messages)
        for v in self.steps:
            how = "built" if v.built else "known"
            out.append(f"step {v.rev[:12]} {self.subjects.get(v.rev, '')!r}: {v.describe()} ({how})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "good": self.good, "bad": self.bad, "first_bad": self.first_bad, "subject": self.subject,
            "verdict": self.verdict.to_dict(), "steps": [v.to_dict() for v in self.steps],
            "candidates": self.candidates, "builds": self.builds, "bound": self.bound,
        }  # fmt: skip


def max_probes(n: int) -> int:
    """⌈log2 n⌉ + 1: the bad end, then halving n commits."""
    return math.ceil(math.log2(n)) + 1 if n > 0 else 0


def bisect(
    good: str,
    revs: Sequence[str],
    probe: Callable[[str], Verdict],
    *,
    known: Mapping[str, Verdict] | None = None,
    subjects: Mapping[str, str] | None = None,
    log: Log | None = None,
) -> BisectResult:
    """The first bad commit of `revs` (the commits after `good`, oldest first, the bad end last).

    Args:
        good: The good end, not probed (the last pin that passed).
        revs: The commits after it, up to and with the bad end.
        probe: Builds and checks one rev; called at most once per rev.
        known: Verdicts already known (the failed update's own, of the bad end): not probed again.
        subjects: Commit subjects, for the log and the result.
        log: Progress messages.

    Raises:
        BisectError: `revs` is empty, or the bad end is good.
    """
    say = log or (lambda _message: None)
    titles = dict(subjects or {})
    if not revs:
        raise BisectError(f"no commits after {good}: nothing to bisect")
    seen: dict[str, Verdict] = {}
    steps: list[Verdict] = []

    def verdict(rev: str) -> Verdict:
        if rev not in seen:
            v = (known or {}).get(rev) or probe(rev)
            seen[rev] = v
            steps.append(v)
            say(f"bisect: {rev[:12]} {titles.get(rev, '')!r}: {v.describe()}" + (" (built)" if v.built else ""))
        return seen[rev]

    bad_end = revs[-1]
    if verdict(bad_end).good:
        raise BisectError(f"the bad end {bad_end} builds and passes its checks now: nothing to bisect")
    lo, hi = -1, len(revs) - 1  # revs[lo] good (-1: `good`), revs[hi] bad
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if verdict(revs[mid]).good:
            lo = mid
        else:
            hi = mid
    first = revs[hi]
    return BisectResult(
        good=good, bad=bad_end, first_bad=first, verdict=seen[first], steps=tuple(steps), candidates=len(revs),
        subject=titles.get(first), subjects=titles,
    )  # fmt: skip


__all__ = ["BisectError", "BisectResult", "Verdict", "bisect", "max_probes"]
