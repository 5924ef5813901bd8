"""What Dagster costs on top of Nix, in one run: cold build with all checks, no-op re-run, definitions load.

    .venv/bin/python bench/dagster_overhead.py [--cold-runs 2] [--noop-runs 3] [--packages 2500]

Baseline: bare ``nix build -f nix <every package> <each>.tests.<name>`` (``bench/package_set.py``), with the same
``--max-jobs`` as the code location's default (the cores): the same packages and the same test derivations
(``passthru.tests``) a Dagster run of everything builds, in one ``nix build`` too.

Every Dagster run is the CLI a user types, in a subprocess, with a temporary ``DAGSTER_HOME``; its time is
wall-clock from spawn to exit (interpreter start, definitions load, the run, the exit). Kinds of run:

* ``full``: ``dagster asset materialize -m bench_full_defs --select '*'`` (the checks of selected assets are
  included): the bench's own module, ``nix_assets`` of the whole set with their checks and
  ``NixResource(nix_dir=<repo>/nix, out_link_dir=<temp>)``, in-process executor, as the code location;
  it evaluates the package set when it loads (no state kept);
* ``dg``: ``dg launch --assets '*'`` in the checkout: the code location as shipped (the dg project, its
  ``NixPackageSetComponent`` with the evaluated graph kept as state, out-links in ``.nix-results``);
* ``shipped``: ``dagster asset materialize -m dagster_nix_builder.definitions --select '*'`` (the same
  code location through the plain CLI; no-op only);
* ``shape``: the same assets and checks in one multi-asset that yields their results and runs nothing
  (no-op only): what Dagster itself costs to report them, so ``full - shape`` is the code location's own;
* ``trivial``: one asset that does nothing: the floor of any Dagster run.

Cold means every output in the closure of the packages *and* their test derivations is deleted first (fetched
sources included; with --keep-fetched the fetches' outputs stay, so a cold run is the build work alone:
the downloads' time varies the most between runs), with ``bench/package_set.py``'s helper. It deletes
store paths: it waits up to --quiet-wait seconds for other nix processes to finish (and records if it
gave up), never deletes a path a running process uses (it waits for it instead), and flags every timed
run that shared the machine with another nix process or builder.

Where a Dagster run's time goes: its event log (in the temporary DAGSTER_HOME) gives the run's phases
(process start to RUN_START: CLI and definitions load; STEP_START to "Running: nix build": the evaluation
again and the validity query; from there to the last result: the build as Dagster sees it; and the tail),
and the bench's modules time every Nix command the step runs (``NixCli.run``: validity probes, path-info,
add-root, evaluation) and the Dagster process's own CPU time.

Load time: a fresh interpreter imports the bench's module (after ``import dagster``, timed apart) and
resolves the repository, for the real set and for a generated package set of --packages packages (same
contract as ``nix/``: ``default.nix`` discovers ``packages/*.nix``, each in callPackage convention, random
dependencies on earlier packages, ``builtins.derivation``); also the shipped code location
(``dagster_nix_builder.definitions``: its state is fresh, so no Nix runs). Loading only evaluates; nothing of
the generated set is built.

Prints JSON and writes it to ``bench/results/dagster_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import package_set as ps  # the bare-Nix helpers: installables, drv_paths, delete_everything_built, timed_build

REPO = ps.REPO
VENV_BIN = Path(sys.executable).parent
RESULTS = BENCH / "results" / "dagster_overhead.json"
AIMS = {"overhead_ratio_cold_max": 1.10, "noop_minus_trivial_max_s": 0.3, "load_generated_max_s": 5.0}

FULL_MODULE = '''
"""The package set with all its checks, configured directly (no environment, no state)."""
import atexit, json, os, resource, time

from dagster import Definitions, in_process_executor

from dagster_nix_builder import NixCli, NixResource, nix_assets

TRACE = os.environ.get("BENCH_TRACE")
if TRACE:  # every Nix command of this process, timed (kind, seconds), and the process's own CPU at exit
    _run = NixCli.run

    def _timed_run(self, command, **kwargs):
        start = time.time()
        try:
            return _run(self, command, **kwargs)
        finally:
            noise = ("--log-format", "internal-json", "-v")
            words = [w for w in command[1:] if not w.startswith("/") and w not in noise]
            with open(TRACE, "a") as out:
                out.write(json.dumps({"kind": " ".join([os.path.basename(command[0]), *words[:2]]),
                                      "start": start, "seconds": time.time() - start}) + "\\n")

    NixCli.run = _timed_run
    import dagster_nix_builder.nix.graph as _graph

    _evaluate = _graph._evaluate

    def _timed_evaluate(*args, **kwargs):
        start = time.time()
        try:
            return _evaluate(*args, **kwargs)
        finally:
            with open(TRACE, "a") as out:
                out.write(json.dumps({"kind": "nix-instantiate --eval (package graph)", "start": start,
                                      "seconds": time.time() - start}) + "\\n")

    _graph._evaluate = _timed_evaluate

    @atexit.register
    def _cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(TRACE, "a") as out:
            out.write(json.dumps({"kind": "self_cpu", "seconds": usage.ru_utime + usage.ru_stime}) + "\\n")

nix = NixResource(nix_dir=os.environ["BENCH_NIX_DIR"], out_link_dir=os.environ["BENCH_OUT_LINK_DIR"])
defs = Definitions(assets=[nix_assets(nix.load_graph())], resources={"nix": nix},
                   executor=in_process_executor)  # as the shipped code location
'''

TRIVIAL_MODULE = '''
"""One asset that does nothing: the floor of a Dagster run."""
from dagster import Definitions, asset, in_process_executor


@asset
def noop() -> None:
    """Nothing."""


defs = Definitions(assets=[noop], executor=in_process_executor)  # same executor as the package set
'''

SHAPE_MODULE = '''
"""The package set's shape without Nix: the same assets (and deps) and checks, one multi-asset that yields a
result for each and does nothing else: Dagster's own cost of reporting their materializations and check results."""
import json, os

