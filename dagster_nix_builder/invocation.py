"""One running ``nix build`` and its event stream.

The invocation asks Nix for the derivations first (so it knows every package's drv and output paths),
starts a single ``nix build --keep-going --json`` for the selected attributes, reads the
``internal-json`` log on stderr line by line and turns it into per-package outcomes, then into Dagster
results in dependency order.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import processes
from .errors import NixBuildError, NixCommandError, NixPackageSetError
from .graph import NixPackage, NixPackageGraph, store_hash
from .log_format import (
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

if TYPE_CHECKING:
    from dagster import AssetExecutionContext, AssetKey, MaterializeResult

    from .resource import NixResource

ATTR_KEY = "dagster-nix/attr"
LOG_TAIL_LINES = 25
TERMINATE_TIMEOUT_S = 10.0
# At most this often (and after this long without a word from Nix) ask whether pending packages became
# valid by other means than a build of ours, e.g. another process built them.
PROBE_INTERVAL_S = 1.0

Status = Literal["built", "valid", "failed"]


@dataclass(frozen=True)
class PackageOutcome:
    """What happened to one selected package in this build."""

    attr: str
    package: NixPackage
    status: Status
    built_now: bool = False
    build_seconds: float = 0.0
    reason: str | None = None
    log_tail: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the package's outputs are valid now."""
        return self.status != "failed"


@dataclass
class _Build:
    drv_path: str
    attr: str | None
    started: float
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    finished: float | None = None


