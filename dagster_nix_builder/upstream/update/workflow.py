"""The update workflow: move `dagster-src` to a new rev or release without ever losing a user's edit.

Steps (each named in `UpdateStep`, and in the error when it fails), each in its own module:

1. preflight: one update per checkout; recover from a run that was killed half-way (`update_journal`);
   refuse when a file the update would edit has uncommitted changes, naming them (`update_commit`).
2. resolve: validate the target (40-hex rev, or a release of which every distribution the package set
   declares has an sdist of the version Nix derives for it, `update_declarations`); with no target, take
   the head of the followed branch (`git ls-remote`) or the newest complete release (`update_resolve`).
3. lock: in release mode regenerate `nix/bootstrap/wheels.json`; in git mode (after step 5) check that
   the source's own requirements are what it locks, relocking on drift (`update_lock`).
4. hash: build the source with the candidate pins passed to Nix as an argument (`--arg pins`) and a fake
   hash; Nix fails and prints the real one (`specified:`/`got:`). Nothing is written for this (`update_hash`).
5. version: in git mode build the source at its real hash and read the version from its own
   `python_modules/dagster/dagster/version.py` (`update_hash`).
6. write: write the final pins (rev, hash, version) once, atomically.
7. build: build the source, every package downstream of it in the package graph, and their
   `passthru.tests`, in one `nix build` (`update_build`).
8. check: every test of the rebuilt packages passed (else: the package, the test, its log tail);
   `--version` of every `bin/*` of rebuilt packages without tests; the settings' own checks.
9. commit: commit exactly the files that changed, message `dagster-src: OLD -> NEW` (`update_commit`).

On any failure (including an interrupt) every file written is restored byte for byte and
`UpdateError` says which step failed and why. Nix runs through `nix_cli.NixCli` (`update_nix`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_nix_builder.nix.settings import DEFAULT_NIX_CONFIG
from dagster_nix_builder.upstream.pins import (
    Pins,
    SourceMode,
    parse_pins,
    remove_stale_temp_files,
    render_pins,
    validate_git_argument,
)
from dagster_nix_builder.upstream.update.commit import changed_files, commit, open_repo, refuse_dirty
from dagster_nix_builder.upstream.update.declarations import Declarations, distributions, read_declarations
from dagster_nix_builder.upstream.update.hash import (
    VERSION_FILE,
    HashMismatch,
    discover_hashes,
    parse_hash_mismatches,
    read_version_file,
    sdist_package_name,
    source_version,
)
from dagster_nix_builder.upstream.update.journal import JOURNAL_NAME, LOCK_NAME, FileJournal, exclusive
from dagster_nix_builder.upstream.update.lock import (
    LOCK_SCRIPT_RELATIVE_PATH,
    WHEELS_LOCK_RELATIVE_PATH,
    SourceLayout,
    WheelLock,
    lock_drift,
    source_requirements,
)
from dagster_nix_builder.upstream.update.model import (
    DirtyFilesError,
    Log,
    UpdateError,
    UpdateResult,
    UpdateSettings,
    UpdateStep,
)
from dagster_nix_builder.upstream.update.nix import pins_nix_expression
from dagster_nix_builder.upstream.update.rebuild import check, rebuild
from dagster_nix_builder.upstream.update.resolve import resolve_release, resolve_rev

if TYPE_CHECKING:
    import git

logger = logging.getLogger(__name__)


class Updater:
    """Runs one update of the pins in a repository.

    Args:
        settings: Where and how.
        log: Progress messages go here (a Dagster `context.log.info` for instance).
    """

    def __init__(self, settings: UpdateSettings, log: Log | None = None) -> None:
        self.settings = settings
        self.log = log or logger.info
        self.repo_dir = Path(settings.repo_dir).resolve()
        self.step = UpdateStep.PREFLIGHT
        """The step running (or that failed)."""
        self.old: str | None = None
        """The pin before the update (`none` when there was none), once read."""
        self.target: str | None = None
        """The rev or version the update moves to, once resolved."""

    def update_git(
        self, rev: str | None = None, *, url: str | None = None, branch: str | None = None, switch: bool = False
    ) -> UpdateResult:
        """Pin the git source to `rev` (default: the head of the followed branch), rebuild, check, commit.

        Args:
            rev: The commit, 40 hex digits; None for the head of `branch` (`git ls-remote`).
            url: Write this repository URL into the pins (default: keep `git.url`).
            branch: Write this branch into the pins (default: keep `git.branch`).
            switch: Also select the git source (`"source": "git"`) if the pins select the release.
        """
        return self._update("git", rev, url=url, branch=branch, switch=switch)

    def update_release(self, version: str | None = None, *, switch: bool = False) -> UpdateResult:
        """Pin the release source to `version` (default: the newest complete release), rebuild, check, commit."""
        return self._update("release", version, switch=switch)

    def _update(self, mode: SourceMode, target: str | None, **options: Any) -> UpdateResult:
        repo = open_repo(self.repo_dir)
        with exclusive(Path(repo.git_dir)):
            journal = FileJournal(self.repo_dir, Path(repo.git_dir), self.log)
            self.step = UpdateStep.PREFLIGHT
            try:
                return self._run(repo, journal, mode, target, **options)
            except UpdateError as e:
                e.restored = journal.restore()
                e.mode, e.old, e.new = mode, self.old, self.target
                raise
            except Exception as e:  # whatever broke, the files are restored and the step is named
                err = UpdateError(self.step, f"{type(e).__name__}: {e}")
                err.restored = journal.restore()
                err.mode, err.old, err.new = mode, self.old, self.target
                raise err from e
            except BaseException:
                # Interrupted (run terminated, Ctrl-C): leave the files as they were, then let it propagate.
                journal.restore()
                raise

    def _run(
        self,
        repo: git.Repo,
        journal: FileJournal,
        mode: SourceMode,
        target: str | None,
        *,
        url: str | None = None,
        branch: str | None = None,
        switch: bool = False,
    ) -> UpdateResult:
        settings, log = self.settings, self.log
        lock = WheelLock(settings, self.repo_dir, journal, log)
        edited = [journal.rel(settings.pins_path)]
        # Release mode relocks for the new release; git mode relocks when the source drifted from the lock.
        if lock.editable:
            edited.append(journal.rel(lock.path))
        journal.recover_interrupted_run()
        refuse_dirty(repo, edited)
        for path in edited:
            for tmp in remove_stale_temp_files(self.repo_dir / path):
                log(f"removed {journal.rel(tmp)} left by a killed write")
        pins = self._read_pins(journal)
        switching = switch and pins.source != mode
        if switching:
            old = pins.current()
            log(f"switching the source from {pins.source} ({old}) to {mode}")
        else:
            old = (pins.git.rev or "none") if mode == "git" else pins.release.version
            if pins.source != mode:
                log(f"note: pins select source {pins.source!r}; updating the {mode} pin leaves that as is")
        self.old = old

        self.step = UpdateStep.RESOLVE
        candidate = replace(pins, source=mode) if switching else pins
        declarations: Declarations = {}
        if mode == "git":
            candidate = candidate.with_git(
                url=validate_git_argument(url, "git url") if url is not None else pins.git.url,
                branch=validate_git_argument(branch, "git branch") if branch is not None else pins.git.branch,
            )
            target = resolve_rev(target, candidate, log)
            self.target = target
            candidate = candidate.with_git(rev=target)
            if candidate == pins and pins.git.hash:
                log(f"dagster-src already pinned to {target}; nothing to do")
                return UpdateResult(mode, old, target, None, version=pins.git.version)
        else:
            release = resolve_release(target, settings, self.repo_dir, candidate, log)
            target, declarations = str(release.version), release.declarations
            if candidate.with_release(version=target) == pins and set(pins.release.hashes) == set(
                distributions(declarations)
            ):
                log(f"dagster-src already pinned to release {target}; nothing to do")
                return UpdateResult(mode, old, target, None, version=target)
            candidate = candidate.with_release(version=target)

        journal.begin()
        if mode == "release" and lock.script.exists():
            self.step = UpdateStep.LOCK
            lock.regenerate(target)

        self.step = UpdateStep.HASH
        hashes = discover_hashes(
            settings, self.repo_dir, mode, target, candidate, log, declarations if mode == "release" else None
        )
        if mode == "git":
            final = candidate.with_git(hash=hashes[settings.source_attr])
            self.step = UpdateStep.VERSION
            version, tree = source_version(settings, self.repo_dir, final, log)
            final = final.with_git(version=version)
            self.step = UpdateStep.LOCK
            (declared,) = read_declarations(settings, self.repo_dir, mode, [final], UpdateStep.LOCK)
            lock.check(tree, target, version, {d.distribution: d.path for d in declared.values() if d.problem is None})
        else:
            final = candidate.with_release(hashes=release_hashes(pins.release.hashes, hashes, log))

        self.step = UpdateStep.WRITE
        journal.write(settings.pins_path, render_pins(final))

        self.step = UpdateStep.BUILD
        rebuilt = rebuild(settings, self.repo_dir, mode, log)

        self.step = UpdateStep.CHECK
        checks = check(settings, rebuilt, log)

        self.step = UpdateStep.COMMIT
        changed = changed_files(repo, edited)
        message = f"dagster-src: {old} -> {target}"
        sha = commit(
            repo, changed, message, mode=mode, hashes=hashes, rebuilt=list(rebuilt.built), author=settings.author
        )
        journal.end()
        log(f"committed {sha[:12]} {message!r} ({', '.join(changed)})")
        return UpdateResult(
            mode, old, target, sha, tuple(changed), hashes, dict(rebuilt.built), tuple(checks),
            version=final.git.version if mode == "git" else target,
        )  # fmt: skip

    def _read_pins(self, journal: FileJournal) -> Pins:
        try:
            return parse_pins(self.settings.pins_path.read_bytes())
        except FileNotFoundError as e:
            raise UpdateError(UpdateStep.PREFLIGHT, f"no pin file at {journal.rel(self.settings.pins_path)}") from e


def release_hashes(old: Mapping[str, str], new: Mapping[str, str], log: Log) -> dict[str, str]:
    """The release's hashes after an update: exactly the distributions the package set declares (`new`);
    a hash of a distribution no package declares any more is dropped, and said so. The file's key order is
    kept (sorted when it was), so the commit's diff shows only what changed."""
    for dist in old:
        if dist not in new:
            log(f"dropped the hash of {dist}: no package declares it any more")
    order = [d for d in old if d in new] + [d for d in new if d not in old]
    if list(old) == sorted(old):
        order.sort()
    return {d: new[d] for d in order}


