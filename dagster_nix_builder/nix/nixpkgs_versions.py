"""The wheels' ``Requires-Dist`` against the versions a nixpkgs provides, before nixpkgs' build finds out.

nixpkgs' ``buildPythonPackage`` runs ``pythonRuntimeDepsCheckHook`` for ``pyproject = true``: a
``Requires-Dist`` of the built wheel (markers evaluated for nixpkgs' ``python3``, extras off) whose version
bound the dependency does not meet fails the build, unless the name is in ``pythonRelaxDeps`` (its
relax hook strips the bound first; a missing distribution fails either way). :func:`compare` does the same
with a map of versions instead of an environment, so a bound the next Dagster release adds is found without
nixpkgs. The versions come from a record (``python-versions.json``) or from a nixpkgs (:func:`ask_nixpkgs`).

Run it against your nixpkgs before a nixpkgs-scope build::

    python -m dagster_nix_builder.nix.nixpkgs_versions --nixpkgs ~/src/nixpkgs   # or <nixpkgs> from NIX_PATH

No Dagster imports: this module is below the Dagster adapters.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import Parser
from importlib import resources
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.errors import NixCommandError
from dagster_nix_builder.nix.settings import DEFAULT_NIX_CONFIG, bootstrap_nix_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unmet:
    """One ``Requires-Dist`` of a package that the versions do not satisfy.

    Attributes:
        package: the distribution whose wheel states the requirement.
        requirement: the ``Requires-Dist`` value, verbatim.
        distribution: the required distribution, canonical name.
        version: the version the map gives it; ``None`` when the map lacks the distribution.
    """

    package: str
    requirement: str
    distribution: str
    version: str | None

    def __str__(self) -> str:
        if self.version is None:
            return f"{self.package}: requires '{self.requirement}', but {self.distribution} is not provided"
        return f"{self.package}: requires '{self.requirement}', but {self.distribution} is {self.version}"


@dataclass(frozen=True)
class Comparison:
    """Outcome of :func:`compare`.

    Attributes:
        violated: requirements whose bound the version does not meet and which are not relaxed (the
            build would fail: relax them in the package's ``pythonRelaxDeps``, or update the dependency).
        missing: requirements whose distribution the versions lack (the build would fail either way).
        unneeded_relaxes: ``(package, name)`` pairs in ``pythonRelaxDeps`` that no applicable
            requirement needs with these versions (the list is wider than it has to be).
    """

    violated: list[Unmet] = field(default_factory=list)
    missing: list[Unmet] = field(default_factory=list)
    unneeded_relaxes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when a build with these versions passes the runtime-deps check."""
        return not self.violated and not self.missing

    def report(self) -> str:
        """Human-readable lines, one per finding."""
        lines = [f"violated: {u}" for u in self.violated] + [f"missing: {u}" for u in self.missing]
        lines += [f"relaxed but not violated: {pkg}: {name}" for pkg, name in self.unneeded_relaxes]
        return "\n".join(lines) if lines else "every Requires-Dist is met"


def marker_environment(python_version: str) -> dict[str, str]:
    """Marker environment of a CPython ``X.Y`` on this platform, extras off (as nixpkgs' hook)."""
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        extra="",
    )
    return env


def _parse(metadata: str):
    return Parser().parsestr(metadata, headersonly=True)


