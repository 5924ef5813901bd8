"""Errors raised by dagster-nix-builder, each carrying what a user needs to act on it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence


class NixBuilderError(Exception):
    """Base class of every error raised by this package."""


class NixNotFoundError(NixBuilderError):
    """The configured Nix executable is not on PATH (or not executable)."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        super().__init__(
            f"Nix executable {executable!r} was not found on PATH. Install Nix (on Debian: "
            "`apt-get install nix-bin`; elsewhere see https://nixos.org/download) or set the "
            "`executable` attribute of the component in defs.yaml (or of NixResource) to the full path of `nix`."
        )


class NixVersionError(NixBuilderError):
    """The Nix found is older than the oldest supported, or its version cannot be read."""

    def __init__(self, executable: str, found: str, minimum: tuple[int, ...]) -> None:
        self.executable = executable
        self.found = found
        self.minimum = ".".join(map(str, minimum))
        super().__init__(
            f"{executable} is {found!r}, but dagster-nix-builder needs Nix {self.minimum} or newer. Install a "
            "newer Nix (Debian 12 and later: `apt-get install nix-bin`; elsewhere see https://nixos.org/download) "
            "or point the `executable` attribute in defs.yaml (or of NixResource) at a newer `nix`."
        )


class NixCommandError(NixBuilderError):
    """A Nix command exited non-zero; carries the command, exit code and Nix's own error messages."""

    def __init__(
        self, command: Sequence[str], returncode: int | None, messages: Sequence[str], summary: str = ""
    ) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.messages = list(messages)
        head = summary or f"Nix command failed with exit code {returncode}"
        body = "\n".join(self.messages) if self.messages else "(Nix printed no error message)"
        super().__init__(f"{head}\ncommand: {shlex.join(self.command)}\n{body}")


class NixEvalError(NixCommandError):
    """Evaluating a Nix expression failed, e.g. a syntax error; names the file and line when Nix does."""

    def __init__(
        self,
        command: Sequence[str],
        returncode: int | None,
        messages: Sequence[str],
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        where = f" at {file}:{line}" + (f":{column}" if column else "") if file and line else ""
        super().__init__(command, returncode, messages, summary=f"Nix evaluation failed{where}")


class NixDependencyCycleError(NixBuilderError):
    """The formal arguments of the package expressions form a cycle."""

    def __init__(self, cycle: Sequence[str], files: Mapping[str, str] | None = None) -> None:
        self.cycle = list(cycle)
        where = ""
        if files:
            where = "\n" + "\n".join(f"  {a}: {files[a]}" for a in self.cycle[:-1] if a in files)
        super().__init__(
            "Dependency cycle between Nix packages: " + " -> ".join(self.cycle) + where
        )


class NixPackageSetError(NixBuilderError):
    """The package-set directory breaks the contract (missing default.nix, unknown attribute, ...)."""


class NixBuildError(NixCommandError):
    """`nix build` failed for some packages; ``failures`` maps each attribute to the reason."""

    def __init__(
        self,
        command: Sequence[str],
        returncode: int | None,
        messages: Sequence[str],
        failures: Mapping[str, str],
    ) -> None:
        self.failures = dict(failures)
        listing = "\n".join(f"- {attr}: {why}" for attr, why in self.failures.items())
        super().__init__(
            command,
            returncode,
            messages,
            summary=f"{len(self.failures)} package(s) failed or blocked: {', '.join(self.failures)}\n{listing}",
        )


class NixConfigError(NixBuilderError):
    """The component's attributes in ``defs.yaml`` are wrong; the message names the file, the line and the key."""


_MISSING_NAME = re.compile(r"(?:undefined variable '([^']+)'|attribute '([^']+)' missing)")


def missing_name_hint(messages: Sequence[str]) -> str:
    """What to do when an expression names something its scope lacks: most often a Python dependency the
    bootstrap scope's wheel lock does not hold yet (its python3Packages are exactly the locked wheels)."""
    for message in messages:
        match = _MISSING_NAME.search(message)
        if match:
            name = match.group(1) or match.group(2)
            return (
                f"If '{name}' is a Python dependency: the bootstrap scope's python3Packages are the wheels "
                "nix/bootstrap/wheels.json locks; regenerate the lock from the package set with "
                "`/usr/bin/python3 nix/bootstrap/lock.py` (it locks every package's requirements from the index). "
                f"If '{name}' is a package of the set: its file is nix/packages/{name}.nix."
            )
    return ""
