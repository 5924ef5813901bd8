"""Cold and warm (no-op) build time of the package set (every file of nix/packages/) with a bare `nix-build`,
no Dagster involved.

    .venv/bin/python bench/package_set.py [--runs 5] [--six] [--json bench/results/package_set.json]

Cold: every store path the packages need (outputs of all their derivations, fetches included; with
``--with-tests`` their ``passthru.tests`` too, built as ``<attr>.tests.<name>``) is deleted first, so
the build downloads the wheels and sdists and builds everything. The log (internal-json) splits the
cold time into fetching (fixed-output derivations) and the rest. Warm: the same command again with
everything valid, several runs, median. It deletes store paths: run it on a build machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dagster_nix_builder.nix.settings import bootstrap_nix_config

REPO = Path(__file__).resolve().parents[1]
# The set is data: its packages are the files of nix/packages/. --six keeps to the hand-run report's six.
PACKAGES = sorted(p.stem for p in (REPO / "nix" / "packages").glob("*.nix"))
SIX = ["dagster-src", "dagster-shared", "dagster-pipes", "dagster", "dagster-graphql", "dagster-webserver"]
ENV = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}


def run(cmd: list[str], *, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, env=ENV, text=True, capture_output=True)


def test_installables() -> list[str]:
    """``<attr>.tests.<name>`` of every test of the packages (their ``passthru.tests``), asked from Nix."""
    expr = "builtins.mapAttrs (n: p: builtins.attrNames (p.tests or {})) (import %s {})" % (REPO / "nix")
    tests = json.loads(run(["nix-instantiate", "--eval", "--json", "--strict", "-E", expr], check=True).stdout)
    return [f"{attr}.tests.{name}" for attr in PACKAGES for name in tests.get(attr, [])]


def installables(with_tests: bool = False) -> list[str]:
    """The packages, and with ``with_tests`` their tests too (what a Dagster run of everything builds)."""
    return [*PACKAGES, *(test_installables() if with_tests else [])]


def drv_paths(with_tests: bool = False) -> list[str]:
    cmd = ["nix-instantiate", str(REPO / "nix")]
    for attr in installables(with_tests):
        cmd += ["-A", attr]
    return run(cmd, check=True).stdout.split()


# Outputs the last delete_everything_built kept because builds of others need them (see there).
KEPT: list[str] = []


class StorePathsInUseError(Exception):
    """Some paths to delete are in use by a running process (or a running Nix holds them): never forced."""


def _in_use_roots() -> dict[str, str]:
    """GC roots that are running processes (open files, maps, environments; a running Nix's temporary
    roots), root -> store path. Out-links and profiles (permanent roots) are not among them."""
    roots = {}
    for line in run(["nix-store", "--gc", "--print-roots"]).stdout.splitlines():
        root, sep, path = line.rpartition(" -> ")
        if sep and root.startswith(("/proc/", "{")):
            roots[root] = path
    return roots


def fixed_output_drvs(closure: list[str]) -> set[str]:
    """The fixed-output derivations (the fetches) among the store paths ``closure``."""
    return {d for d in closure if d.endswith(".drv") and '"outputHash"' in Path(d).read_text()}


def delete_everything_built(drvs: list[str], keep_fetched: bool = False) -> int:
    """Delete the outputs of every derivation in the closure of ``drvs`` (fetches included); sources such
    as pybuild.py stay, as their .drv files still refer to them.

    Out-links (permanent GC roots, e.g. of earlier runs) do not keep one of these outputs: cold means built
    again, and a later build makes the path valid again (the same path) under its link. Other paths that
    refer to them (other builds, e.g. another version) are not deleted, and the outputs they need are
    kept (:data:`KEPT`). A path a running process uses (a GC root under /proc, or a running Nix's
    temporary root) is never deleted: :class:`StorePathsInUseError` names them, and the caller waits."""
    closure = run(["nix-store", "-qR", *drvs], check=True).stdout.split()
    derivations = [p for p in closure if p.endswith(".drv")]
    if keep_fetched:  # the downloads stay: what is left is the build work alone
        fetches = fixed_output_drvs(derivations)
        derivations = [d for d in derivations if d not in fetches]
    outputs = run(["nix-store", "-q", "--outputs", *derivations], check=True).stdout.split()
    outputs = [p for p in outputs if os.path.exists(p)]
    if not outputs:
        return 0
    doomed = run(["nix-store", "-q", "--referrers-closure", *outputs], check=True).stdout.split()
    # Paths of other builds (not outputs of these derivations, e.g. another version a test built) that
    # refer to ours are never deleted, nor what of ours they need: that much stays valid (KEPT says how much).
    ours = set(outputs)
    foreign = [p for p in doomed if p not in ours and not p.endswith(".drv")]
    keep = set(run(["nix-store", "-qR", *foreign], check=True).stdout.split()) if foreign else set()
    KEPT[:] = sorted(ours & keep)
    doomed = [p for p in doomed if p in ours and p not in keep]
    if not doomed:
        return 0
    in_use = _in_use_roots()
    if in_use:
        alive = set(run(["nix-store", "-qR", *sorted(set(in_use.values()))]).stdout.split())
        if alive.intersection(doomed):
            held = sorted(root for root, path in in_use.items() if path in alive)
            raise StorePathsInUseError(f"{len(alive.intersection(doomed))} paths in use, roots: {held[:5]}")
    result = run(["nix-store", "--delete", "--ignore-liveness", *doomed])
    if result.returncode != 0 and "still alive" in result.stderr:
        raise StorePathsInUseError(result.stderr.strip()[-500:])
    if result.returncode != 0:
        sys.exit(f"bench: could not delete the previous build:\n{result.stderr[-2000:]}")
    return len(doomed)


def timed_build(max_jobs: int, targets: list[str] | None = None) -> tuple[float, list[dict]]:
    """``nix build -f nix <targets>`` (default: the six), wall-clock seconds and the log's events."""
    cmd = ["nix", "--log-format", "internal-json", "-v", "build", "--no-link", "--max-jobs", str(max_jobs),
           "-f", str(REPO / "nix"), *(targets or PACKAGES)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=ENV, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    events = []
    for line in proc.stderr:
        if line.startswith("@nix "):
            event = json.loads(line[5:])
            event["t"] = time.monotonic() - start
            events.append(event)
    if proc.wait() != 0:
        messages = [e.get("msg", "") for e in events if e.get("action") == "msg" and e.get("level", 9) <= 0]
        sys.exit("bench: nix build failed:\n" + "\n".join(messages)[-3000:])
    return time.monotonic() - start, events


def split_fetching(events: list[dict], fixed_output: set[str]) -> dict[str, float]:
    """Wall-clock spans of the fetches (fixed-output derivations) and of all the other builds."""
    started = {e["id"]: e for e in events if e.get("action") == "start" and e.get("type") == 105}
    spans = {"fetch": [], "build": []}
    for e in events:
        if e.get("action") == "stop" and e["id"] in started:
            begin = started[e["id"]]
            kind = "fetch" if begin["fields"][0] in fixed_output else "build"
            spans[kind].append((begin["t"], e["t"]))
    out = {}
    for kind, intervals in spans.items():
        covered, end = 0.0, 0.0
        for a, b in sorted(intervals):  # union of intervals: time during which at least one ran
            a = max(a, end)
            if b > a:
                covered += b - a
                end = b
        out[f"{kind}_wall_s"] = round(covered, 2)
        out[f"{kind}_count"] = len(intervals)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="warm runs (median reported)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--max-jobs", type=int, default=os.cpu_count(),
                        help="derivations built at once (default: the cores, as the product passes)")
    parser.add_argument("--with-tests", action="store_true", help="build the packages' passthru.tests too")
    parser.add_argument("--six", action="store_true", help="only the six of the hand-run report, not the whole set")
    args = parser.parse_args()

    if args.six:
        PACKAGES[:] = SIX
    targets = installables(args.with_tests)
    drvs = drv_paths(args.with_tests)
    all_drvs = run(["nix-store", "-qR", *drvs], check=True).stdout.split()
    fixed_output = fixed_output_drvs(all_drvs)
    deleted = delete_everything_built(drvs)

    cold, events = timed_build(args.max_jobs, targets)
    figures = {"cold_s": round(cold, 2), "deleted_paths": deleted, "derivations": len(all_drvs),
               "max_jobs": args.max_jobs, "targets": targets}
    figures.update(split_fetching(events, fixed_output))
    warm = []
    for _ in range(args.runs):
        t, _ = timed_build(args.max_jobs, targets)
        warm.append(t)
    figures["warm_median_s"] = round(statistics.median(warm), 3)
    figures["warm_runs_s"] = [round(t, 3) for t in warm]
    figures["children_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    figures["nix"] = run(["nix", "--version"]).stdout.strip()
    figures["cores"] = os.cpu_count()
    python = subprocess.run(["/usr/bin/python3", "-V"], check=False, text=True, capture_output=True)
    figures["python"] = python.stdout.strip()
    figures["sandbox"] = next((line.split("=", 1)[1].strip() for line in
                               run(["nix", "show-config"]).stdout.splitlines() if line.startswith("sandbox =")), None)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