def update(
    settings: UpdateSettings,
    *,
    rev: str | None = None,
    version: str | None = None,
    source: str | None = None,
    url: str | None = None,
    branch: str | None = None,
    log: Log | None = None,
) -> UpdateResult:
    """Run one update.

    Args:
        settings: Where and how.
        rev: Git mode: the commit to pin.
        version: Release mode: the Dagster version to pin.
        source: `git` or `release`: update that source and select it in the pins (a fresh clone goes from
            the release, or from `rev: null`, to a pinned rev with `source="git"` alone). Without `rev` or
            `version`, git mode takes the head of the followed branch and release mode the newest
            complete release. Without `source`, `rev` means git and `version` release, and the pins'
            selected source is left as it is.
        url: Git mode: the repository to pin from (written into `git.url`).
        branch: Git mode: the branch to follow (written into `git.branch`).
        log: Progress messages go here.

    Raises:
        UpdateError: Naming the failed step; the files are then as they were before.
        ValueError: If the arguments contradict each other, or none says what to update.
    """
    if rev is not None and version is not None:
        raise ValueError("give rev (git mode) or version (release mode), not both")
    if source is not None and source not in ("git", "release"):
        raise ValueError(f"source must be 'git' or 'release', not {source!r}")
    mode: SourceMode
    if source == "git" or (source is None and rev is not None):
        mode = "git"
    elif source == "release" or (source is None and version is not None):
        mode = "release"
    else:
        raise ValueError("give source ('git' or 'release'), a rev (git mode) or a version (release mode)")
    if mode == "git" and version is not None:
        raise ValueError("source 'git' takes a rev, not a version")
    if mode == "release" and (rev is not None or url is not None or branch is not None):
        raise ValueError("source 'release' takes a version, not a rev, url or branch")
    updater = Updater(settings, log=log)
    if mode == "git":
        return updater.update_git(rev, url=url, branch=branch, switch=source is not None)
    return updater.update_release(version, switch=source is not None)


__all__ = [
    "DEFAULT_NIX_CONFIG",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "LOCK_SCRIPT_RELATIVE_PATH",
    "VERSION_FILE",
    "WHEELS_LOCK_RELATIVE_PATH",
    "DirtyFilesError",
    "HashMismatch",
    "SourceLayout",
    "UpdateError",
    "UpdateResult",
    "UpdateSettings",
    "UpdateStep",
    "Updater",
    "lock_drift",
    "parse_hash_mismatches",
    "pins_nix_expression",
    "read_version_file",
    "release_hashes",
    "sdist_package_name",
    "source_requirements",
    "update",
]
