"""How far off the progress log's estimate is: cold twice, then warm, on the whole set.

    .venv/bin/python bench/progress_estimate.py [--cold-runs 2] [--warm-runs 1] [--keep-fetched]

Every run is ``dagster asset materialize -m bench_full_defs --select '*'`` (``bench/dagster_overhead.py``'s
module: every package of ``nix/`` with all its checks) in a subprocess, all in one fresh ``DAGSTER_HOME``: the
first cold run has no earlier build times (every target weighs alike), the second estimates from the first's,
a warm run (a no-op: every output valid) from the second's. Cold deletes the outputs of the closure first,
with ``bench/dagster_overhead.py``'s safeguards (waits for other Nix processes, never deletes a path in use;
``--keep-fetched`` keeps the downloads).

At each progress line ``k of n done, about T s left`` the actual time left is the time from that line to the
summary table (logged once the last outcome is in), both from the event log's timestamps; the error is T minus
that. Reported per run: every line's (k, predicted, actual), the mean and the largest absolute error, the mean
error (its sign: over or under), the mean absolute error relative to the time from the first line to the end,
and the first line's. Prints JSON and writes it to ``bench/results/progress_estimate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dagster_overhead as do  # the Bench: CLI runs in a subprocess, cold deletion with its safeguards
import package_set as ps

RESULTS = BENCH / "results" / "progress_estimate.json"
LINE = re.compile(r"^\S+ .+?: (?P<k>\d+) of (?P<n>\d+) done.*?, (about (?P<t>\d+) s left|no estimate)")


def _basis(line: re.Match) -> str:
    """What the first line says the estimate rests on (in parentheses after it)."""
    rest = line.string[line.end():].strip()
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest


def estimate_errors(home: Path) -> dict:
    """The progress lines of the newest run in ``home``'s instance against the time actually left."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        logs = [e for e in instance.all_logs(run.run_id) if e.user_message]
    lines = [(e.timestamp, LINE.match(e.user_message)) for e in logs]
    lines = [(t, m) for t, m in lines if m]
    ends = [e.timestamp for e in logs if e.user_message.startswith("Summary: ")]
    if not ends:
        return {"lines": len(lines), "summary": None}
    summary = next(e.user_message for e in logs if e.user_message.startswith("Summary: ")).splitlines()
    if not lines:
        return {"lines": 0, "summary": summary}  # nothing built (a no-op): no line, the table only
    end = ends[-1]
    points = [{"k": int(m["k"]), "n": int(m["n"]), "predicted_s": int(m["t"]) if m["t"] else None,
               "actual_s": round(end - t, 2)} for t, m in lines]
    errors = [p["predicted_s"] - p["actual_s"] for p in points if p["predicted_s"] is not None]
    if not errors:
        return {"lines": len(points), "estimates": 0, "basis": _basis(lines[0][1]), "points": points,
                "summary": summary}
    return {
        "lines": len(points),
        "estimates": len(errors),
        "basis": _basis(lines[0][1]),
        "first_line": points[0],
        "mean_abs_error_s": round(statistics.fmean(abs(e) for e in errors), 2),
        "max_abs_error_s": round(max(abs(e) for e in errors), 2),
        "mean_error_s": round(statistics.fmean(errors), 2),
        "first_line_to_end_s": points[0]["actual_s"],
        "relative_mean_abs_error": round(statistics.fmean(abs(e) for e in errors) / points[0]["actual_s"], 3),
        "points": points,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-runs", type=int, default=2)
    parser.add_argument("--warm-runs", type=int, default=1)
    parser.add_argument("--keep-fetched", action="store_true", help="cold runs keep the fetched sources")
    parser.add_argument("--quiet-wait", type=float, default=900, help="max seconds to wait for other nix builds")
    parser.add_argument("--in-use-wait", type=float, default=900, help="max seconds to wait for paths in use")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ["NIX_PATH"] = ""
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="progress-estimate-") as tmp:
        work = Path(tmp)
        args.targets = ps.installables(with_tests=True)
        bench = do.Bench(work, args)
        drvs = ps.drv_paths(with_tests=True)
        bench.dagster("trivial")  # the instance's storage is created outside the timed runs

        def measured(kind: str):
            def run() -> float:
                seconds, _ = bench.dagster("full")
                runs.append({"kind": kind, "wall_s": round(seconds, 2), **estimate_errors(bench.home)})
                brief = {k: v for k, v in runs[-1].items() if k not in {"points", "summary"}}
                print(json.dumps(brief), file=sys.stderr)
                return seconds
            return run

        for i in range(args.cold_runs):
            bench.cold(drvs, measured(f"cold {i + 1}"), f"cold {i + 1}")
        for i in range(args.warm_runs):
            measured(f"warm {i + 1}")()
    figures = {"keep_fetched": args.keep_fetched, "runs": runs, "skipped": bench.skipped, "failed": bench.failed,
               "contended": bench.contended, "quiet": bench.quiet}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
