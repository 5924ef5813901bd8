"""What a build of packages and their tests yields: one settled outcome per target, and the protocol every
backend's build follows (:class:`~dagster_nix_builder.nix.build.NixBuild`, ``flox.build.FloxBuild``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from dagster_nix_builder.nix.graph import NixPackage, NixTest

Status = Literal["built", "valid", "failed"]
Tail = Sequence[str]
Note = str | None


class _Settled:
    status: Status

    @property
    def ok(self) -> bool:
        """Whether the outputs are valid now (a package's: built; a test's: it passed)."""
        return self.status != "failed"


@dataclass(frozen=True)
class PackageOutcome(_Settled):
    """What happened to one selected package in this build."""

    attr: str
    package: NixPackage
    status: Status
    built_now: bool = False
    build_seconds: float = 0.0
    reason: str | None = None
    log_tail: tuple[str, ...] = ()
    where: str = "local"
    """Where it was built: ``local`` (this machine's Nix) for now; remote builders will name theirs."""


@dataclass(frozen=True)
class TestOutcome(_Settled):
    """What happened to one selected test (a derivation of ``<attr>.tests``) in this build: it passed if
    its output is valid (built now, or already by an earlier build of the same derivation)."""

    __test__ = False  # not a pytest class

    attr: str
    test: NixTest
    status: Status
    built_now: bool = False
    build_seconds: float = 0.0
    reason: str | None = None
    log_tail: tuple[str, ...] = ()
    note: str | None = None
    """Said of a passing test, e.g. that a rebuild gave another output (the test is not deterministic)."""
    where: str = "local"
    """Where it was built: ``local`` (this machine's Nix) for now; remote builders will name theirs."""


Outcome = PackageOutcome | TestOutcome


class Build(Protocol):
    """What every backend's build offers (:class:`NixBuild`, ``flox.build.FloxBuild``)."""

    command: list[str]

    def outcomes(self) -> Iterator[Outcome]: ...

    def wait(self) -> Sequence[Outcome]: ...

    def terminate(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """One installable of the build: a package (``test`` None) or one of its tests."""

    attr: str
    test: str | None = None

    @property
    def installable(self) -> str:
        """The attribute path ``nix build --file <dir>`` takes."""
        return self.attr if self.test is None else f"{self.attr}.tests.{self.test}"


__all__ = ["Build", "Outcome", "PackageOutcome", "Target", "TestOutcome"]
