#!/usr/bin/env python3
"""Regenerate nix/bootstrap/wheels.json: the pinned third-party wheels of the bootstrap scope.

Run it with the interpreter the bootstrap scope builds with (default /usr/bin/python3), because the
wheels chosen (cp311, manylinux x86_64...) depend on it:

    /usr/bin/python3 nix/bootstrap/lock.py --dagster-version 1.13.27

pip resolves Dagster's runtime dependencies and the build backends through the user's own pip
configuration; the lock keeps for each wheel its file name, the sha256 the index published, its
dependencies (markers evaluated for this interpreter) and the top-level modules it provides. No
index URL is written: only file names and hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# pip vendors packaging, so the lock script needs nothing beyond pip itself.
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement

DAGSTER_PACKAGES = ("dagster", "dagster-shared", "dagster-pipes", "dagster-graphql", "dagster-webserver")
BUILD_TOOLS = ("hatchling", "setuptools")
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")


def normalize(name: str) -> str:
    """PEP 503 name, which is also the attribute name in python3Packages."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(dagster_version: str, python: str) -> list[dict]:
    """Ask pip for the full resolution (wheels only) of the five Dagster packages plus build tools."""
    roots = [f"{name}=={dagster_version}" for name in DAGSTER_PACKAGES] + list(BUILD_TOOLS)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        cmd = [python, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
               "--only-binary", ":all:", "--report", str(report), *roots]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"lock.py: pip could not resolve Dagster {dagster_version}:\n{result.stderr[-3000:]}")
        return json.loads(report.read_text())["install"]


def sha256_of(item: dict) -> str:
    info = item["download_info"].get("archive_info", {})
    hashes = info.get("hashes") or {}
    if "sha256" in hashes:
        return hashes["sha256"]
    algo, _, digest = info.get("hash", "").partition("=")
    if algo != "sha256":
        sys.exit(f"lock.py: the index gave no sha256 for {item['metadata']['name']}")
    return digest


def top_level_modules(wheel: Path) -> list[str]:
    """Importable top-level names of a wheel: packages, modules and extension modules at its root."""
    modules = set()
    with zipfile.ZipFile(wheel) as zf:
        for entry in zf.namelist():
            head, sep, _ = entry.partition("/")
            if head.endswith((".dist-info", ".data")):
                continue
            if sep:
                if head.isidentifier():
                    modules.add(head)
            elif entry.endswith(".py"):
                modules.add(entry[:-3])
            elif entry.endswith(".so"):
                modules.add(entry.split(".", 1)[0])
    # Public modules first: error messages name the first one.
    return sorted((m for m in modules if m.isidentifier()), key=lambda m: (m.startswith("_"), m))


def download(items: list[dict], python: str, dest: Path) -> None:
    """Fetch the wheels, hash-checked by pip, to read their module lists."""
    reqs = dest.parent / "requirements.txt"
    reqs.write_text("".join(
        f"{item['metadata']['name']}=={item['metadata']['version']} --hash=sha256:{sha256_of(item)}\n"
        for item in items))
    cmd = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
           "--require-hashes", "-r", str(reqs), "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"lock.py: pip download failed:\n{result.stderr[-3000:]}")


def nar_hash(path: Path) -> str:
    """The NAR hash Nix will compute for a recursive fixed-output derivation of this folder."""
    try:
        result = subprocess.run(["nix-hash", "--type", "sha256", "--base32", str(path)],
                                capture_output=True, text=True, check=True)
    except FileNotFoundError:
        sys.exit("lock.py: nix-hash not found: install Nix (apt-get install -y nix-bin)")
    return result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dagster-version", required=True)
    parser.add_argument("--python", default="/usr/bin/python3",
                        help="interpreter the bootstrap scope builds with (default: /usr/bin/python3)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("wheels.json")))
    args = parser.parse_args()
    if not VERSION_RE.match(args.dagster_version):
        sys.exit(f"lock.py: {args.dagster_version!r} is not a version")

    env_json = subprocess.run(
        [args.python, "-c", ("import json, sys, platform; print(json.dumps("
                             "{'python_version': '%d.%d' % sys.version_info[:2], 'machine': platform.machine()}))")],
        capture_output=True, text=True, check=True).stdout
    target = json.loads(env_json)

    items = [i for i in resolve(args.dagster_version, args.python)
             if normalize(i["metadata"]["name"]) not in DAGSTER_PACKAGES]
    names = {normalize(i["metadata"]["name"]) for i in items}
    marker_env = default_environment()
    marker_env.update(python_version=target["python_version"],
                      python_full_version=target["python_version"] + ".0",
                      platform_machine=target["machine"])

    with tempfile.TemporaryDirectory() as workdir:
        tmp = Path(workdir, "wheels")
        tmp.mkdir()
        download(items, args.python, tmp)
        wheels = {}
        for item in sorted(items, key=lambda i: normalize(i["metadata"]["name"])):
            meta = item["metadata"]
            name = normalize(meta["name"])
            file = item["download_info"]["url"].rsplit("/", 1)[-1]
            sha256 = sha256_of(item)
            if hashlib.sha256(Path(tmp, file).read_bytes()).hexdigest() != sha256:
                sys.exit(f"lock.py: {file} does not match the index's sha256")
            deps, extras = set(), {}
            for spec in meta.get("requires_dist") or []:
                req = Requirement(spec)
                dep = normalize(req.name)
                if req.marker is None or req.marker.evaluate({**marker_env, "extra": ""}):
                    deps.add(dep)
                    continue
                for extra in meta.get("provides_extra") or []:
                    if req.marker.evaluate({**marker_env, "extra": extra}):
                        extras.setdefault(normalize(extra), set()).add(dep)
            wheels[name] = {
                "version": meta["version"],
                "file": file,
                "sha256": sha256,
                "deps": sorted(d for d in deps if d in names),
                # Only extras whose every dependency was resolved are usable offline.
                "extras": {e: sorted(ds) for e, ds in sorted(extras.items()) if ds <= names},
                "modules": top_level_modules(Path(tmp, file)),
            }
            missing = deps - names
            if missing:
                sys.exit(f"lock.py: {name} needs {sorted(missing)}, which pip did not resolve")
        # The bootstrap scope fetches all wheels in one fixed-output derivation: Nix checks this hash.
        wheelhouse = nar_hash(tmp)

    lock = {
        "comment": "Generated by nix/bootstrap/lock.py; do not edit by hand.",
        "dagster": args.dagster_version,
        "python": target["python_version"],
        "machine": target["machine"],
        "wheelhouse": wheelhouse,
        "wheels": wheels,
    }
    out = Path(args.output)
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_out.write_text(json.dumps(lock, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"lock.py: {len(wheels)} wheels for Dagster {args.dagster_version} "
          f"(Python {target['python_version']}, {target['machine']}) -> {out}")


if __name__ == "__main__":
    main()