def _satisfied(requirement: Requirement, version: str) -> bool:
    if not requirement.specifier:
        return True
    try:
        Version(version)
    except InvalidVersion:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def compare(
    metadata: Iterable[str],
    versions: Mapping[str, str],
    python_version: str,
    relax_deps: Mapping[str, Sequence[str] | bool] | None = None,
) -> Comparison:
    """Check every ``Requires-Dist`` of the given packages against ``versions``.

    The packages themselves count as provided at their own versions (``dagster`` requires
    ``dagster-shared==1.13.27``, which the set builds), whatever ``versions`` says about them.

    Args:
        metadata: the ``METADATA`` (or ``PKG-INFO``) text of each package, e.g. of its wheel.
        versions: distribution name -> version of what the dependencies provide (e.g. nixpkgs').
        python_version: ``X.Y`` of the interpreter the markers are evaluated for.
        relax_deps: package name -> its ``pythonRelaxDeps`` (a list of names, or ``True`` for all).

    Returns:
        The unmet and missing requirements, and relaxes that are not needed.
    """
    env = marker_environment(python_version)
    packages = [_parse(text) for text in metadata]
    provided = {canonicalize_name(name): version for name, version in versions.items()}
    provided.update({canonicalize_name(m["Name"]): m["Version"] for m in packages})
    relaxes = {canonicalize_name(k): v for k, v in (relax_deps or {}).items()}
    result = Comparison()
    for meta in packages:
        package = canonicalize_name(meta["Name"])
        relax = relaxes.get(package, [])
        relaxed = None if relax is True else set() if relax is False else {canonicalize_name(n) for n in relax}
        needed: set[str] = set()
        for spec in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            name = canonicalize_name(requirement.name)
            version = provided.get(name)
            if version is None:
                result.missing.append(Unmet(package, spec, name, None))
            elif not _satisfied(requirement, version):
                if relaxed is None or name in relaxed:
                    needed.add(name)
                else:
                    result.violated.append(Unmet(package, spec, name, version))
        if relaxed is not None:
            result.unneeded_relaxes.extend((package, name) for name in sorted(relaxed - needed))
    return result


def wheel_metadata(wheel: str | os.PathLike[str]) -> str:
    """The ``METADATA`` text of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return zf.read(name).decode()


def dist_metadata(dist: str | os.PathLike[str]) -> str:
    """The ``METADATA`` of the one wheel in a package's ``dist`` output."""
    wheels = sorted(Path(dist).glob("*.whl"))
    if len(wheels) != 1:
        raise ValueError(f"{dist}: expected one wheel, found {[w.name for w in wheels]}")
    return wheel_metadata(wheels[0])


def sdist_metadata(src: str | os.PathLike[str]) -> str:
    """The ``PKG-INFO`` of a package's source cut from the release sdists (no build needed)."""
    path = Path(src) / "PKG-INFO"
    if not path.is_file():
        raise ValueError(
            f"{src} has no PKG-INFO: only sources from release sdists do (git mode has none); "
            "compare the built wheels instead (without --from-sdists)"
        )
    return path.read_text()


def versions_from_record(record: Mapping) -> tuple[str, dict[str, str]]:
    """``(python3 version, {distribution: version})`` of a ``python-versions.json`` record."""
    return record["python3"], {name: entry["version"] for name, entry in record["packages"].items()}


# --- asking Nix -----------------------------------------------------------------------------------------

def helper_path() -> str:
    """Path of the ``nixpkgs_versions.nix`` helper shipped in this package."""
    return str(resources.files("dagster_nix_builder.nix").joinpath("nixpkgs_versions.nix"))


def _run(command: list[str], nix_config: str = DEFAULT_NIX_CONFIG) -> str:
    """Run one Nix command (argument list, NIX_CONFIG per call); stdout, or NixCommandError."""
    logger.info("running %s", shlex.join(command))
    env = {**os.environ, "NIX_CONFIG": nix_config}
    proc = processes.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        messages = [line for line in proc.stderr.splitlines() if line.strip()][-30:]
        raise NixCommandError(command, proc.returncode, messages)
    return proc.stdout


def _eval_helper(attr: str, *args: str, nix_config: str = DEFAULT_NIX_CONFIG):
    command = ["nix-instantiate", "--eval", "--json", "--strict", helper_path(), "-A", attr, *args]
    return json.loads(_run(command, nix_config))


def package_set_facts(nix_dir: str | os.PathLike[str], nix_config: str = DEFAULT_NIX_CONFIG) -> dict:
    """Per Python package of the set: ``relaxDeps`` (its pythonRelaxDeps) and ``dependencies`` (the
    python3Packages attributes it takes), asked of Nix (bootstrap scope, evaluation only)."""
    return _eval_helper("set", "--argstr", "dir", str(Path(nix_dir).resolve()), nix_config=nix_config)


