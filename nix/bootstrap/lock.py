#!/usr/bin/env python3
"""Regenerate nix/bootstrap/wheels.json: the pinned third-party wheels of the bootstrap scope, one
lock per target (CPython version x Nix system), because the wheels chosen (cp313, manylinux aarch64...)
and the dependencies (environment markers) depend on both:

    /usr/bin/python3 nix/bootstrap/lock.py                                         # every target
    /usr/bin/python3 nix/bootstrap/lock.py --target 3.13-x86_64-linux
    /usr/bin/python3 nix/bootstrap/lock.py --dagster-version 1.13.28               # another release
    /usr/bin/python3 nix/bootstrap/lock.py --dagster-version 1.13.28 --requirements reqs.txt   # a git checkout

What is locked comes from the package set (nix/bootstrap/requirements.nix): each package's distribution at
the version its expression's `dagster-src.package` declares, plus `passthru.requirements` of packages that
are not on the index; so a new package file needs no edit here, only this command.

pip resolves Dagster's runtime dependencies and the build backends for each target's wheel tags
through the user's own pip configuration; the lock keeps for each wheel its file name, the sha256 the
index published, its dependencies (markers evaluated for the target) and the top-level modules it
provides. No index URL is written: only file names and hashes. Any interpreter can lock any target;
targets not regenerated are kept only when they already lock the requested Dagster version.
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
from pip._vendor.packaging.requirements import Requirement

REQUIREMENTS_NIX = Path(__file__).with_name("requirements.nix")
BUILD_TOOLS = ("hatchling", "setuptools")
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
SYSTEMS = ("x86_64-linux", "aarch64-linux")
TARGET_RE = re.compile(r"^(3\.[0-9]+)-(x86_64|aarch64)-linux$")
# glibc-based Linux wheels a current distribution runs (glibc >= 2.28: Debian 10 and later).
MANYLINUX = ["manylinux2014"] + [f"manylinux_2_{minor}" for minor in range(28, 16, -1)]


def normalize(name: str) -> str:
    """PEP 503 name, which is also the attribute name in python3Packages."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Target:
    """One CPython version on one Nix system: its wheel tags for pip, its environment for markers."""

    def __init__(self, key: str):
        match = TARGET_RE.match(key)
        if not match:
            sys.exit(f"lock.py: target {key!r} is not <python>-<system>, e.g. 3.13-x86_64-linux")
        self.key, self.python, self.machine = key, match.group(1), match.group(2)
        self.system = f"{self.machine}-linux"
        abi = "cp" + self.python.replace(".", "")
        self.pip_tags = ["--python-version", self.python, "--implementation", "cp",
                         "--abi", abi, "--abi", "abi3", "--abi", "none",
                         *(arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{self.machine}")),
                         "--platform", "any"]
        self.markers = {
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
            "platform_machine": self.machine, "python_version": self.python,
            "python_full_version": self.python + ".0", "implementation_version": self.python + ".0",
            "platform_release": "", "platform_version": "",
        }

    def wants(self, req: Requirement, extra: str = "") -> bool:
        return req.marker is None or req.marker.evaluate({**self.markers, "extra": extra})


def pip(python: str, *args: str) -> None:
    result = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"lock.py: pip {args[0]} failed:\n{result.stderr[-3000:]}")


