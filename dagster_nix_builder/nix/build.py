"""One running ``nix build`` of packages and their tests, and what became of each.

The build starts a single ``nix build --keep-going --json`` of the selected packages (``<attr>``) and of
their selected tests (``<attr>.tests.<name>``, see :class:`~dagster_nix_builder.nix.graph.NixTest`), reads the
``internal-json`` log on stderr line by line, and yields a :class:`PackageOutcome` or a
:class:`TestOutcome` the moment Nix has made the outputs of one valid (or at the end, failed). Nix builds
the tests beside the packages, caches them by store path, and runs nothing twice.

No Dagster import: :mod:`dagster_nix_builder.adapters.results` turns outcomes into Dagster results.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.cli import NixCli, describe
from dagster_nix_builder.nix.errors import NixBuildError, NixCommandError
from dagster_nix_builder.nix.graph import NixPackageGraph
from dagster_nix_builder.nix.log_format import (
    ActivityProgress,
    ActivityStarted,
    ActivityStopped,
    ActivityType,
    BuildLogLine,
    NixLogEvent,
    NixMessage,
    PlainLine,
    parse_line,
)
from dagster_nix_builder.nix.outcomes import Note, Outcome, PackageOutcome, Status, Tail, Target, TestOutcome
from dagster_nix_builder.nix.package_source import attr_path_text

LOG_TAIL_LINES = 25
# At most this often (and after this long without a word from Nix) ask whether pending outputs became
# valid by other means than a build of ours, e.g. another process built them.
PROBE_INTERVAL_S = 1.0
DRV_IN_TEXT = re.compile(r"/nix/store/[0-9a-z]{32}-[^\s'\"`]+\.drv")
# What Nix says when `--rebuild` gives an output other than the valid one.
NONDETERMINISTIC = "may not be deterministic"


@dataclass
class _Build:
    drv_path: str
    started: float
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    finished: float | None = None


class NixBuild:
    """A running ``nix build`` of some packages of a package set and some of their tests.

    ``rebuild``: build the (already valid) targets again and compare (``--rebuild``); how a check is run
    again. Consume it with :meth:`outcomes` (in completion order) or :meth:`wait`.
    """

    def __init__(
        self, cli: NixCli, graph: NixPackageGraph, targets: Sequence[Target], *, rebuild: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        graph.require([(t.attr, t.test) for t in targets])
        self.cli = cli
        self.graph = graph
        order = {attr: i for i, attr in enumerate(graph.topological_order())}
        self.targets = sorted(dict.fromkeys(targets), key=lambda t: (order[t.attr], t.test or ""))
        self.rebuild = rebuild
        # A package whose expression throws is not named to Nix: one installable that fails to evaluate
        # fails the whole command, before anything builds. It fails alone, with Nix's error (graph.py).
        self.unevaluable = [t for t in self.targets if graph[t.attr].eval_error]
        # Most downstream first: Nix starts its goals in the order named, and the longest chains first make
        # a shorter cold build (dependencies-first was 1.5-3.7 s slower in each of three paired runs of the
        # whole set on 2 cores; downstream-first and alphabetical were even).
        buildable = [self._installable(t) for t in reversed(self.targets) if t not in self.unevaluable]
        self.command = cli.build_command(buildable, rebuild=rebuild)
        self._log = log or (lambda message: print(message, flush=True))
        self._by_drv = {self._drv(t): t for t in self.targets}
        self._builds: dict[str, _Build] = {}
        self._activities: dict[int, str] = {}  # activity id -> drv path of build activities
        self._waits: set[int] = set()  # activities waiting for a lock (another process builds)
        self._builds_activity: int | None = None
        self._done_count = 0
        self._outcomes: dict[Target, Outcome] = {}
        self.errors: list[str] = []
        self.returncode: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        # Lines of stderr with the time they were read: a build is timed from when Nix said it started.
        self._queue: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        self._line_time = 0.0
        self._threads: list[threading.Thread] = []
        self._last_probe = 0.0
        self._deferred: set[Target] = set()  # valid, seen by a probe before the log caught up (see _probe)
        self._building: set[Target] = set()  # targets Nix said it started building, not settled yet
        self._started = False

    def _installable(self, target: Target) -> str | tuple[str, ...]:
        """The attribute path Nix builds for ``target`` (a flake check's is its own, under ``checks``)."""
        package = self.graph[target.attr]
        own = package.attr_path if target.test is None else package.tests[target.test].attr_path
        if own:
            return own
        if target.test is None:
            return attr_path_text((target.attr,))
        return attr_path_text((target.attr, *package.tests[target.test].under.split("."), target.test))

    def _drv(self, target: Target) -> str:
        package = self.graph[target.attr]
        return (package.drv_path if target.test is None else package.tests[target.test].drv_path) or ""

    def _paths(self, target: Target) -> list[str]:
        package = self.graph[target.attr]
        return list(package.outputs.values()) if target.test is None else [package.tests[target.test].out_path]

    def start(self) -> NixBuild:
        """Report what is valid already (unless rebuilding), then start Nix; returns self."""
        self._started = True
        for target in self.unevaluable:
            self._record(target, "failed", self.graph[target.attr].eval_error)
        if not self.rebuild:
            pending = [t for t in self.targets if t not in self._outcomes]
            invalid = self.cli.invalid_paths([p for t in pending for p in self._paths(t)])
            for target in pending:
                missing = invalid.intersection(self._paths(target))
                if not missing:
                    self._record(target, "valid")
                elif target.test is None and len(missing) < len(self._paths(target)):
                    self._complete(target, missing)
        if len(self._outcomes) == len(self.targets):
            if not self.rebuild and not self._builds:
                self._log("Every output is valid already: nothing to build, no nix build started.")
            self.returncode = 0
            return self
        self._log(f"Running: {describe(self.command)}")
        self.process = self.cli.popen(self.command)
        self._threads = [
            threading.Thread(target=self._read_stderr, name="nix-stderr", daemon=True),
            threading.Thread(target=self._drain_stdout, name="nix-stdout", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _complete(self, target: Target, missing: set[str]) -> None:
        """Build the missing outputs of a package some of whose outputs are valid (a GC kept ``out`` for a
        root and took ``dist``), alone and now: ``nix build <attr>`` realises only the default output, and
        Nix 2.8 fails a build that names ``<attr>.dist`` beside what needs ``<attr>``'s valid ``out``
        ("requires non-existent output", NixOS/nix#6572)."""
        package = self.graph[target.attr]
        names = [attr_path_text((target.attr, name)) for name, path in package.outputs.items() if path in missing]
        self._log(f"Building the missing outputs of {target.attr} first: {', '.join(names)}")
        started = time.monotonic()
        try:
            self.cli.run(self.cli.build_command(names))
        except NixCommandError as exc:
            self._record(target, "failed", f"its missing outputs could not be built: {exc}")
            return
        self._builds[self._drv(target)] = _Build(self._drv(target), started, finished=time.monotonic())
        self._record(target, "built")

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        # A reader thread keeps Nix from blocking on a full pipe while the consumer is busy.
        for raw in iter(self.process.stderr.readline, b""):
            self._queue.put((time.monotonic(), raw))
        self._queue.put(None)

    def _drain_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for _ in iter(lambda: self.process.stdout.read(65536), b""):  # type: ignore[union-attr]
            pass

    def terminate(self) -> None:
        """Stop Nix: SIGTERM to its process group, wait, then SIGKILL. Nix stops its builders itself."""
        if self.process is not None and self.process.poll() is None:
            self._log(f"Stopping nix (pid {self.process.pid})")
            self.returncode = processes.stop_group(self.process)

    def _events(self, idle: float | None = None) -> Iterator[NixLogEvent | None]:
        """Parsed stderr events, plus ``None`` after each ``idle`` seconds without a line from Nix."""
        while True:  # (outcomes() stops Nix if this is interrupted)
            try:
                item = self._queue.get(timeout=idle)
            except queue.Empty:
                yield None
                continue
            if item is None:
                break
            self._line_time, raw = item
            event = parse_line(raw)
            self._log_event(event)
            yield event
        assert self.process is not None
        self.returncode = self.process.wait()
        for thread in self._threads:
            thread.join()

    def _log_event(self, event: NixLogEvent) -> None:
        if isinstance(event, BuildLogLine):
            build = self._builds.get(self._activities.get(event.id, ""))
            target = self._by_drv.get(build.drv_path) if build else None
            name = (target.installable if target else Path(build.drv_path).name) if build else "nix"
            # Build output goes to the compute log (stdout), not the event log: it can be long.
            print(f"[{name}] {event.line}", flush=True)
        elif isinstance(event, NixMessage) and (event.is_error or event.level <= 3):
            print(event.msg, file=sys.stderr if event.is_error else sys.stdout, flush=True)
        elif isinstance(event, PlainLine) and event.text.strip():
            print(event.text, file=sys.stderr, flush=True)

    def outcomes(self) -> Iterator[Outcome]:
        """Per-target outcomes: already-valid targets first, then each as its build finishes, then (after
        Nix exits) everything else. Does not raise for failures."""
        if not self._started:
            self.start()
        try:
            yield from list(self._outcomes.values())
            if self.process is None:
                return
            for event in self._events(idle=PROBE_INTERVAL_S):
                yield from self.handle(event)
            yield from self.finish()
        finally:
            self.terminate()  # closed or interrupted at any yield: never leave Nix behind

    def handle(self, event: NixLogEvent | None) -> Iterator[Outcome]:
        """Feed one event (None: a quiet while); yields the outcomes it settles. Public for replays."""
        probe = False
        # Ticks that may mean another process finished a target we wait for: progress of the builds
        # activity, the end of a wait for a lock, or a quiet while. Probed at most every PROBE_INTERVAL_S.
        tick = (
            event is None
            or (isinstance(event, ActivityProgress) and event.id == self._builds_activity)
            or (isinstance(event, ActivityStopped) and event.id in self._waits)
        )
        if isinstance(event, ActivityStarted):
            if event.type == ActivityType.BUILDS:
                self._builds_activity = event.id
            elif event.type == ActivityType.BUILD_WAITING:
                self._waits.add(event.id)
            elif event.drv_path:
                self._activities[event.id] = event.drv_path
                self._builds[event.drv_path] = _Build(event.drv_path, self._line_time)
                target = self._by_drv.get(event.drv_path)
                if target is not None:
                    self._building.add(target)
                    self._log(f"Building {target.installable}: {event.drv_path}")
        elif isinstance(event, BuildLogLine):
            build = self._builds.get(self._activities.get(event.id, ""))
            if build is not None:
                build.log.append(event.line)
        elif isinstance(event, NixMessage) and event.is_error:
            self.errors.append(event.msg)
        elif isinstance(event, ActivityProgress) and event.id == self._builds_activity:
            # Nix 2.8 stops build activities only at the very end; a rising "done" count is the first
            # structured sign that some build finished: look which outputs became valid, if one of the
            # finished builds can be ours (most of a cold run is dependencies: no Nix call for them).
            probe = event.done > self._done_count and self._target_building()
            self._done_count = event.done
        elif isinstance(event, ActivityStopped) and event.id in self._activities:
            probe = self._activities[event.id] in self._by_drv
        if not self.rebuild and (probe or (tick and time.monotonic() - self._last_probe >= PROBE_INTERVAL_S)):
            yield from self._probe(building_too=probe)
        if self._deferred and self._queue.empty():
            yield from self._settle_deferred()

    def _target_building(self) -> bool:
        """Whether Nix started building a target that is not settled yet."""
        return bool(self._building)

    def _probe(self, *, building_too: bool = True) -> Iterator[Outcome]:
        """Report every pending target whose outputs are valid now (one Nix call), also those this
        process did not build: another process may have built them meanwhile. ``building_too=False`` (a
        tick): leave out the targets this nix is building, whose end the log shows (and probes). Between
        ticks, a finished build's probe looks at what this nix builds alone (all targets was O(n²))."""
        if building_too and time.monotonic() - self._last_probe < PROBE_INTERVAL_S:
            candidates = [t for t in self._building if t not in self._deferred]
        else:
            self._last_probe = time.monotonic()
            candidates = [t for t in self.targets if t not in self._outcomes and t not in self._deferred
                          and (building_too or self._drv(t) not in self._builds)]  # fmt: skip
        # Nix is asked only about outputs that may be valid by the file system's account (on disk, canonical):
        # each query is a process that takes CPU from the builds, and most probes of a cold run find nothing.
        not_yet = self.cli.surely_invalid_paths([p for t in candidates for p in self._paths(t)])
        pending = [t for t in candidates if not not_yet.intersection(self._paths(t))]
        if not pending:
            return
        valid = self._valid(pending)
        # Nix logs a build's start before its outputs become valid, and the reader thread has queued that
        # line by the time our query returns. So, with nothing queued, a valid target not seen building
        # was not built by this nix; with lines still queued, it may have been: decided (without asking
        # Nix again, valid stays valid) once the lines queued now are read.
        caught_up = self._queue.empty()
        for target in pending:
            if target in valid and (caught_up or self._drv(target) in self._builds):
                yield self._settle(target)
            elif target in valid:
                self._deferred.add(target)

    def _settle(self, target: Target) -> Outcome:
        """The outcome of a valid target: built by this nix if Nix said it started building it."""
        build = self._builds.get(self._drv(target))
        if build is not None and build.finished is None:
            build.finished = time.monotonic()
        return self._record(target, "built" if build is not None else "valid")

    def _settle_deferred(self) -> Iterator[Outcome]:
        for target in [t for t in self.targets if t in self._deferred]:
            yield self._settle(target)
        self._deferred.clear()

    def _valid(self, targets: Sequence[Target]) -> set[Target]:
        invalid = self.cli.invalid_paths([p for t in targets for p in self._paths(t)])
        return {t for t in targets if not invalid.intersection(self._paths(t))}

    def _record(self, t: Target, status: Status, reason: Note = None, tail: Tail = (), note: Note = None) -> Outcome:
        """The outcome of ``t``, kept: timed from when Nix said it started building it (if it did)."""
        build = self._builds.get(self._drv(t))
        seconds = round(((build.finished or time.monotonic()) - build.started) if build else 0.0, 3)
        pkg, now = self.graph[t.attr], build is not None
        self._building.discard(t)
        self._outcomes[t] = (
            PackageOutcome(t.attr, pkg, status, now, seconds, reason, tuple(tail))
            if t.test is None
            else TestOutcome(t.attr, pkg.tests[t.test], status, now, seconds, reason, tuple(tail), note)
        )
        return self._outcomes[t]

    def finish(self) -> Iterator[Outcome]:
        """After Nix exited (``returncode`` set): the outcome of every target not settled yet. Public for
        replays (after the last :meth:`handle`)."""
        yield from self._settle_deferred()
        rest = [t for t in self.targets if t not in self._outcomes]
        if not rest:
            return
        if self.rebuild:
            # The outputs stay valid whatever the rebuild found: Nix's error messages name what failed. An
            # output that differs from the valid one is no failure of the test (its builder passed again):
            # the test is not deterministic, which its outcome says (``note``).
            differs = {d[0]: m for m in self.errors if NONDETERMINISTIC in m and (d := DRV_IN_TEXT.findall(m))}
            named = {drv for m in self.errors if NONDETERMINISTIC not in m for drv in DRV_IN_TEXT.findall(m)}
            for target in rest:
                drv = self._drv(target)
                if drv in named:
                    yield self._record(target, "failed", *self._failure_of(drv))
                elif drv in differs:
                    yield self._record(target, "built", note=f"rebuilt: the builder passed again, but {differs[drv]}")
                elif self.returncode == 0 or drv in self._builds:
                    yield self._record(target, "built")
                else:
                    said = " | ".join(self.errors[-3:]) or "nothing"
                    yield self._record(target, "failed", f"not rebuilt; Nix said: {said}")
            return
        valid = self._valid(rest)
        for target in rest:
            if target in valid:
                yield self._record(target, "built" if self._drv(target) in self._builds else "valid")
        failed_drvs = self._failed_drvs()
        for target in rest:
            if target not in valid:
                yield self._record(target, "failed", *self._why_failed(target, failed_drvs))

    def _failed_drvs(self) -> set[str]:
        """Derivations whose build started in this run but whose outputs are not valid (one Nix call, and
        one more per derivation the package graph does not know)."""
        known = {p.drv_path: list(p.outputs.values()) for p in self.graph.packages.values() if p.drv_path}
        known.update({t.drv_path: [t.out_path] for p in self.graph.packages.values() for t in p.tests.values()})
        outputs = {drv: known[drv] if drv in known else self.cli.outputs_of(drv) for drv in self._builds}
        invalid = self.cli.invalid_paths([path for paths in outputs.values() for path in paths])
        return {drv for drv, paths in outputs.items() if invalid.intersection(paths)}

    def _failure_of(self, drv: str) -> tuple[str, list[str]]:
        build = self._builds.get(drv)
        messages = [m for m in self.errors if drv in m]
        reason = f"build of {drv} failed" + (f": {messages[-1]}" if messages else "")
        return reason, list(build.log) if build else []

    def _why_failed(self, target: Target, failed_drvs: set[str]) -> tuple[str, list[str]]:
        drv = self._drv(target)
        if drv in failed_drvs:
            return self._failure_of(drv)
        culprits = sorted(failed_drvs & self.cli.requisites(drv)) if drv else []
        if culprits:
            attrs = self.graph.by_drv_path()  # a culprit not selected is named by its attribute too
            names = [self._by_drv[d].installable if d in self._by_drv else attrs.get(d, d) for d in culprits]
            tail = [
                line
                for culprit, name in zip(culprits, names, strict=True)
                for line in (f"--- log tail of {name} ({culprit}) ---", *self._builds[culprit].log)
            ]
            return f"dependency failed: {', '.join(names)}", tail
        if self.returncode is not None and self.returncode < 0:
            return f"nix was stopped (signal {-self.returncode}) before {target.installable} was built", []
        return f"not built; Nix said: {' | '.join(self.errors[-3:]) or 'nothing'}", []

    def wait(self) -> list[Outcome]:
        """Consume the build to the end; return all outcomes (no exception for failures)."""
        return list(self.outcomes())

    def raise_for_failures(self, failures: dict[str, str] | None = None) -> None:
        """Raise :class:`NixBuildError` if targets failed, :class:`NixCommandError` if Nix failed."""
        failures = (
            failures
            if failures is not None
            else {t.installable: o.reason or "failed" for t, o in self._outcomes.items() if not o.ok}
        )
        if failures:
            raise NixBuildError(self.command, self.returncode, self.errors, failures)
        if self.returncode not in (0, None):
            raise NixCommandError(self.command, self.returncode, self.errors)


__all__ = ["LOG_TAIL_LINES", "NixBuild"]
