"""Where a package set comes from, and how Nix is told: a callPackage directory (``default.nix`` plus
``packages/<attr>.nix``, this project's ``nix/``), a Nix file with an attribute path and the arguments its user
wrote (nixpkgs' ``python3Packages`` narrowed by ``select``), or a flake (``packages.<system>`` by default, its
``checks.<system>`` as checks). ``select`` and ``exclude`` globs narrow any of them.

The one place that turns an attribute of the set into what ``nix build`` takes, so the build, the graph and
every error name the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dagster_nix_builder.nix.errors import NixPackageSetError

Kind = Literal["directory", "file", "flake"]
KINDS: tuple[Kind, ...] = ("directory", "file", "flake")

# One element of an attribute path as our commands write it: Nix identifiers and names such as
# `dagster-webserver`, `python3.12` or `foo'`. Anything else (quotes, `$`, blanks) is refused up front: it
# would need quoting that differs between `--file` attribute paths and flake fragments.
ATTR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_'.+-]*")
# A glob of `select`/`exclude`: a name pattern with * and ? (and [...] classes).
GLOB = re.compile(r"[A-Za-z0-9_'.+\-*?\[\]!]+")


def check_attr_name(name: str, what: str) -> str:
    """``name`` if it can be one element of an attribute path; else :class:`NixPackageSetError` naming ``what``."""
    if not ATTR_NAME.fullmatch(name):
        raise NixPackageSetError(
            f"{what}: {name!r} cannot be an attribute name here: it must be letters, digits and _ ' . + - "
            "(not starting with ' . + or -)."
        )
    return name


def parse_attribute(path: str | Sequence[str], what: str) -> tuple[str, ...]:
    """An attribute path (``"python3Packages"``, ``"packages.x86_64-linux"`` or its elements) as a tuple.
    A dot separates elements; an element with a dot (``python3.12``) must be given as a list."""
    parts = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
    if isinstance(path, str) and path == "":
        return ()
    for part in parts:
        check_attr_name(part, what)
    return parts


def glob_regex(glob: str, what: str) -> str:
    """A ``select``/``exclude`` glob as the POSIX extended regular expression ``builtins.match`` takes."""
    if not GLOB.fullmatch(glob):
        raise NixPackageSetError(
            f"{what}: {glob!r} is not a glob of attribute names (letters, digits, _ ' . + -, * ? [...])."
        )
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = glob.find("]", i + 1)
            if end < 0:
                raise NixPackageSetError(f"{what}: {glob!r} has a '[' without its ']'.")
            body = glob[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c) if c in ".+" else c)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class PackageSource:
    """A package set's origin: ``kind``, ``location`` (a directory, a file, or a flake reference or
    directory), the ``attribute`` path of the set inside it (a file's or flake's; empty: the top level, or for a
    flake ``packages.<system>``), and the ``select``/``exclude`` globs of attribute names."""

    kind: Kind = "directory"
    location: str = "nix"
    attribute: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    system: str | None = None
    """The flake's system (``packages.<system>``, ``checks.<system>``); None: Nix's current system."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise NixPackageSetError(f"A package set is one of {', '.join(KINDS)}, not {self.kind!r}.")
        object.__setattr__(self, "attribute", parse_attribute(self.attribute, f"the attribute of {self.location}"))
        for glob in (*self.select, *self.exclude):
            glob_regex(glob, f"select/exclude of {self.location}")
        if self.system is not None:
            check_attr_name(self.system, f"the system of {self.location}")

    @property
    def is_local(self) -> bool:
        """Whether the location is a path on this machine (every kind but a flake reference such as ``github:...``)."""
        return (
            self.kind != "flake"
            or not re.match(r"[a-z][a-z0-9+]*:", self.location)
            or self.location.startswith("path:")
        )

    @property
    def path(self) -> Path | None:
        """The location as an absolute path, when it is one (a flake's directory too)."""
        if not self.is_local:
            return None
        return Path(self.location.removeprefix("path:")).resolve()

    @property
    def flake_ref(self) -> str:
        """The flake reference Nix is given: a local directory as ``path:<dir>`` (so an untracked file of a git
        checkout is seen as it is; Nix never writes a lock file for us, see :meth:`NixCli`)."""
        return f"path:{self.path}" if self.path is not None else self.location

    @property
    def directory(self) -> Path | None:
        """The folder whose files the evaluation reads (the set's directory, a file's folder, a flake's)."""
        path = self.path
        if path is None:
            return None
        return path.parent if self.kind == "file" else path

    def set_path(self, system: str) -> tuple[str, ...]:
        """The attribute path of the packages inside the file or flake."""
        if self.kind == "flake" and not self.attribute:
            return ("packages", self.system or system)
        return self.attribute

    def checks_path(self, system: str) -> tuple[str, ...] | None:
        """A flake's ``checks.<system>`` (None for other kinds)."""
        return ("checks", self.system or system) if self.kind == "flake" else None

    def regexes(self) -> dict[str, list[str]]:
        return {
            "select": [glob_regex(g, "select") for g in self.select],
            "exclude": [glob_regex(g, "exclude") for g in self.exclude],
        }


def attr_path_text(path: Sequence[str]) -> str:
    """An attribute path as Nix's command line takes it: elements joined by dots, one with a dot quoted."""
    return ".".join(f'"{part}"' if "." in part else part for part in path)


def source_from_settings(
    kind: str, location: str, attribute: str | Sequence[str] | None = None,
    select: Sequence[str] | None = None, exclude: Sequence[str] | None = None, system: str | None = None,
) -> PackageSource:  # fmt: skip
    """A :class:`PackageSource` from configuration values (any may be None)."""
    return PackageSource(
        kind=kind,  # type: ignore[arg-type]
        location=location,
        attribute=tuple(attribute.split(".")) if isinstance(attribute, str) and attribute else tuple(attribute or ()),
        select=tuple(select or ()),
        exclude=tuple(exclude or ()),
        system=system,
    )


def args_for(source: PackageSource, args: Mapping[str, str]) -> dict[str, str]:
    """The arguments a source's function gets: all of them (graph.nix intersects them with a directory's
    function's arguments; a file gets exactly what its user wrote; a flake takes none)."""
    if source.kind == "flake" and args:
        raise NixPackageSetError(
            f"The flake {source.location} takes no arguments, but these were given: {', '.join(sorted(args))}. "
            "Remove them (a flake's outputs are fixed by its inputs)."
        )
    return dict(args)


__all__ = [
    "KINDS", "Kind", "PackageSource", "args_for", "attr_path_text", "check_attr_name", "glob_regex",
    "parse_attribute", "source_from_settings",
]  # fmt: skip