def resolve(roots: list[str], target: Target, python: str) -> dict[str, dict]:
    """pip's resolution (wheels only) of the roots for the target's tags, by normalized name."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        # --target is required by pip for foreign tags; with --dry-run nothing is installed there.
        pip(python, "install", "--quiet", "--dry-run", "--ignore-installed", "--only-binary", ":all:",
            "--target", str(Path(tmp, "unused")), *target.pip_tags, "--report", str(report), *roots)
        items = json.loads(report.read_text())["install"]
    return {normalize(i["metadata"]["name"]): i for i in items}


def closure_for(target: Target, roots: list[str], python: str) -> dict[str, dict]:
    """Resolve, then keep what the target needs. pip evaluates markers for the interpreter running it,
    not the target, so a dependency only the target needs is added as a root and resolved again."""
    roots = list(roots)
    for _ in range(5):
        items = resolve(roots, target, python)
        needed, seen, missing, todo = set(), set(), [], [Requirement(r) for r in roots]
        while todo:
            req = todo.pop()
            name = normalize(req.name)
            if name not in items:
                missing.append(str(req).split(";")[0])
                continue
            extras = {""} | {normalize(e) for e in req.extras}
            if {(name, e) for e in extras} <= seen:
                continue
            needed.add(name)
            seen |= {(name, e) for e in extras}
            todo += [r for r in map(Requirement, items[name]["metadata"].get("requires_dist") or [])
                     if any(target.wants(r, e) for e in extras)]
        if not missing:
            return {name: items[name] for name in needed}
        roots += missing
    sys.exit(f"lock.py: {target.key}: pip's resolution keeps missing {missing}")


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


def nar_hash(path: Path) -> str:
    """The NAR hash Nix will compute for a recursive fixed-output derivation of this folder."""
    try:
        result = subprocess.run(["nix-hash", "--type", "sha256", "--base32", str(path)],
                                capture_output=True, text=True, check=True)
    except FileNotFoundError:
        sys.exit("lock.py: nix-hash not found: install Nix (apt-get install -y nix-bin)")
    return result.stdout.strip()


def package_set_requirements(dagster_version: str | None) -> dict:
    """The set's own distributions and what to lock for it, as nix/bootstrap/requirements.nix reads them
    from the package expressions (evaluated with this interpreter; no wheel lock is needed for that)."""
    command = ["nix-instantiate", "--eval", "--strict", "--json", str(REQUIREMENTS_NIX),
               "--argstr", "hostPython", sys.executable]
    if dagster_version is not None:
        command += ["--argstr", "dagsterVersion", dagster_version]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        sys.exit("lock.py: nix-instantiate not found: install Nix (apt-get install -y nix-bin)")
    if result.returncode != 0:
        sys.exit(f"lock.py: reading the package set's requirements failed ({' '.join(command)}):\n"
                 f"{result.stderr.strip()[-3000:]}")
    return json.loads(result.stdout)


def lock_target(target: Target, roots: list[str], own: set[str], python: str, cache: Path) -> dict:
    roots = roots + list(BUILD_TOOLS)
    items = {n: i for n, i in closure_for(target, roots, python).items() if n not in own}
    files = {n: i["download_info"]["url"].rsplit("/", 1)[-1] for n, i in items.items()}
    # Fetch, hash-checked by pip, what the cache lacks (pure wheels are shared between targets).
    wanted = [n for n in items if not (cache / files[n]).exists()]
    if wanted:
        reqs = cache / f"requirements-{target.key}.txt"
        reqs.write_text("".join(f"{items[n]['metadata']['name']}=={items[n]['metadata']['version']} "
                                f"--hash=sha256:{sha256_of(items[n])}\n" for n in wanted))
        pip(python, "download", "--quiet", "--no-deps", "--only-binary", ":all:", *target.pip_tags,
            "--require-hashes", "-r", str(reqs), "-d", str(cache))
    house = cache / f"house-{target.key}"
    house.mkdir()
    wheels = {}
    for name in sorted(items):
        meta, file, sha256 = items[name]["metadata"], files[name], sha256_of(items[name])
        if hashlib.sha256((cache / file).read_bytes()).hexdigest() != sha256:
            sys.exit(f"lock.py: {file} does not match the index's sha256")
        os.link(cache / file, house / file)
        deps, extras = set(), {}
        for spec in meta.get("requires_dist") or []:
            req = Requirement(spec)
            if target.wants(req):
                deps.add(normalize(req.name))
                continue
            for extra in meta.get("provides_extra") or []:
                if target.wants(req, extra):
                    extras.setdefault(normalize(extra), set()).add(normalize(req.name))
        wheels[name] = {
            "version": meta["version"],
            "file": file,
            "sha256": sha256,
            "deps": sorted(d for d in deps if d in items),
            # Only extras whose every dependency was resolved are usable offline.
            "extras": {e: sorted(ds) for e, ds in sorted(extras.items()) if ds <= set(items)},
            "modules": top_level_modules(cache / file),
        }
    # The bootstrap scope fetches a target's wheels in one fixed-output derivation: Nix checks this hash.
    lock = {"python": target.python, "system": target.system, "wheelhouse": nar_hash(house), "wheels": wheels}
    print(f"lock.py: {target.key}: {len(wheels)} wheels", file=sys.stderr)
    return lock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dagster-version",
                        help="the Dagster release to lock (default: nix/pins.json's release.version)")
    parser.add_argument("--target", action="append", default=[],
                        help="<python>-<system> to (re)lock, repeatable (default: all of "
                             f"{', '.join(p + '-' + s for p in PYTHONS for s in SYSTEMS)})")
    parser.add_argument("--requirements", type=Path,
                        help="lock what this file requires (PEP 508 lines, e.g. a git checkout's own "
                             "requirements) instead of the release --dagster-version, which then only labels it")
    parser.add_argument("--python", default=sys.executable, help="interpreter whose pip resolves (default: this one)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("wheels.json")))
    args = parser.parse_args()
    if args.dagster_version is not None and not VERSION_RE.match(args.dagster_version):
        sys.exit(f"lock.py: {args.dagster_version!r} is not a version")
    targets = [Target(k) for k in (args.target or [f"{p}-{s}" for p in PYTHONS for s in SYSTEMS])]
    if args.requirements is None:
        package_set = package_set_requirements(args.dagster_version)
        args.dagster_version = package_set["version"]
        own = {normalize(name) for name in package_set["own"]}
        roots = package_set["requirements"]
    else:
        # A source's own requirements (the update job writes them without the set's own distributions).
        if args.dagster_version is None:
            sys.exit("lock.py: --requirements needs --dagster-version (the version the lock is labelled with)")
        own = set()
        try:
            lines = args.requirements.read_text().splitlines()
        except OSError as e:
            sys.exit(f"lock.py: --requirements {args.requirements}: {e.strerror}")
        roots = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]

    out = Path(args.output)
    previous = json.loads(out.read_text()) if out.exists() else {}
    kept = previous.get("targets", {}) if previous.get("dagster") == args.dagster_version else {}
    dropped = sorted(set(previous.get("targets", {})) - set(kept) - {t.key for t in targets})
    if dropped:
        print(f"lock.py: dropped {', '.join(dropped)} (they locked Dagster {previous.get('dagster')}); "
              f"add them back with --target", file=sys.stderr)
    with tempfile.TemporaryDirectory() as workdir:
        cache = Path(workdir)
        locked = {t.key: lock_target(t, roots, own, args.python, cache) for t in targets}
    lock = {
        "comment": "Generated by nix/bootstrap/lock.py; do not edit by hand.",
        "dagster": args.dagster_version,
        "targets": dict(sorted({**kept, **locked}.items())),
    }
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_out.write_text(json.dumps(lock, indent=1) + "\n")
    os.replace(tmp_out, out)
    print(f"lock.py: Dagster {args.dagster_version}, targets {', '.join(lock['targets'])} -> {out}")


if __name__ == "__main__":
    main()
