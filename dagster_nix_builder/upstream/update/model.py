"""What an update is told and what it tells: its steps, settings, result and errors (no Nix, no git)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from dagster_nix_builder.nix.errors import NixBuilderError
from dagster_nix_builder.nix.settings import DEFAULT_NIX_CONFIG


class UpdateStep(StrEnum):
    """The steps of an update, in order."""

    PREFLIGHT = "preflight"
    RESOLVE = "resolve"
    LOCK = "lock"
    HASH = "hash"
    VERSION = "version"
    WRITE = "write"
    BUILD = "build"
    CHECK = "check"
    COMMIT = "commit"


@dataclass(frozen=True)
class FailedTarget:
    """One package or test whose own derivation failed (not a dependency's failure it suffers).

    Attributes:
        attr: The package.
        test: The test (`passthru.tests.<name>`, an asset check), or None for the package's own build.
        drv_path: Its derivation: what Nix would build again.
        reason: Why, as the build says it.
        log_tail: The end of its builder's log.
    """

    attr: str
    test: str | None
    drv_path: str
    reason: str
    log_tail: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """`dagster-lib` or `dagster-lib.tests.imports`."""
        return self.attr if self.test is None else f"{self.attr}.tests.{self.test}"

    def to_dict(self) -> dict[str, object]:
        return {"attr": self.attr, "test": self.test, "drv_path": self.drv_path, "reason": self.reason,
                "log_tail": list(self.log_tail)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailedTarget:
        test = data.get("test")
        return cls(str(data["attr"]), None if test is None else str(test), str(data["drv_path"]),
                   str(data["reason"]), tuple(str(line) for line in data.get("log_tail") or ()))  # fmt: skip


class UpdateError(NixBuilderError):
    """An update failed; the files it had written are restored.

    Attributes:
        step: The step that failed.
        reason: Why, in one paragraph.
        messages: Nix's (or git's, or a check's) own error messages, and failed builders' log tails.
        restored: Repository-relative paths that were restored byte for byte.
        failures: At the build and check steps: the packages and tests whose own derivation failed.
        mode, old, new: What the update was moving (`git`, the pinned rev, the rev it tried), once resolved.
        notes: Paragraphs added after the fact (the first bad commit a bisect found), printed last.
    """

    def __init__(
        self, step: UpdateStep, reason: str, messages: Sequence[str] = (), failures: Sequence[FailedTarget] = ()
    ) -> None:
        self.step = step
        self.reason = reason
        self.messages = list(messages)
        self.failures = list(failures)
        self.restored: list[str] = []
        self.mode: str | None = None
        self.old: str | None = None
        self.new: str | None = None
        self.notes: list[str] = []
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"update failed at step '{self.step.value}': {self.reason}"
        if self.messages:
            text += "\n" + "\n".join(self.messages)
        if self.restored:
            text += f"\nrestored byte for byte: {', '.join(self.restored)}"
        for note in self.notes:
            text += f"\n{note}"
        return text

    def __str__(self) -> str:
        return self._text()


class DirtyFilesError(UpdateError):
    """The files the update would edit have uncommitted changes; nothing was touched."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)
        super().__init__(
            UpdateStep.PREFLIGHT,
            f"refusing to update: uncommitted changes in {', '.join(self.files)}; "
            "commit or discard them first",
        )


DAGSTER_SOURCE_ATTR = "dagster-src"
"""The attribute of a package set that is its Dagster source: what the update moves."""


@dataclass(frozen=True)
class UpdateSettings:
    """Where the repository and the package set are, and how to drive Nix.

    Attributes:
        repo_dir: The git checkout holding `nix/`.
        nix_dir: The package set directory, relative to `repo_dir`.
        nix_args: `--argstr` arguments of the package set (`scope` among them; besides `source`, which the
            update sets).
        nix_executable: The `nix` command; `nix-instantiate` and `nix-store` are looked up next to it.
        nix_config: Put in `NIX_CONFIG` of every Nix call (with the bootstrap scope's sandbox paths).
        source_attr: The attribute of the source.
        lock_python: Interpreter running `nix/bootstrap/lock.py`.
        lock_targets: The `<python>-<system>` locks to regenerate (default: every target lock.py knows);
            the others are dropped from the lock, since they would pin the old Dagster.
        pip_args: Extra pip arguments for the release lookup (e.g. `--no-index --find-links DIR`).
        run_version_checks: Run every `bin/*` of a rebuilt package with `--version` when the package has no
            `passthru.tests` (which are otherwise its checks).
        checks: Further checks, called with the rebuilt attributes and their out paths; raise to fail.
        timeout_seconds: Limit of each Nix/lock command.
        author: `Name <email>` of the commit when git has no identity configured.
    """

    repo_dir: Path
    nix_dir: str = "nix"
    nix_args: Mapping[str, str] = field(default_factory=lambda: {"scope": "bootstrap"})
    nix_executable: str = "nix"
    nix_config: str = DEFAULT_NIX_CONFIG
    source_attr: str = DAGSTER_SOURCE_ATTR
    lock_python: str = "/usr/bin/python3"
    lock_targets: Sequence[str] = ()
    pip_args: Sequence[str] = ()
    run_version_checks: bool = True
    checks: Sequence[Callable[[Mapping[str, Sequence[str]]], None]] = ()
    timeout_seconds: float = 3600
    author: str = "dagster-nix-builder <dagster-nix-builder@localhost>"

    @property
    def pins_path(self) -> Path:
        return Path(self.repo_dir) / self.nix_dir / "pins.json"


@dataclass(frozen=True)
class UpdateResult:
    """What an update did.

    Attributes:
        mode: `git` or `release`.
        old: The previous rev/version (`none` when there was none).
        new: The new rev/version.
        commit: The commit made, or None when the pins already matched (nothing to do).
        changed_files: Repository-relative paths the commit contains.
        hashes: The hashes written (`dagster-src` in git mode, one per sdist in release mode).
        built: Attribute -> out paths of what was rebuilt (the source and everything downstream).
        checks: One line per check that passed.
        version: The version pinned (`git.version`, read from the source, or the release).
    """

    mode: str
    old: str
    new: str
    commit: str | None
    changed_files: tuple[str, ...] = ()
    hashes: Mapping[str, str] = field(default_factory=dict)
    built: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    checks: tuple[str, ...] = ()
    version: str | None = None


Log = Callable[[str], None]
"""Where an update's progress messages go (a Dagster `context.log.info` for instance)."""


__all__ = ["DirtyFilesError", "FailedTarget", "Log", "UpdateError", "UpdateResult", "UpdateSettings", "UpdateStep"]
