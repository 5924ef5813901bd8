"""Flox behind the build protocol: ``flox build`` on the same package expressions as the Nix backend.

Flox builds "Nix expression builds" from ``<project>/.flox/pkgs/<name>.nix``: each file is called with
nixpkgs' ``callPackage``, in a scope of nixpkgs extended with the other packages of ``.flox/pkgs``, and
``flox build <name>...`` leaves an out-link ``result-<name>`` next to ``.flox``. Our ``nix/packages/*.nix``
are written in exactly that convention, so this module prepares such a project from a package-set directory
(:func:`prepare_layout`), builds the command lines from validated package names, and runs ``flox build`` as
:class:`FloxBuild`, with the protocol of :class:`~dagster_nix_builder.nix.build.NixBuild` (``start``,
``outcomes``, ``wait``, ``terminate``). No Dagster import: :mod:`dagster_nix_builder.flox.resource` is the resource.

Flox prints no structured log, so packages are reported when ``flox build`` exits rather than as each
finishes, and ``built_now`` is judged by whether the out-link changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.cli import NixCli, describe
from dagster_nix_builder.nix.errors import NixBuilderError, NixPackageSetError
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph
from dagster_nix_builder.nix.outcomes import PackageOutcome

FLOX_NOT_INSTALLED = "flox CLI not installed"
LOG_TAIL_LINES = 40

# A package name Flox derives from `.flox/pkgs/<name>.nix` and that is a plain Nix identifier, so it is
# also a callPackage argument name. Nothing that could be read as an option, a path, a flake reference
# (`.#x`, `nixpkgs#x`) or a nested attribute path (`a.b`, which our flat package sets never use).
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*\Z")


class FloxNotFoundError(NixBuilderError):
    """The ``flox`` executable is not on PATH."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        super().__init__(
            f"{FLOX_NOT_INSTALLED}: {executable!r} was not found on PATH. Install Flox "
            "(https://flox.dev/docs/install-flox/) or set the `flox_executable` field of FloxResource "
            "to the full path of `flox`; the Nix backend (NixResource) needs no Flox."
        )


class FloxPackageError(NixBuilderError, ValueError):
    """A package name that Flox cannot build from ``.flox/pkgs`` (malformed or unknown)."""


def validate_package_names(names: Iterable[str], known: Collection[str] | None = None) -> list[str]:
    """Check package names before they go on a ``flox build`` command line.

    Args:
        names: the requested packages, e.g. ``["dagster", "dagster-webserver"]``.
        known: the packages of the set; when given, unknown names are refused too.

    Returns:
        The names, duplicates removed, in their first order.

    Raises:
        FloxPackageError: a name is not a plain Nix identifier (e.g. ``-h``, ``a b``, ``../x``,
            ``.#x``, ``x.nix``) or is not in ``known``.
    """
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _PACKAGE_NAME.match(name):
            raise FloxPackageError(
                f"{name!r} is not a Flox package name: use the file name of a `.flox/pkgs/<name>.nix` "
                "(letters, digits, `_`, `'` and `-`, not starting with a digit or `-`)."
            )
        if known is not None and name not in known:
            raise FloxPackageError(f"Unknown package {name!r}; known: {', '.join(sorted(known))}")
        if name not in out:
            out.append(name)
    if not out:
        raise FloxPackageError("No package to build: name at least one.")
    return out


def flox_build_command(flox: str, project_dir: str | os.PathLike[str], packages: Sequence[str]) -> list[str]:
    """``flox build -d <project_dir> <package>...`` for validated ``packages``."""
    return [str(flox), "build", "-d", str(project_dir), *validate_package_names(packages)]


def flox_init_command(flox: str, project_dir: str | os.PathLike[str], name: str = "dagster-nix-builder") -> list[str]:
    """``flox init -d <project_dir> -n <name>``: the Flox environment that holds the builds."""
    return [str(flox), "init", "-d", str(project_dir), "-n", name]


@dataclass(frozen=True)
class FloxLayout:
    """A project directory laid out for Flox's Nix expression builds."""

    project_dir: Path
    packages: tuple[str, ...]

    @property
    def flox_dir(self) -> Path:
        return self.project_dir / ".flox"

    @property
    def pkgs_dir(self) -> Path:
        return self.flox_dir / "pkgs"

    def result_link(self, package: str, output: str = "out") -> Path:
        """Where ``flox build`` leaves the out-link of ``package`` (``result-<package>[-<output>]``)."""
        return self.project_dir / (f"result-{package}" if output == "out" else f"result-{package}-{output}")