class NixBuildInvocation:
    """A running ``nix build`` of some packages of a package set.

    Create it with :meth:`NixResource.build`; consume it with :meth:`stream` (Dagster results) or
    :meth:`outcomes` (plain per-package outcomes, in completion order).
    """

    def __init__(
        self,
        nix: NixResource,
        graph: NixPackageGraph,
        attrs: Sequence[str],
        *,
        context: AssetExecutionContext | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.nix = nix
        self.graph = graph
        self.attrs = graph.topological_order(attrs)
        self.context = context
        self.command = nix.build_command(self.attrs)
        self._log = log or (context.log.info if context is not None else _print)
        self._drv_to_attr = graph.by_drv_path()
        self._builds: dict[str, _Build] = {}
        self._activities: dict[int, str] = {}  # activity id -> drv path of build activities
        self._waits: set[int] = set()  # activities waiting for a lock (another process builds)
        self._builds_activity: int | None = None
        self._progress = (0, 0)  # (done, failed) of the builds activity
        self._outcomes: dict[str, PackageOutcome] = {}
        self.errors: list[str] = []
        self.stdout = ""
        self.returncode: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        # Lines of stderr with the time they were read: a build's start is timed when Nix said it, not
        # when the main thread (busy with a check or a probe) got to it.
        self._queue: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        self._line_time = 0.0
        self._threads: list[threading.Thread] = []
        self._stdout_chunks: list[bytes] = []
        self._path_info: dict[str, dict[str, Any]] = {}
        self._last_probe = 0.0
        self._path_info_asked: set[str] = set()

    # ---- starting --------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        nix: NixResource,
        attrs: Sequence[str] | None = None,
        *,
        context: AssetExecutionContext | None = None,
        graph: NixPackageGraph | None = None,
    ) -> NixBuildInvocation:
        """Evaluate the package set, then start ``nix build`` for ``attrs`` (or the context's selection)."""
        attrs = requested_attrs(attrs, context, "NixResource")
        nix.nix_version()  # a Nix too old fails here, naming its version and the fix
        # Evaluate now, not at definitions load: the expressions may have changed since.
        graph = graph or nix.load_graph()
        unknown = [a for a in attrs if a not in graph]
        if unknown:
            raise NixPackageSetError(
                f"Unknown Nix package(s) {', '.join(map(repr, unknown))} in {graph.nix_dir}; "
                f"known: {', '.join(sorted(graph))}"
            )
        invocation = cls(nix, graph, attrs, context=context)
        invocation._spawn()
        return invocation

    def _spawn(self) -> None:
        self._log(f"Running: {self.nix.describe(self.command)}")
        already = self._valid_attrs(self.attrs)
        self.nix.log_command(self.command)
        for attr in self.attrs:
            if attr in already:
                self._outcomes[attr] = PackageOutcome(attr, self.graph[attr], "valid")
        self.process = processes.popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.nix.subprocess_env(),
            start_new_session=True,  # own process group, so a cancel reaches all of Nix
        )  # SIGTERM to nix if we die (processes.py): Nix then stops its builders itself
        stderr_reader = threading.Thread(target=self._read_stderr, name="nix-stderr", daemon=True)
        stdout_reader = threading.Thread(target=self._read_stdout, name="nix-stdout", daemon=True)
        self._threads = [stderr_reader, stdout_reader]
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        # A reader thread keeps Nix from blocking on a full pipe while checks run in the main thread.
        for raw in iter(self.process.stderr.readline, b""):
            self._queue.put((time.monotonic(), raw))
        self._queue.put(None)

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for chunk in iter(lambda: self.process.stdout.read(65536), b""):  # type: ignore[union-attr]
            self._stdout_chunks.append(chunk)

    # ---- stopping --------------------------------------------------------------------------------

    def terminate(self) -> None:
        """Stop Nix: SIGTERM to its process group, wait, then SIGKILL. Nix stops its builders itself."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        self._log(f"Stopping nix (pid {proc.pid})")
        self.returncode = processes.stop_group(proc, TERMINATE_TIMEOUT_S)

    def is_running(self) -> bool:
        """Whether the nix process is still running."""
        return self.process is not None and self.process.poll() is None

    # ---- events ----------------------------------------------------------------------------------

    def events(self) -> Iterator[NixLogEvent]:
        """Parsed stderr events, as Nix writes them; also logs build output and Nix messages."""
        return (event for event in self._events() if event is not None)

    def _events(self, idle: float | None = None) -> Iterator[NixLogEvent | None]:
        """Like :meth:`events`, plus ``None`` after each ``idle`` seconds without a line from Nix."""
        try:
            while True:
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
            self.stdout = b"".join(self._stdout_chunks).decode("utf-8", errors="replace")
        finally:
            # Interrupted (run cancelled, generator closed, exception): never leave Nix behind.
            self.terminate()

    def _log_event(self, event: NixLogEvent) -> None:
        if isinstance(event, BuildLogLine):
            build = self._builds.get(self._activities.get(event.id, ""))
            name = (build.attr or Path(build.drv_path).name) if build else "nix"
            # Build output goes to the compute log (stdout), not the event log: it can be long.
            print(f"[{name}] {event.line}", flush=True)
        elif isinstance(event, NixMessage):
            if event.is_error:
                self.errors.append(event.msg)
                print(event.msg, file=sys.stderr, flush=True)
            elif event.level <= 3:
                print(event.msg, flush=True)
        elif isinstance(event, PlainLine) and event.text.strip():
            print(event.text, file=sys.stderr, flush=True)

    def outcomes(self) -> Iterator[PackageOutcome]:
        """Per-package outcomes: already-valid packages first, then each package as its build finishes,
        then (after Nix exits) everything else. Does not raise for failed packages."""
        yield from (o for o in self._outcomes.values())
        for event in self._events(idle=PROBE_INTERVAL_S):
            yield from self._handle(event)
        yield from self._finish()

    def _handle(self, event: NixLogEvent | None) -> Iterator[PackageOutcome]:
        probe = False
        # Ticks that may mean another process finished a package we wait for: progress of the builds
        # activity (Nix lowers "expected" when a goal finds its outputs already valid), the end of a wait
        # for a lock, or a quiet while. Probed at most every PROBE_INTERVAL_S.
        tick = event is None or (
            isinstance(event, ActivityProgress) and event.id == self._builds_activity
        ) or (
            isinstance(event, ActivityStopped) and event.id in self._waits
        )
        if isinstance(event, ActivityStarted):
            if event.type == ActivityType.BUILDS:
                self._builds_activity = event.id
            elif event.type == ActivityType.BUILD_WAITING:
                self._waits.add(event.id)
            elif event.drv_path:
                attr = self._drv_to_attr.get(event.drv_path)
                self._activities[event.id] = event.drv_path
                self._builds[event.drv_path] = _Build(event.drv_path, attr, self._line_time)
                if attr in self.attrs:
                    self._log(f"Building {attr}: {event.drv_path}")
        elif isinstance(event, BuildLogLine):
            build = self._builds.get(self._activities.get(event.id, ""))
            if build is not None:
                build.log.append(event.line)
        elif isinstance(event, ActivityProgress) and event.id == self._builds_activity:
            # Nix 2.8 stops build activities only at the very end; a rising "done" count is the first
            # structured sign that some build finished, so then look which outputs became valid.
            probe = event.done > self._progress[0]
            self._progress = (event.done, event.failed)
        elif isinstance(event, ActivityStopped) and event.id in self._activities:
            probe = True
        if probe or (tick and time.monotonic() - self._last_probe >= PROBE_INTERVAL_S):
            yield from self._probe()

    def _probe(self) -> Iterator[PackageOutcome]:
        """Report every selected package still pending whose outputs are valid now (one Nix call), also
        those this process did not build: another process may have built them meanwhile."""
        pending = [a for a in self.attrs if a not in self._outcomes]
        self._last_probe = time.monotonic()
        if not pending:
            return
        valid = self._valid_attrs(pending)
        # Nix logs a build's start before its outputs become valid, and the reader thread has queued that
        # line by the time our query returns. So, with nothing queued, a valid package not seen building
        # was not built by this nix; with lines still queued, it may have been: decide at the next probe.
        caught_up = self._queue.empty()
        now = time.monotonic()
        for attr in pending:
            if attr not in valid:
                continue
            build = self._builds.get(self.graph[attr].drv_path or "")
            if build is None and not caught_up:
                self._last_probe = 0.0
                continue
            if build is not None:
                build.finished = now
            yield self._record(attr, "built" if build is not None else "valid")

    def _record(self, attr: str, status: Status, reason: str | None = None, tail: Sequence[str] = ()) -> PackageOutcome:
        build = self._builds.get(self.graph[attr].drv_path or "")
        seconds = 0.0
        if build is not None:
            seconds = (build.finished or time.monotonic()) - build.started
        outcome = PackageOutcome(
            attr,
            self.graph[attr],
            status,
            built_now=build is not None,
            build_seconds=round(seconds, 3),
            reason=reason,
            log_tail=tuple(tail),
        )
        self._outcomes[attr] = outcome
        return outcome

    def _valid_attrs(self, attrs: Sequence[str]) -> set[str]:
        paths = [p for a in attrs for p in self.graph[a].outputs.values()]
        invalid = self.nix.invalid_paths(paths)
        return {a for a in attrs if not invalid.intersection(self.graph[a].outputs.values())}

    def _finish(self) -> Iterator[PackageOutcome]:
        rest = [a for a in self.attrs if a not in self._outcomes]
        if not rest:
            return
        valid = self._valid_attrs(rest)
        for attr in rest:
            if attr in valid:
                yield self._record(attr, "built" if self.graph[attr].drv_path in self._builds else "valid")
        failed_drvs = self._failed_drvs()
        for attr in rest:
            if attr not in valid:
                yield self._record(attr, "failed", *self._why_failed(attr, failed_drvs))

    def _failed_drvs(self) -> set[str]:
        """Derivations whose build started in this run but whose outputs are not valid."""
        failed = set()
        for drv in self._builds:
            attr = self._drv_to_attr.get(drv)
            if attr is not None:
                outputs = list(self.graph[attr].outputs.values())
            else:
                outputs = self.nix.run(self.nix.store_command("--query", "--outputs", drv)).stdout.split()
            if self.nix.invalid_paths(outputs):
                failed.add(drv)
        return failed

    def _why_failed(self, attr: str, failed_drvs: set[str]) -> tuple[str, list[str]]:
        drv = self.graph[attr].drv_path or ""
        if drv in failed_drvs:
            tail = list(self._builds[drv].log)
            return f"build of {drv} failed", tail
        requisites: set[str] = set()
        if drv:
            proc = self.nix.run(self.nix.store_command("--query", "--requisites", drv), check=False)
            requisites = set(proc.stdout.split())
        culprits = sorted(failed_drvs & requisites)
        if culprits:
            names = [self._drv_to_attr.get(d) or d for d in culprits]
            tail: list[str] = []
            for culprit, name in zip(culprits, names, strict=True):
                tail += [f"--- log tail of {name} ({culprit}) ---", *self._builds[culprit].log]
            return f"dependency failed: {', '.join(names)}", tail
        if self.returncode is not None and self.returncode < 0:
            return f"nix was stopped (signal {-self.returncode}) before {attr} was built", []
        return "not built; Nix said: " + (" | ".join(self.errors[-3:]) or "nothing"), []

    def raise_for_failures(self, failures: dict[str, str] | None = None) -> None:
        """Raise :class:`NixBuildError` if packages failed, :class:`NixCommandError` if Nix failed."""
        failures = failures if failures is not None else {
            a: o.reason or "failed" for a, o in self._outcomes.items() if not o.ok
        }
        if failures:
            raise NixBuildError(self.command, self.returncode, self.errors, failures)
        if self.returncode not in (0, None):
            raise NixCommandError(self.command, self.returncode, self.errors)

    def wait(self) -> list[PackageOutcome]:
        """Consume the build to the end; return all outcomes (no exception for failures)."""
        return list(self.outcomes())

    # ---- Dagster ---------------------------------------------------------------------------------

    def stream(self) -> Iterator[MaterializeResult]:
        """Dagster results, each as soon as its package is built and its dependencies were reported.

        Runs the selected asset checks on each package; a failing ``imports`` check keeps the packages
        downstream of it in this run from being reported. Raises at the end if anything failed.
        """
        from .checks import run_checks

        keys = dict(selected_attrs(self.context)) if self.context is not None else {}
        selected = set(self.attrs)
        done: dict[str, PackageOutcome] = {}
        reported: set[str] = set()
        failures: dict[str, str] = {}

        upstream = {a: self.graph.upstream(a) & selected for a in self.attrs}

        def selected_upstream(attr: str) -> set[str]:
            return upstream[attr]

        def flush() -> Iterator[MaterializeResult]:
            progress = True
            while progress:
                progress = False
                for attr in [a for a in self.attrs if a in done and a not in reported and a not in failures]:
                    ups = selected_upstream(attr)
                    broken = sorted(u for u in ups if u in failures)
                    if broken:
                        failures[attr] = f"not reported: dependency {', '.join(broken)} failed ({failures[broken[0]]})"
                        progress = True
                        continue
                    if not ups <= reported:
                        continue
                    outcome = done[attr]
                    key = keys.get(attr)
                    check_results = run_checks(self.nix, self.graph, outcome, key, self.context)
                    yield materialize_result(
                        self.nix, self.graph, outcome, key, check_results, path_info=self.path_info(attr)
                    )
                    reported.add(attr)
                    for result in check_results:
                        if result.check_name == "imports" and not result.passed:
                            failures.setdefault(
                                f"{attr} (imports check)",
                                str(result.description or "imports check failed"),
                            )
                            for down in (a for a in self.attrs if attr in upstream[a]):
                                failures.setdefault(
                                    down, f"not materialized: the imports check of {attr} failed"
                                )
                    progress = True

        try:
            yield from self._stream_outcomes(done, failures, flush)
        finally:
            self.terminate()  # also when a check or Dagster itself is interrupted mid-stream
        yield from flush()
        self.raise_for_failures(failures)

    def _stream_outcomes(
        self,
        done: dict[str, PackageOutcome],
        failures: dict[str, str],
        flush: Callable[[], Iterator[MaterializeResult]],
    ) -> Iterator[MaterializeResult]:
        for outcome in self.outcomes():
            if outcome.ok:
                done[outcome.attr] = outcome
                self._link(outcome)
            else:
                failures[outcome.attr] = outcome.reason or "failed"
                if outcome.log_tail:
                    failures[outcome.attr] += "\n    " + "\n    ".join(outcome.log_tail)
                self._log(f"{outcome.attr} failed: {failures[outcome.attr]}")
            yield from flush()

    def path_info(self, attr: str) -> dict[str, dict[str, Any]]:
        """``nix path-info`` of ``attr``'s outputs. Asked for every package known to be valid by then in
        one call, so a run of already-built packages asks once, not once per package."""
        wanted = set(self.graph[attr].outputs.values())
        if not wanted <= self._path_info_asked:
            valid = [o.attr for o in self._outcomes.values() if o.ok]
            paths = {p for a in [attr, *valid] for p in self.graph[a].outputs.values()} - self._path_info_asked
            self._path_info.update(self.nix.path_info(sorted(paths)))
            self._path_info_asked |= paths
        return {p: self._path_info[p] for p in wanted if p in self._path_info}

    def _link(self, outcome: PackageOutcome) -> None:
        out_dir = Path(str(self.nix.resolved("out_link_dir"))).resolve()
        for output, path in outcome.package.outputs.items():
            suffix = "" if output == "out" else f"-{output}"
            self.nix.add_root(out_dir / f"result-{outcome.attr}{suffix}", path)


def read_source(nix_dir: str) -> dict[str, Any] | None:
    """The source pin of the package set (``<nix_dir>/pins.json``), if present."""
    pins = Path(nix_dir) / "pins.json"
    if not pins.is_file():
        return None
    try:
        data = json.loads(pins.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def describe_source(pins: dict[str, Any] | None) -> str:
    """One line saying what the packages are built from."""
    if not pins:
        return "unknown (no pins.json)"
    kind = pins.get("source")
    if kind == "git":
        git = pins.get("git") or {}
        return f"git {git.get('url')} rev {git.get('rev')} hash {git.get('hash')}"
    if kind == "release":
        return f"release {(pins.get('release') or {}).get('version')}"
    return f"{kind}"


def materialize_result(
    nix: NixResource,
    graph: NixPackageGraph,
    outcome: PackageOutcome,
    asset_key: AssetKey | None,
    check_results: Sequence[Any] = (),
    path_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> MaterializeResult:
    """The materialization of one package: paths, versions, timings and sizes.

    ``path_info`` (``nix path-info --json -S`` by path) is asked of Nix when not given.
    """
    from dagster import DataVersion, MaterializeResult, MetadataValue

    from .checks import wheel_path

    package = outcome.package
    info = path_info if path_info is not None else nix.path_info(list(package.outputs.values()))
    out = package.out_path or ""
    pins = read_source(graph.nix_dir)
    metadata: dict[str, Any] = {
        "out_path": MetadataValue.path(out),
        "store_paths": MetadataValue.json(dict(package.outputs)),
        "drv_path": MetadataValue.path(package.drv_path or ""),
        "built_now": MetadataValue.bool(outcome.built_now),
        "build_seconds": MetadataValue.float(float(outcome.build_seconds)),
        "nar_size": MetadataValue.int(int(info.get(out, {}).get("narSize", 0))),
        "closure_size": MetadataValue.int(int(info.get(out, {}).get("closureSize", 0))),
        "nix_version": MetadataValue.text(nix.nix_version().text),
        "scope": MetadataValue.text(str(nix.resolved("scope") or "")),
        "source": MetadataValue.text(describe_source(pins)),
    }
    if pins:
        metadata["source_pin"] = MetadataValue.json(pins)
    if package.version:
        metadata["version"] = MetadataValue.text(package.version)
    for output, path in package.outputs.items():
        if output != "out" and path in info:
            metadata[f"{output}_nar_size"] = MetadataValue.int(int(info[path].get("narSize", 0)))
    wheel = wheel_path(package)
    if wheel:
        metadata["wheel"] = MetadataValue.path(wheel)
    return MaterializeResult(
        asset_key=asset_key,
        metadata=metadata,
        data_version=DataVersion(store_hash(out)) if out else None,
        check_results=list(check_results),
    )


def requested_attrs(
    attrs: Sequence[str] | None, context: AssetExecutionContext | None, backend: str
) -> list[str]:
    """``attrs`` if given, else the attributes of the assets selected in ``context``."""
    if attrs is not None:
        return list(attrs)
    if context is None:
        raise ValueError(f"{backend}.build needs attrs or a context to read the selection from")
    return [attr for attr, _ in selected_attrs(context)]


def selected_attrs(context: AssetExecutionContext) -> list[tuple[str, AssetKey]]:
    """(attribute, asset key) of each asset selected in ``context``, read from the spec metadata."""
    specs = context.assets_def.specs_by_key
    out = []
    for key in context.selected_asset_keys:
        attr = specs[key].metadata.get(ATTR_KEY)
        out.append((str(attr if attr is not None else key.to_user_string()), key))
    return out


def _print(message: str) -> None:
    print(message, flush=True)


__all__ = ["NixBuildInvocation", "PackageOutcome", "selected_attrs", "store_hash"]
