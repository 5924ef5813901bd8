"""In which order a build's outcomes are reported, and which are held back (no Dagster import).

Nix finishes derivations in any order; Dagster wants a package reported after the packages it depends on.
:class:`ReportQueue` takes outcomes as they come and releases, as soon as allowed:

- a package once every selected package it depends on was reported and every *blocking* test of those
  passed (a failed blocking test keeps everything downstream from being materialized);
- a test once its package was reported (or at once if its package is not part of this run);
- nothing of a package that failed or was held back, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagster_nix_builder.nix.graph import NixPackageGraph
from dagster_nix_builder.nix.outcomes import Outcome, PackageOutcome, Target, TestOutcome


class ReportQueue:
    """Orders the outcomes of one build of ``targets`` (see the module docstring)."""

    def __init__(self, graph: NixPackageGraph, targets: Iterable[Target]) -> None:
        self.graph = graph
        self.targets = list(targets)
        self.packages = {t.attr for t in self.targets if t.test is None}
        self._blocking = {
            (t.attr, t.test) for t in self.targets if t.test is not None and graph[t.attr].tests[t.test].blocking
        }
        # What a package waits for: the selected packages upstream, and those upstream whose blocking tests
        # are selected (also of a package not built in this run: its test still blocks what depends on it).
        gates = self.packages | {a for a, _ in self._blocking}
        self._upstream = {a: graph.upstream(a) & gates for a in self.packages}
        self._tests_blocking: dict[str, list[str]] = {}
        for a, n in sorted(self._blocking):
            self._tests_blocking.setdefault(a, []).append(n)
        # The gates not passed yet (a package not reported, or a blocking test of it not passed): a held
        # package is looked at against these, not its whole upstream (thousands of packages in a big set).
        self._open = set(gates)
        self._order = {t: i for i, t in enumerate(self.targets)}
        self._pending: dict[Target, Outcome] = {}
        self.reported: set[Target] = set()
        self.passed_tests: set[tuple[str, str]] = set()
        self.failures: dict[str, str] = {}
        """What failed or was held back, by installable (``<attr>`` or ``<attr>.tests.<name>``): the reason."""

    def add(self, outcome: Outcome) -> list[Outcome]:
        """Take one outcome; return what may be reported now, in order."""
        target = Target(outcome.attr, outcome.test.name if isinstance(outcome, TestOutcome) else None)
        if isinstance(outcome, PackageOutcome) and not outcome.ok:
            self.failures[target.installable] = _with_tail(outcome.reason or "failed", outcome.log_tail)
        else:
            self._pending[target] = outcome
        return self._release()

    def finish(self) -> list[Outcome]:
        """After the last outcome: release what may still go, hold back the rest with the reason."""
        reports = self._release()
        for target in [t for t in self.targets if t not in self.reported and t.installable not in self.failures]:
            if target.test is None:
                reason = self._hold_reason(target.attr) or "no outcome"
                self.failures[target.installable] = reason.replace("waiting for", "not reported: no outcome of")
        return reports

    def _release(self) -> list[Outcome]:
        reports: list[Outcome] = []
        progress = True
        while progress:
            progress = False
            for target in sorted(self._pending, key=self._order.__getitem__):
                outcome = self._pending[target]
                if target.test is None:
                    held = self._hold_reason(target.attr)
                    if held:
                        if held.startswith("not materialized"):
                            del self._pending[target]
                            self.failures[target.installable] = held
                            progress = True
                        continue
                elif target.attr in self.packages and Target(target.attr) not in self.reported:
                    if target.attr in self._broken():
                        del self._pending[target]  # its package failed: the test says nothing new
                    continue
                del self._pending[target]
                self.reported.add(target)
                reports.append(outcome)
                if isinstance(outcome, TestOutcome):
                    if outcome.ok:
                        self.passed_tests.add((target.attr, outcome.test.name))
                    elif outcome.test.blocking:
                        self.failures[target.installable] = _with_tail(
                            f"blocking check {outcome.test.name} of {target.attr} failed: {outcome.reason}",
                            outcome.log_tail,
                        )
                if not self._gate_open(target.attr):
                    self._open.discard(target.attr)
                progress = True
        return reports

    def _broken(self) -> set[str]:
        return {i.split(".", 1)[0] for i in self.failures}

    def _gate_open(self, attr: str) -> bool:
        """Whether what depends on ``attr`` still waits for it: its package or a blocking test of it."""
        if attr in self.packages and Target(attr) not in self.reported:
            return True
        return any((attr, n) not in self.passed_tests for n in self._tests_blocking.get(attr, ()))

    def _hold_reason(self, attr: str) -> str | None:
        """Why ``attr`` cannot be reported (yet): a reason starting "not materialized" is final."""
        upstream = self._upstream[attr]
        for up in sorted(upstream & self._broken()):
            if up in self.failures:
                return f"not materialized: dependency {up} failed ({self.failures[up].splitlines()[0]})"
            for test in self._tests_blocking.get(up, ()):
                if f"{up}.tests.{test}" in self.failures:
                    return f"not materialized: the blocking check {test} of {up} failed"
        for up in sorted(upstream & self._open):
            if up in self.packages and Target(up) not in self.reported:
                return f"waiting for {up}"
            waiting = [n for n in self._tests_blocking.get(up, ()) if (up, n) not in self.passed_tests]
            if waiting:
                return f"waiting for the blocking check {waiting[0]} of {up}"
        return None


def _with_tail(reason: str, tail: Iterable[str]) -> str:
    lines = list(tail)
    return reason + ("\n    " + "\n    ".join(lines) if lines else "")


__all__ = ["ReportQueue"]
