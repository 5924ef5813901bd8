"""The lock step: the third-party wheels the bootstrap scope pins (`nix/bootstrap/wheels.json`) must be what
the new source requires.

Release mode regenerates the lock for the new release (`nix/bootstrap/lock.py --dagster-version`). Git mode
compares the source's own requirements (`[project].dependencies` of the packages the set declares) with the lock of
this machine's interpreter, and when they drift resolves the lock again from those requirements
(`lock.py --requirements`); what still drifts fails the step, listed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dagster_nix_builder.nix import processes
from dagster_nix_builder.upstream.update.journal import FileJournal
from dagster_nix_builder.upstream.update.model import Log, UpdateError, UpdateSettings, UpdateStep
from dagster_nix_builder.upstream.update.nix import finish

WHEELS_LOCK_RELATIVE_PATH = Path("nix") / "bootstrap" / "wheels.json"
LOCK_SCRIPT_RELATIVE_PATH = Path("nix") / "bootstrap" / "lock.py"
SourceLayout = Mapping[str, str]
"""distribution -> its directory in Dagster's monorepo, as the package set declares them
(`dagster-src.package` in each package file; read by `update_declarations.read_declarations`)."""


def _dependencies(tree: Path, directory: str) -> list[str]:
    pyproject = tree / directory / "pyproject.toml"
    if not pyproject.is_file():
        return []
    return list(tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", []))


def source_requirements(tree: Path, layout: SourceLayout) -> list[str]:
    """`[project].dependencies` of the set's packages' `pyproject.toml` in `tree`, without the set's own."""
    specs = [
        spec
        for directory in layout.values()
        for spec in _dependencies(tree, directory)
        if canonicalize_name(Requirement(spec).name) not in layout
    ]
    return list(dict.fromkeys(specs))


def lock_drift(
    tree: Path, lock: Mapping[str, Any], python: str, machine: str, layout: SourceLayout
) -> tuple[str, list[str]]:
    """What the source requires that the wheel lock does not provide, for the lock of `python` on `machine`.

    Reads `[project].dependencies` of the set's packages' `pyproject.toml` in `tree` (markers evaluated for
    that target), leaves out the set's own distributions, and compares names and versions with the lock.

    Returns:
        The target's key, and one line per requirement the lock does not satisfy (empty: no drift).
    """
    key = f"{python}-{machine}-linux"
    wheels = (lock.get("targets", {}).get(key) or {}).get("wheels")
    if wheels is None:
        return key, []  # no lock for this interpreter: the package set itself says so, naming the fix
    environment = {
        "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
        "os_name": "posix", "platform_machine": machine, "extra": "",
    }  # fmt: skip
    drift = []
    for directory in layout.values():
        for spec in _dependencies(tree, directory):
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            name = canonicalize_name(req.name)
            if name in layout:
                continue
            locked = wheels.get(name)
            if locked is None:
                drift.append(f"{directory}: {spec} (not in the lock)")
            elif req.specifier and not req.specifier.contains(locked["version"], prereleases=True):
                drift.append(f"{directory}: {spec} (the lock has {locked['version']})")
    return key, drift


class WheelLock:
    """The wheel lock of a checkout and the script that regenerates it; edits go through `journal`."""

    def __init__(self, settings: UpdateSettings, repo_dir: Path, journal: FileJournal, log: Log) -> None:
        self.settings = settings
        self.repo_dir = repo_dir
        self.journal = journal
        self.log = log
        self.script = repo_dir / LOCK_SCRIPT_RELATIVE_PATH
        self.path = repo_dir / WHEELS_LOCK_RELATIVE_PATH

    @property
    def editable(self) -> bool:
        """Whether the update may rewrite the lock (there is one, and its script)."""
        return self.script.exists() and self.path.is_file()

    def regenerate(self, version: str, requirements: Path | None = None) -> None:
        """Run lock.py for Dagster `version` (resolving `requirements` instead of the release's, if given)."""
        cmd = [
            self.settings.lock_python, str(self.script),
            "--dagster-version", version, "--output", str(self.path),
            *(["--requirements", str(requirements)] if requirements else []),
            *(arg for target in self.settings.lock_targets for arg in ("--target", target)),
        ]  # fmt: skip
        self.journal.remember(self.path, external=True)
        self.log(f"$ {shlex.join(cmd)}")
        proc = finish(
            processes.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.repo_dir,
                            start_new_session=True),
            timeout=self.settings.timeout_seconds,
        )  # fmt: skip
        if proc.returncode != 0:
            raise UpdateError(
                UpdateStep.LOCK,
                f"{self.journal.rel(self.script)} failed with exit code {proc.returncode}",
                proc.stderr.strip().splitlines()[-20:],
            )

    def _python(self) -> str:
        python = self.settings.nix_args.get("hostPythonVersion")
        if python:
            return python
        proc = processes.run(
            [self.settings.lock_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return proc.stdout.strip()

    def check(self, tree: Path, rev: str, version: str, layout: SourceLayout) -> None:
        """Git mode: the source's own requirements must be what the lock provides; when they drift, the
        lock is resolved again from those requirements (`lock.py --requirements`)."""
        if not self.path.is_file():
            return
        python, machine = self._python(), os.uname().machine
        key, drift = lock_drift(tree, json.loads(self.path.read_text()), python, machine, layout)
        relocked = False
        lock_name, script_name = self.journal.rel(self.path), self.journal.rel(self.script)
        if drift and self.script.exists():
            self.log(f"the source at {rev} drifted from {lock_name} ({key}): " + "; ".join(drift))
            requirements = Path(self.journal.path).parent / "dagster-nix-builder-requirements.txt"
            requirements.write_text("".join(f"{spec}\n" for spec in source_requirements(tree, layout)))
            try:
                self.regenerate(version, requirements=requirements)
            finally:
                requirements.unlink(missing_ok=True)
            relocked = True
            key, drift = lock_drift(tree, json.loads(self.path.read_text()), python, machine, layout)
        if drift:
            raise UpdateError(
                UpdateStep.LOCK,
                f"the source at {rev} requires what {lock_name} does not lock for {key}"
                + (f", even after {script_name} resolved the source's own requirements" if relocked else ""),
                drift,
            )
        self.log(f"{'regenerated' if relocked else 'checked'} {lock_name}: the source's requirements are all "
                 f"locked ({key})")  # fmt: skip


__all__ = ["LOCK_SCRIPT_RELATIVE_PATH", "WHEELS_LOCK_RELATIVE_PATH", "SourceLayout", "WheelLock",
           "lock_drift", "source_requirements"]  # fmt: skip
