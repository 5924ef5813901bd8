"""What publishing to a signed binary cache costs, against ``nix copy`` by hand on the same paths.

    .venv/bin/python bench/publish.py [--attr dagster-webserver] [--runs 3] [--out bench/results/publish.json]

The paths: the outputs (``out`` and ``dist``) of ``--attr`` (repeatable; default dagster-webserver, whose
closure holds the other packages it needs), built first if needed, with the product's own settings. A signing key
is made in a temporary directory (never in the repository). Per run, each in a fresh ``file://`` cache:

* ``publish cold`` / ``publish warm``: :func:`binary_cache.publish_closure` into an empty cache, then again
  (everything already there: it asks the cache and copies nothing);
* ``by hand cold`` / ``by hand warm``: ``nix copy --to 'file://<cache>?secret-key=<key>' <paths>``, twice;
* ``substitute``: our nginx serves the product's cache on loopback and :func:`binary_cache.verify_substitution`
  substitutes the paths into an empty ``local?root=`` store (require-sigs, the key alone, ``--max-jobs 0``),
  then confirms validity and signatures; ``substitute by hand``: the same ``nix build --store`` alone.

Seconds are wall-clock, bytes are the NAR files written to the cache (xz, Nix's default). Prints JSON (medians
and every run) and writes it to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_binary_cache import serve_directory  # our nginx on loopback, always stopped

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.publish.binary_cache import (
    generate_signing_key,
    publish_closure,
    substitution_options,
    verify_substitution,
)


def nar_bytes(cache: Path) -> int:
    return sum(f.stat().st_size for f in (cache / "nar").iterdir()) if (cache / "nar").is_dir() else 0


def by_hand(cli: NixCli, command: list[str]) -> float:
    started = time.monotonic()
    proc = processes.run(command, env=cli.subprocess_env(), capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def one_run(cli: NixCli, outs: list[str], secret: Path, public: str, work: Path) -> dict[str, float | int]:
    row: dict[str, float | int] = {}
    cache = work / "cache"
    cold = publish_closure(cli, outs, f"file://{cache}", secret)
    warm = publish_closure(cli, outs, f"file://{cache}", secret)
    assert not warm.uploaded and set(cold.uploaded) == set(cold.paths), "the product's cache was not empty"
    row |= {"paths": len(cold.paths), "publish_cold_s": cold.seconds, "publish_cold_bytes": cold.nar_bytes_uploaded,
            "publish_warm_s": warm.seconds, "publish_warm_bytes": warm.nar_bytes_uploaded}  # fmt: skip

    hand = work / "by-hand"
    copy = [cli.executable_path, "copy", "--to", f"file://{hand}?secret-key={secret}", *outs]
    row["by_hand_cold_s"] = by_hand(cli, copy)
    row["by_hand_cold_bytes"] = nar_bytes(hand)
    row["by_hand_warm_s"] = by_hand(cli, copy)
    row["by_hand_warm_bytes"] = nar_bytes(hand) - int(row["by_hand_cold_bytes"])

    with serve_directory(cache, work / "nginx") as url:
        result = verify_substitution(cli, url, public, outs, work / "fresh")
        assert result.built_nothing and set(result.substituted) == set(cold.paths)
        started = time.monotonic()
        verify_substitution(cli, url, public, outs, work / "fresh-total")
        row["substitute_s"] = result.seconds  # the nix build --store alone, as the product runs it
        row["substitute_with_checks_s"] = time.monotonic() - started  # plus the validity and signature queries
        build = [cli.executable_path, "build", "--store", f"local?root={work / 'fresh-hand'}", "--no-link",
                 *substitution_options(url, public), *outs]  # fmt: skip
        row["substitute_by_hand_s"] = by_hand(cli, build)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attr", action="append", help="package attribute(s) to publish (default dagster-webserver)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    attrs = args.attr or ["dagster-webserver"]
    cli = NixCli(nix_dir=str(REPO / "nix"))
    results = json.loads(cli.run(cli.build_command(attrs)).stdout)
    outs = sorted(p for r in results for p in r["outputs"].values())
    closure = cli.run(cli.store_command("--query", "--requisites", *outs)).stdout.split()
    nar_size = sum(int(i.get("narSize", 0)) for i in cli.path_info(closure).values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        keys = Path(tmp) / "keys"
        public = generate_signing_key(cli, "bench-publish-1", keys / "secret", keys / "public")
        for n in range(args.runs):
            work = Path(tmp) / f"run-{n}"
            work.mkdir()
            rows.append(one_run(cli, outs, keys / "secret", public, work))
            print(json.dumps(rows[-1]), file=sys.stderr)
    medians = {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]}
    version = subprocess.run([cli.executable_path, "--version"], capture_output=True, text=True).stdout.strip()
    report = {"nix": version, "attrs": attrs, "outputs": outs, "closure_paths": len(closure),
              "closure_nar_bytes": nar_size, "runs": rows, "median": medians}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