def _git(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        raise NixBuilderError("git is needed for Flox builds (Flox builds only git-tracked files).")
    return processes.run([git, "-C", str(project_dir), *args], capture_output=True, text=True, check=True)


def prepare_layout(nix_dir: str | os.PathLike[str], project_dir: str | os.PathLike[str]) -> FloxLayout:
    """Lay out ``project_dir`` so that Flox builds the packages of the package set ``nix_dir``.

    Copies ``<nix_dir>/packages/*.nix`` to ``<project_dir>/.flox/pkgs/`` (files, not links: Flox copies
    the git tree) and the set's other top-level files except ``default.nix`` to ``.flox/``, removes
    expressions of packages that left the set, and makes sure all of it is tracked by git
    (``git init`` when ``project_dir`` has no repository of its own). Idempotent.

    Raises:
        NixPackageSetError: ``nix_dir`` has no ``packages/*.nix``.
        FloxPackageError: a file name is not a package name Flox can build.
    """
    source = Path(nix_dir).resolve()
    project = Path(project_dir).resolve()
    files = sorted(p for p in (source / "packages").glob("*.nix") if p.is_file())
    if not files:
        raise NixPackageSetError(f"No packages/*.nix in Nix package-set directory {str(source)!r}.")
    names = validate_package_names(p.stem for p in files)
    layout = FloxLayout(project, tuple(names))
    layout.pkgs_dir.mkdir(parents=True, exist_ok=True)
    for stale in layout.pkgs_dir.glob("*.nix"):
        if stale.stem not in names:
            stale.unlink()
    for file in files:
        shutil.copyfile(file, layout.pkgs_dir / file.name)
    for data in source.iterdir():
        if data.is_file() and data.name != "default.nix":
            shutil.copyfile(data, layout.flox_dir / data.name)
    if not (project / ".git").exists():
        _git(project, "init", "--quiet")
    _git(project, "add", "--all", "--", ".flox")
    return layout


class FloxBuild:
    """A running ``flox build``: its log goes to the compute log, its outcomes come when it exits. The same
    protocol as :class:`~dagster_nix_builder.nix.build.NixBuild` (``start``, ``outcomes``, ``wait``,
    ``terminate``), so :func:`~dagster_nix_builder.adapters.results.stream` reports it the same way."""

    def __init__(
        self,
        cli: NixCli,
        graph: NixPackageGraph,
        attrs: Sequence[str],
        layout: FloxLayout,
        flox: str,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        missing = [a for a in attrs if a not in layout.packages]
        if missing:
            raise NixPackageSetError(
                f"Package(s) {', '.join(map(repr, missing))} have no packages/<attr>.nix to give Flox"
            )
        self.cli = cli
        self.graph = graph
        self.layout = layout
        self.attrs = graph.topological_order(validate_package_names(attrs, known=graph.packages))
        self.command = flox_build_command(flox, layout.project_dir, self.attrs)
        self.returncode: int | None = None
        self.log_tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.process: subprocess.Popen[bytes] | None = None
        self._log = log or (lambda message: print(message, flush=True))
        self._before: dict[Path, str | None] = {}
        self._started = 0.0

    def _links(self, attr: str) -> dict[str, Path]:
        outputs = self.graph[attr].outputs or {"out": ""}
        return {output: self.layout.result_link(attr, output) for output in outputs}

    def start(self) -> FloxBuild:
        """Start ``flox build``; returns self."""
        for attr in self.attrs:
            for link in self._links(attr).values():
                self._before[link] = os.readlink(link) if link.is_symlink() else None
        self._log(f"Running: {describe(self.command)}")
        self._started = time.monotonic()
        self.process = processes.popen(
            self.command,
            cwd=self.layout.project_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.cli.subprocess_env(),
            start_new_session=True,  # own process group, so a cancel reaches flox and its nix
        )
        return self

    def terminate(self) -> None:
        """Stop Flox: SIGTERM to its process group, wait, then SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.returncode = processes.stop_group(self.process)

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            for raw in iter(self.process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self.log_tail.append(line)
                print(f"[flox] {line}", flush=True)  # the compute log, like the Nix backend's build output
            self.returncode = self.process.wait()
        finally:
            self.terminate()  # interrupted (run cancelled, generator closed): never leave flox behind

    def _package_from_links(self, attr: str) -> NixPackage | None:
        """The package as Flox built it: outputs read from the out-links, derivation from the store."""
        package = self.graph[attr]
        links = self._links(attr)
        out = links["out"] if "out" in links else next(iter(links.values()))
        if not out.is_symlink() or not os.path.exists(out):
            return None
        out_path = os.path.realpath(out)
        deriver = self.cli.run(self.cli.store_command("--query", "--deriver", out_path)).stdout.strip()
        outputs = {"out": out_path} if "out" in links else {next(iter(links)): out_path}
        drv_path = deriver if deriver.endswith(".drv") and os.path.exists(deriver) else None
        if drv_path:
            shown = self.cli.show_derivations([drv_path])
            derivation = shown.get(drv_path) or next(iter(shown.values()))
            outputs = dict(derivation.outputs)
            if out_path not in outputs.values():  # not what the link says: trust the link
                outputs = {"out": out_path}
        return replace(package, outputs=outputs, drv_path=drv_path or package.drv_path)

    def outcomes(self) -> Iterator[PackageOutcome]:
        """Per-package outcomes, in dependency order, once ``flox build`` has exited."""
        if self.process is None:
            self.start()
        self._read_log()
        seconds = round(time.monotonic() - self._started, 3)
        for attr in self.attrs:
            built = self._package_from_links(attr)
            if built is None:
                reason = f"flox build exited with {self.returncode} and left no {self.layout.result_link(attr)}"
                yield PackageOutcome(attr, self.graph[attr], "failed", reason=reason, log_tail=tuple(self.log_tail))
                continue
            out_link = self._links(attr).get("out") or next(iter(self._links(attr).values()))
            changed = self._before.get(out_link) != os.readlink(out_link)
            yield PackageOutcome(
                attr, built, "built" if changed else "valid", built_now=changed,
                build_seconds=seconds if changed else 0.0,
            )  # fmt: skip

    def wait(self) -> list[PackageOutcome]:
        """Consume the build to the end; return all outcomes (no exception for failures)."""
        return list(self.outcomes())


__all__ = [
    "FLOX_NOT_INSTALLED",
    "FloxBuild",
    "FloxLayout",
    "FloxNotFoundError",
    "FloxPackageError",
    "flox_build_command",
    "flox_init_command",
    "prepare_layout",
    "validate_package_names",
]