from dagster import (AssetCheckResult, AssetCheckSpec, AssetKey, AssetSpec, Definitions, MaterializeResult,
                     in_process_executor, multi_asset)

SHAPE = json.loads(open(os.environ["BENCH_SHAPE"]).read())  # [[attr, [deps], [checks]], ...] in build order


@multi_asset(
    name="nix_packages",
    specs=[AssetSpec(attr, deps=deps, group_name="nix") for attr, deps, _ in SHAPE],
    check_specs=[AssetCheckSpec(c, asset=attr) for attr, _, checks in SHAPE for c in checks],
    can_subset=True,
)
def shape(context):
    for attr, _, checks in SHAPE:
        yield MaterializeResult(asset_key=AssetKey(attr))
        for c in checks:
            yield AssetCheckResult(check_name=c, asset_key=AssetKey(attr), passed=True)


defs = Definitions(assets=[shape], executor=in_process_executor)
'''

LOAD_SCRIPT = '''
import importlib, json, sys, time
t0 = time.perf_counter()
import dagster
t1 = time.perf_counter()
d = importlib.import_module(sys.argv[1])
t2 = time.perf_counter()
repo = d.defs.get_repository_def()
assets = len(repo.asset_graph.get_all_asset_keys())
checks = len(repo.asset_graph.asset_check_keys)
t3 = time.perf_counter()
nix = getattr(d, "nix", None)
packages = len(nix.load_graph()) if nix is not None else None
t4 = time.perf_counter()
print(json.dumps({"import_dagster_s": t1 - t0, "import_definitions_s": t2 - t1, "resolve_s": t3 - t2,
                  "nix_eval_again_s": (t4 - t3) if nix is not None else None, "assets": assets,
                  "checks": checks, "packages": packages}))