def ask_nixpkgs(
    attrs: Iterable[str], nixpkgs: str | os.PathLike[str] | None = None, nix_config: str = DEFAULT_NIX_CONFIG
) -> tuple[str, dict[str, str | None]]:
    """``(python3.pythonVersion, {attr: python3Packages.<attr>.version or None})`` of a nixpkgs.

    Args:
        attrs: the ``python3Packages`` attributes to ask for.
        nixpkgs: a nixpkgs checkout (or any file/directory importable as ``import <it> {}``);
            ``None`` takes ``<nixpkgs>`` from ``NIX_PATH``.
    """
    path = "" if nixpkgs is None else str(Path(nixpkgs).expanduser().resolve())
    facts = _eval_helper(
        "nixpkgs", "--argstr", "nixpkgs", path, "--argstr", "attrsJson", json.dumps(sorted(set(attrs))),
        nix_config=nix_config,
    )
    return facts["python3"], facts["versions"]


def build_outputs(
    nix_dir: str | os.PathLike[str], attrs: Sequence[str], nix_config: str = DEFAULT_NIX_CONFIG
) -> list[str]:
    """Build (or find valid) ``attrs`` of the set in the bootstrap scope; their store paths, in order."""
    command = ["nix-build", str(nix_dir), "--argstr", "scope", "bootstrap", "--no-out-link"]
    for attr in attrs:
        command += ["-A", attr]
    return _run(command, bootstrap_nix_config(nix_config)).split()


def check_package_set(
    nix_dir: str | os.PathLike[str],
    versions: Mapping[str, str | None],
    python_version: str,
    from_sdists: bool = False,
    nix_config: str = DEFAULT_NIX_CONFIG,
) -> Comparison:
    """:func:`compare` for the Python packages of the set in ``nix_dir``: their built wheels (``dist``
    outputs), or with ``from_sdists`` their sources' ``PKG-INFO`` (fetched and cut, nothing built)."""
    facts = package_set_facts(nix_dir, nix_config)
    names = sorted(facts)
    paths = build_outputs(nix_dir, [f"{n}.{'src' if from_sdists else 'dist'}" for n in names], nix_config)
    read = sdist_metadata if from_sdists else dist_metadata
    return compare(
        [read(p) for p in paths],
        {k: v for k, v in versions.items() if v is not None},
        python_version,
        {name: facts[name]["relaxDeps"] for name in names},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 when a nixpkgs-scope build would pass the runtime-deps check, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m dagster_nix_builder.nix.nixpkgs_versions",
        description="Check every Requires-Dist of the package set's wheels against the versions in a nixpkgs "
        "(python3Packages, markers for its python3), as nixpkgs' pythonRuntimeDepsCheckHook will.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--nixpkgs", help="nixpkgs to ask (a checkout's path); default: <nixpkgs> on NIX_PATH")
    source.add_argument("--versions-json", help="a python-versions.json record instead of asking a nixpkgs")
    parser.add_argument("--nix-dir", default="nix", help="the package set (default: nix)")
    parser.add_argument("--python", help="X.Y to evaluate markers for (default: that nixpkgs' python3)")
    parser.add_argument(
        "--from-sdists", action="store_true",
        help="read PKG-INFO of the release sdists instead of building the wheels (bootstrap scope)",
    )
    args = parser.parse_args(argv)
    nix_config = os.environ.get("NIX_CONFIG", DEFAULT_NIX_CONFIG)
    try:
        if args.versions_json:
            python3, versions = versions_from_record(json.loads(Path(args.versions_json).read_text()))
            where = args.versions_json
        else:
            facts = package_set_facts(args.nix_dir, nix_config)
            attrs = {attr for pkg in facts.values() for attr in pkg["dependencies"]}
            python3, found = ask_nixpkgs(attrs, args.nixpkgs, nix_config)
            versions = {attr: version for attr, version in found.items() if version is not None}
            where = args.nixpkgs or "<nixpkgs>"
        python3 = args.python or python3
        result = check_package_set(args.nix_dir, versions, python3, args.from_sdists, nix_config)
    except (NixCommandError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Requires-Dist of {args.nix_dir} against {where} (python3 {python3}):")
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