'''

DEFAULT_NIX = r"""# Generated by bench/dagster_overhead.py: the same contract as the repo's nix/default.nix.
{ ... }:
let
  inherit (builtins) attrNames filter functionArgs head intersectAttrs listToAttrs match readDir;
  entries = readDir ./packages;
  names = map (file: head (match "(.*)\\.nix" file))
    (filter (file: entries.${file} == "regular" && match ".*\\.nix" file != null) (attrNames entries));
  callPackage = file: let fn = import file; in fn (intersectAttrs (functionArgs fn) packages);
  packages = listToAttrs (map (name: { inherit name; value = callPackage (./packages + "/${name}.nix"); }) names);
in
packages
"""


def generate_package_set(root: Path, count: int, seed: int = 2500, max_deps: int = 4) -> int:
    """Write a package set of ``count`` packages to ``root``; return the number of edges."""
    rng = random.Random(seed)
    (root / "packages").mkdir(parents=True, exist_ok=True)
    (root / "default.nix").write_text(DEFAULT_NIX)
    edges = 0
    for i in range(count):
        name = f"pkg-{i:05d}"
        deps = sorted(rng.sample(range(i), rng.randint(0, min(i, max_deps)))) if i else []
        dep_names = [f"pkg-{d:05d}" for d in deps]
        edges += len(deps)
        (root / "packages" / f"{name}.nix").write_text(
            f"{{ {', '.join(dep_names)} }}:\n"
            "builtins.derivation {\n"
            f'  name = "{name}";\n'
            "  system = builtins.currentSystem;\n"
            '  builder = "/bin/sh";\n'
            '  args = [ "-c" "echo $deps > $out" ];\n'
            f"  deps = [ {' '.join(dep_names)} ];\n"
            "}\n"
        )
    return edges


def _builder_uids() -> set[int]:
    return {user.pw_uid for user in pwd.getpwall() if user.pw_name.startswith("nixbld")}


def _status(pid: str) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def other_nix_processes() -> list[str]:
    """Command lines of nix processes and builders that are not descendants of this bench: their store
    paths are roots, so deleting them fails, and they compete with the runs we time."""
    builders = _builder_uids()
    statuses: dict[str, dict[str, str]] = {}
    argvs: dict[str, list[bytes]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # both or neither: a process may exit between the two reads
            status = _status(proc.name)
            argvs[proc.name] = (proc / "cmdline").read_bytes().split(b"\0")
            statuses[proc.name] = status
        except OSError:
            continue

    def mine(pid: str) -> bool:
        seen = 0
        while pid and pid != "0" and seen < 64:
            if pid == str(os.getpid()):
                return True
            pid = statuses.get(pid, {}).get("PPid", "")
            seen += 1
        return False

    found = []
    for pid, status in statuses.items():
        argv = argvs[pid]
        try:
            uid = int(status.get("Uid", "-1").split()[0])
        except ValueError:
            continue
        name = Path(argv[0].decode(errors="replace")).name if argv and argv[0] else ""
        if (uid in builders or name in {"nix", "nix-build", "nix-store", "nix-instantiate", "nix-daemon"}) and not mine(
            pid
        ):
            found.append(" ".join(a.decode(errors="replace") for a in argv if a)[:160])
    return found


class ContentionWatch:
    """Samples other nix processes while a timed run goes on: a run that shared the machine with another
    build is flagged, since two cores make such runs slower (or faster, when the other build makes paths
    valid first)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.seen: set[str] = set()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.seen.update(other_nix_processes())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_quiet(max_wait: float) -> bool:
    """Wait until no other nix process runs; False if we gave up after ``max_wait`` seconds."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        busy = other_nix_processes()
        if not busy:
            return True
        if time.monotonic() > deadline:
            print(f"bench: other nix processes still running, measuring anyway: {busy}", file=sys.stderr)
            return False
        if not warned:
            print(f"bench: waiting for other nix processes to finish: {busy}", file=sys.stderr)
            warned = True
        time.sleep(2)


class RunFailedError(Exception):
    """A Dagster run failed (a cold one may, e.g. a download); the cold loop tries it once more."""


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.home = work / "dagster_home"
        self.home.mkdir()
        self.modules = work / "modules"
        self.modules.mkdir()
        (self.modules / "bench_full_defs.py").write_text(FULL_MODULE)
        (self.modules / "bench_trivial_defs.py").write_text(TRIVIAL_MODULE)
        (self.modules / "bench_shape_defs.py").write_text(SHAPE_MODULE)
        self.env = {
            **ps.ENV,
            "DAGSTER_HOME": str(self.home),
            "BENCH_NIX_DIR": str(REPO / "nix"),
            "BENCH_OUT_LINK_DIR": str(work / "results"),
            "BENCH_SHAPE": str(work / "shape.json"),
            "PYTHONPATH": os.pathsep.join([str(self.modules), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        self.runs = 0
        self.quiet = True
        self.contended: list[tuple[str, float]] = []
        self.in_use_waits: list[str] = []
        self.skipped: list[str] = []
        self.kept: list[str] = []
        self.failed: list[str] = []
        self.last_trace: Path | None = None

    def timed(self, label: str, run) -> float:
        """``run()`` under a :class:`ContentionWatch`; contended runs are recorded by label."""
        with ContentionWatch() as watch:
            seconds = run()
        if watch.seen:
            self.contended.append((label, round(seconds, 3)))
            print(f"bench: {label} run ({seconds:.1f}s) shared the machine with: {sorted(watch.seen)[:3]}",
                  file=sys.stderr)
        return seconds

    def dagster(self, kind: str) -> tuple[float, dict]:
        """One Dagster run of ``kind`` (full, dg, shipped, trivial): wall-clock seconds and its phases.
        Exits on failure."""
        select = ["--select", "*"]
        command = {
            "full": [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "bench_full_defs", *select],
            "trivial": [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "bench_trivial_defs", *select],
            "shape": [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "bench_shape_defs", *select],
            "shipped": [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "dagster_nix_builder.definitions",
                        *select],
            "dg": [str(VENV_BIN / "dg"), "launch", "--assets", "*"],
        }[kind]
        self.runs += 1
        log = self.work / f"run-{self.runs:02d}-{kind}.log"
        trace = self.work / f"run-{self.runs:02d}-{kind}.trace"
        env = {**self.env, "BENCH_TRACE": str(trace)}
        start_wall, start = time.time(), time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.monotonic() - start
        end_wall = time.time()
        if proc.returncode != 0:
            raise RunFailedError(f"bench: {' '.join(command)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
        return seconds, self.phases(start_wall, end_wall, trace)

    def phases(self, start: float, end: float, trace: Path) -> dict:
        """Where the last run's time went, from its event log (and the trace of the bench's module)."""
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(self.home)) as instance:
            run = instance.get_runs(limit=1)[0]
            logs = instance.all_logs(run.run_id)
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for entry in logs:
            kind = entry.dagster_event.event_type.name if entry.dagster_event else None  # RUN_START, ...
            message = entry.user_message or ""
            if kind is None and message.startswith("Running: "):
                kind = "NIX_BUILD_START"
            elif kind is None and message.startswith("Every output is valid already"):
                kind = "NO_BUILD"
            if kind:
                first.setdefault(kind, entry.timestamp)
                last[kind] = entry.timestamp
        results = [t for k in ("ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION") if k in last for t in [last[k]]]
        marks = [
            ("process_start_to_run_start", start, first.get("RUN_START")),
            ("run_start_to_step_start", first.get("RUN_START"), first.get("STEP_START")),
            ("step_start_to_nix_build_start", first.get("STEP_START"), first.get("NIX_BUILD_START")),
            ("nix_build_start_to_last_result", first.get("NIX_BUILD_START"), max(results) if results else None),
            ("step_start_to_last_result", first.get("STEP_START"), max(results) if results else None),
            ("last_result_to_run_success", max(results) if results else None, first.get("RUN_SUCCESS")),
            ("run_success_to_exit", first.get("RUN_SUCCESS"), end),
        ]
        out: dict = {name: round(b - a, 3) for name, a, b in marks if a is not None and b is not None}
        out["nix_build_started"] = "NIX_BUILD_START" in first
        types = [e.dagster_event.event_type.name for e in logs if e.dagster_event]
        out["materializations"] = types.count("ASSET_MATERIALIZATION")
        out["check_evaluations"] = types.count("ASSET_CHECK_EVALUATION")
        if trace.is_file():
            commands: dict[str, dict] = {}
            for line in trace.read_text().splitlines():
                record = json.loads(line)
                if record["kind"] == "self_cpu":
                    out["dagster_process_cpu_s"] = round(record["seconds"], 3)
                    continue
                c = commands.setdefault(record["kind"], {"count": 0, "seconds": 0.0})
                c["count"] += 1
                c["seconds"] = round(c["seconds"] + record["seconds"], 3)
            out["nix_commands"] = commands
        return out

    def bare(self) -> float:
        # The same max-jobs as the code location passes by default (NixResource.max_jobs = the cores).
        seconds, _ = ps.timed_build(os.cpu_count() or 1, self.args.targets)
        return seconds

    def cold(self, drvs: list[str], run, label: str) -> float | None:
        """Delete everything the packages and their tests need, then ``run()``; None if it could not be done.

        Deletes only when no other nix process runs (waits up to --quiet-wait, else skips this run), and
        waits while another build holds a path or a running process uses one (never forced). A failed
        run is tried once more."""
        for attempt in (1, 2):
            if not self._delete(drvs):
                self.skipped.append(f"{label}: not quiet for {self.args.quiet_wait:.0f}s, skipped")
                return None
            if ps.KEPT:
                self.kept.append(f"{label}: {len(ps.KEPT)} outputs kept for other builds")
            try:
                return run()
            except RunFailedError as exc:
                print(str(exc)[-1500:], file=sys.stderr)
                self.failed.append(f"{label} (attempt {attempt}): {str(exc)[-600:]}")
        return None

    def _delete(self, drvs: list[str]) -> bool:
        deadline = time.monotonic() + self.args.in_use_wait
        attempt = 0
        while True:
            attempt += 1
            if not wait_for_quiet(self.args.quiet_wait):
                self.quiet = False
                return False
            try:
                ps.delete_everything_built(drvs, keep_fetched=self.args.keep_fetched)
                break
            except ps.StorePathsInUseError as exc:
                if attempt == 1 or attempt % 15 == 0:
                    print(f"bench: waiting, store paths in use: {exc}", file=sys.stderr)
                self.in_use_waits.append(str(exc)[:300])
            except SystemExit as exc:  # the helper exits with Nix's message
                print(f"bench: deleting failed, retrying: {str(exc)[-300:]}", file=sys.stderr)
            if time.monotonic() > deadline:
                sys.exit(f"bench: the set's store paths stayed in use for {self.args.in_use_wait:.0f}s; not forced")
            time.sleep(2)
        return True

    def load(self, module: str, nix_dir: Path) -> dict:
        """Definitions load in a fresh interpreter (seconds, plus the wall time of the whole process)."""
        env = {**self.env, "BENCH_NIX_DIR": str(nix_dir)}
        env.pop("BENCH_TRACE", None)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, module], cwd=REPO, env=env, capture_output=True, text=True,
            check=False,
        )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"bench: loading {module} ({nix_dir}) failed:\n{proc.stderr[-4000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        figures["load_s"] = figures["import_definitions_s"] + figures["resolve_s"]
        figures["process_wall_s"] = wall
        return figures


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def median_phases(runs: list[dict]) -> dict:
    """Per phase the median over runs; Nix commands by kind (count and seconds, medians)."""
    if not runs:
        return {}
    out: dict = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
        if values and len(values) == len(runs):
            out[key] = median(values)
    out["nix_build_started"] = [r.get("nix_build_started") for r in runs]
    kinds = sorted({k for r in runs for k in r.get("nix_commands", {})})
    if kinds:
        out["nix_commands"] = {
            k: {f: median([r.get("nix_commands", {}).get(k, {}).get(f, 0) for r in runs]) for f in ("count", "seconds")}
            for k in kinds
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-runs", type=int, default=3, help="cold runs of bare Nix and of Dagster (median)")
    parser.add_argument("--dg-cold-runs", type=int, default=1, help="cold runs of `dg launch` (if dg is there)")
    parser.add_argument("--noop-runs", type=int, default=3, help="no-op runs of each kind (median)")
    parser.add_argument("--load-runs", type=int, default=3, help="definitions loads of each set (median)")
    parser.add_argument("--packages", type=int, default=2500, help="size of the generated package set")
    parser.add_argument("--keep-fetched", action="store_true",
                        help="cold runs keep the fetched sources (the downloads' time varies most): builds only")
    parser.add_argument("--quiet-wait", type=float, default=900, help="max seconds to wait for other nix builds")
    parser.add_argument("--in-use-wait", type=float, default=900,
                        help="max seconds to wait for store paths in use by running processes (never forced)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args()
    os.environ["NIX_PATH"] = ""  # as bench/package_set.py: the bootstrap scope, same derivations either way
    dg = (VENV_BIN / "dg").is_file()

    with tempfile.TemporaryDirectory(prefix="dagster-overhead-") as tmp:
        work = Path(tmp)
        args.targets = ps.installables(with_tests=True)
        bench = Bench(work, args)
        drvs = ps.drv_paths(with_tests=True)

        # The bench's Dagster runs must build exactly what bare Nix builds: every package and every test.
        sys.path.insert(0, str(REPO))
        from dagster_nix_builder import NixResource

        graph = NixResource(nix_dir=str(REPO / "nix")).load_graph()
        assert sorted(graph) == sorted(ps.PACKAGES), f"the package set changed: {sorted(graph)}"
        dagster_drvs = {graph[a].drv_path for a in ps.PACKAGES} | {
            t.drv_path for a in ps.PACKAGES for t in graph[a].tests.values()
        }
        assert dagster_drvs == set(drvs), "Dagster and bare Nix disagree on derivations"
        shape = [[a, sorted(graph[a].deps), sorted(graph[a].tests)] for a in graph.topological_order()]
        (work / "shape.json").write_text(json.dumps(shape))

        # Warm-up (not counted): first run in a fresh DAGSTER_HOME creates its SQLite storage; first imports.
        bench.dagster("trivial")

        def dagster_run(kind: str, phases: list[dict]):
            def run() -> float:
                seconds, figures = bench.dagster(kind)
                phases.append(figures)
                return seconds
            return run

        cold: dict[str, list[float]] = {"bare": [], "full": [], "dg": []}
        cold_phases: dict[str, list[dict]] = {"full": [], "dg": []}
        def cold_run(kind: str, run) -> None:
            seconds = bench.cold(drvs, lambda: bench.timed(f"cold {kind}", run), f"cold {kind}")
            if seconds is not None:
                cold[kind].append(seconds)

        for _ in range(args.cold_runs):
            cold_run("bare", bench.bare)
            cold_run("full", dagster_run("full", cold_phases["full"]))
        for _ in range(args.dg_cold_runs if dg else 0):
            cold_run("dg", dagster_run("dg", cold_phases["dg"]))

        kinds = ["full", *(["dg"] if dg else []), "shipped", "shape", "trivial"]
        noop: dict[str, list[float]] = {"bare": [], **{k: [] for k in kinds}}
        noop_phases: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.noop_runs):
            noop["bare"].append(bench.timed("noop bare", bench.bare))
            for kind in kinds:
                noop[kind].append(bench.timed(f"noop {kind}", dagster_run(kind, noop_phases[kind])))

        generated = work / "generated"
        edges = generate_package_set(generated, args.packages)
        loads: dict[str, list[dict]] = {"package_set": [], "generated": [], "shipped": []}
        for _ in range(args.load_runs):
            loads["package_set"].append(bench.load("bench_full_defs", REPO / "nix"))
            loads["generated"].append(bench.load("bench_full_defs", generated))
            loads["shipped"].append(bench.load("dagster_nix_builder.definitions", REPO / "nix"))
        quiet = bench.quiet

    def load_summary(runs: list[dict]) -> dict:
        keys = ["load_s", "import_dagster_s", "import_definitions_s", "resolve_s", "nix_eval_again_s",
                "process_wall_s"]
        out: dict = {k: median([r[k] for r in runs if r[k] is not None]) for k in keys}
        out["load_runs_s"] = rounded([r["load_s"] for r in runs])
        out["assets"] = runs[0]["assets"]
        out["checks"] = runs[0]["checks"]
        return out

    bare_cold = median(cold["bare"])
    noop_m = {k: median(v) for k, v in noop.items()}

    def ratio(kind: str) -> float | None:
        return round(median(cold[kind]) / bare_cold, 3) if cold[kind] and bare_cold else None

    figures = {
        "mechanism": "CLI subprocess, temp DAGSTER_HOME: full = dagster asset materialize -m bench_full_defs "
        "--select '*' (every package + all checks, NixResource(nix_dir, out_link_dir), in-process executor); "
        "dg = dg launch --assets '*' (the shipped dg project); shipped = dagster asset materialize -m "
        "dagster_nix_builder.definitions --select '*'; bare: nix build --max-jobs <cores> -f nix <every package> "
        "<attr>.tests.<name> (bench/package_set.py); cold: closure of the packages and their tests deleted",
        "targets": args.targets,
        "cold": {
            "bare_nix_s": bare_cold,
            "dagster_full_s": median(cold["full"]),
            "overhead_ratio": ratio("full"),
            "dg_launch_s": median(cold["dg"]),
            "overhead_ratio_dg": ratio("dg"),
            "runs_s": {k: rounded(v) for k, v in cold.items()},
            "phases": {k: median_phases(v) for k, v in cold_phases.items()},
            "phases_runs": cold_phases,
        },
        "noop": {
            "bare_nix_s": noop_m["bare"],
            **{f"dagster_{k}_s": noop_m[k] for k in kinds if k != "trivial"},
            "full_minus_shape_s": round(noop_m["full"] - noop_m["shape"], 3),
            "trivial_dagster_run_s": noop_m["trivial"],
            **{f"{k}_minus_trivial_s": round(noop_m[k] - noop_m["trivial"], 3) for k in kinds if k != "trivial"},
            "runs_s": {k: rounded(v) for k, v in noop.items()},
            "phases": {k: median_phases(v) for k, v in noop_phases.items()},
        },
        "load": {
            "package_set": load_summary(loads["package_set"]),
            "generated": {**load_summary(loads["generated"]), "packages": args.packages, "edges": edges},
            "shipped_state_backed": load_summary(loads["shipped"]),
        },
        "aims": AIMS,
        "max_jobs": os.cpu_count(),
        "keep_fetched": args.keep_fetched,
        "runs_used": {"cold_runs": args.cold_runs, "dg_cold_runs": args.dg_cold_runs if dg else 0,
                      "noop_runs": args.noop_runs, "load_runs": args.load_runs},
        "nix": ps.run(["nix", "--version"]).stdout.strip(),
        "python": subprocess.run(["/usr/bin/python3", "-V"], capture_output=True, text=True).stdout.strip(),
        "sandbox": next((line.split("=", 1)[1].strip() for line in ps.run(["nix", "show-config"]).stdout.splitlines()
                         if line.startswith("sandbox =")), None),
        "dagster": subprocess.run(
            [str(VENV_BIN / "dagster"), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "dg": dg,
        "cores": os.cpu_count(),
        "store_quiet": quiet,
        "contended_runs": [f"{label}: {seconds}s" for label, seconds in bench.contended],
        "waits_for_paths_in_use": bench.in_use_waits[:10],
        "cold_runs_skipped": bench.skipped,
        "cold_outputs_kept_for_other_builds": bench.kept,
        "failed_runs": bench.failed,
        # The self package builds from this checkout: an edit during the runs changes its derivation, and
        # its old build then keeps outputs of the others valid ("kept" above): the cold runs were not cold.
        "derivations_changed_during_runs": sorted(set(ps.drv_paths(with_tests=True)) ^ set(drvs)),
    }
    figures["meets_aims"] = {
        "overhead_ratio_cold": (figures["cold"]["overhead_ratio"] or 99) <= AIMS["overhead_ratio_cold_max"],
        "noop_full_within_0.3s_of_trivial": figures["noop"]["full_minus_trivial_s"] <= AIMS["noop_minus_trivial_max_s"],
        "generated_load_under_5s": figures["load"]["generated"]["load_s"] < AIMS["load_generated_max_s"],
    }
    text = json.dumps(figures, indent=2)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
