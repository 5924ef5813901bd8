"""The update workflow: move `dagster-src` to a new rev or release without ever losing a user's edit.

Steps (each named in `UpdateStep`, and in the error when it fails):

1. preflight: refuse when a file the update would edit has uncommitted changes (naming them);
   recover from a run that was killed half-way.
2. resolve: validate the target (40-hex rev, or a release whose five sdists are all published); with no
   target, take the head of the followed branch (`git ls-remote`) or the newest complete release.
3. lock: in release mode regenerate `nix/bootstrap/wheels.json`; in git mode (after step 5) check that
   the source's own requirements are what it locks, and fail listing the drift.
4. hash: build the source with the candidate pins passed to Nix as an argument (`--arg pins`) and a fake
   hash; Nix fails and prints the real one (`specified:`/`got:`). Nothing is written for this.
5. version: in git mode build the source at its real hash and read the version from its own
   `python_modules/dagster/dagster/version.py`.
6. write: write the final pins (rev, hash, version) once, atomically.
7. build: build the source and every package downstream of it (asked from Nix: the referrers of the
   source derivation among the set's attributes).
8. check: run the asset checks a materialization runs (imports, cli_version, the webserver smoke check),
   and `--version` of every `bin/*` of rebuilt packages no check covers.
9. commit: commit exactly the files that changed with gitpython, message `dagster-src: OLD -> NEW`.

On any failure (including an interrupt) every file written is restored byte for byte and
`UpdateError` says which step failed and why.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# GitPython refuses to import without a git executable; let the code location load anyway and fail
# only where git is used, with our own message.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
import git
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dagster_nix_builder import git_upstream, processes
from dagster_nix_builder.errors import NixBuilderError
from dagster_nix_builder.log_format import ActivityStarted, BuildLogLine, NixMessage, parse_line
from dagster_nix_builder.nix_output import parse_build_json, strip_ansi
from dagster_nix_builder.nix_settings import (
    DEFAULT_HOST_PYTHON,
    DEFAULT_NIX_CONFIG,
    nix_config_for_scope,
    uses_bootstrap_scope,
)
from dagster_nix_builder.pins import (
    FAKE_HASH,
    RELEASE_PACKAGES,
    Pins,
    atomic_write_bytes,
    parse_pins,
    remove_stale_temp_files,
    render_pins,
    validate_git_argument,
    validate_rev,
    validate_sri_hash,
    validate_version,
)

logger = logging.getLogger(__name__)

WHEELS_LOCK_RELATIVE_PATH = Path("nix") / "bootstrap" / "wheels.json"
LOCK_SCRIPT_RELATIVE_PATH = Path("nix") / "bootstrap" / "lock.py"
JOURNAL_NAME = "dagster-nix-builder-update.json"
LOCK_NAME = "dagster-nix-builder-update.lock"
SOURCE_LAYOUT = {
    "dagster": "python_modules/dagster",
    "dagster-graphql": "python_modules/dagster-graphql",
    "dagster-pipes": "python_modules/dagster-pipes",
    "dagster-webserver": "python_modules/dagster-webserver",
    "dagster-shared": "python_modules/libraries/dagster-shared",
}
"""Where the five packages lie in Dagster's monorepo (as `layout` in nix/packages/dagster-src.nix)."""
VERSION_FILE = "python_modules/dagster/dagster/version.py"
"""Where Dagster's monorepo says its version (`__version__ = "..."`); git mode pins what it says."""

_HASH_MISMATCH_RE = re.compile(
    r"hash mismatch in fixed-output derivation '(?P<drv>[^']+)':\s*"
    r"specified:\s*(?P<specified>\S+)\s*got:\s*(?P<got>\S+)"
)

# Lists every top-level derivation of a package set with its .drv path; a broken attribute is left out.
_DRV_PATHS_EXPR = """{ nixDir, ... }@args:
let
  set = import nixDir (removeAttrs args [ "nixDir" ]);
  isDrv = n: let r = builtins.tryEval (let v = set.${n}; in builtins.isAttrs v && (v.type or null) == "derivation");
             in r.success && r.value;
  drvOf = n: let r = builtins.tryEval set.${n}.drvPath; in
    if r.success then { drvPath = r.value; outputs = set.${n}.outputs or [ "out" ]; } else null;
in builtins.listToAttrs (map (n: { name = n; value = drvOf n; }) (builtins.filter isDrv (builtins.attrNames set)))
"""


class UpdateStep(str, Enum):
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


class UpdateError(NixBuilderError):
    """An update failed; the files it had written are restored.

    Attributes:
        step: The step that failed.
        reason: Why, in one paragraph.
        messages: Nix's (or git's, or a check's) own error messages.
        restored: Repository-relative paths that were restored byte for byte.
    """

    def __init__(self, step: UpdateStep, reason: str, messages: Sequence[str] = ()) -> None:
        self.step = step
        self.reason = reason
        self.messages = list(messages)
        self.restored: list[str] = []
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"update failed at step '{self.step.value}': {self.reason}"
        if self.messages:
            text += "\n" + "\n".join(self.messages)
        if self.restored:
            text += f"\nrestored byte for byte: {', '.join(self.restored)}"
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


@dataclass(frozen=True)
class HashMismatch:
    """One `specified`/`got` pair Nix printed for a fixed-output derivation."""

    drv_path: str
    specified: str
    got: str

    @property
    def drv_name(self) -> str:
        """The derivation name, e.g. `dagster_shared-1.13.27.tar.gz`."""
        return Path(self.drv_path).name.split("-", 1)[1].removesuffix(".drv")


def parse_hash_mismatches(stderr: str) -> list[HashMismatch]:
    """The hash mismatches in a Nix stderr (internal-json or plain), in order."""
    texts = [m.msg for m in _messages(stderr)] or [strip_ansi(stderr)]
    found: list[HashMismatch] = []
    for text in texts:
        for m in _HASH_MISMATCH_RE.finditer(strip_ansi(text)):
            found.append(HashMismatch(m["drv"], m["specified"], m["got"]))
    return found


def sdist_package_name(drv_name: str, version: str) -> str | None:
    """Map an sdist derivation name back to its package: `dagster_shared-1.13.27.tar.gz` -> `dagster-shared`."""
    suffix = f"-{version}.tar.gz"
    if not drv_name.endswith(suffix):
        return None
    return drv_name.removesuffix(suffix).replace("_", "-").lower()


def _messages(stderr: str) -> list[NixMessage]:
    out = []
    for line in stderr.splitlines():
        event = parse_line(line)
        if isinstance(event, NixMessage):
            out.append(NixMessage(event.level, strip_ansi(event.msg)))
    return out


_BUILDER_FAILED_RE = re.compile(r"builder for '(?P<drv>[^']+)' failed")


def _errors(stderr: str, log_tail: int = 15) -> list[str]:
    """Nix's error messages, each failed builder's followed by the last lines of its log."""
    drv_of: dict[int, str] = {}
    logs: dict[str, list[str]] = {}
    errors: list[str] = []
    for line in stderr.splitlines():
        event = parse_line(line)
        if isinstance(event, ActivityStarted) and event.drv_path:
            drv_of[event.id] = event.drv_path
        elif isinstance(event, BuildLogLine) and event.id in drv_of:
            logs.setdefault(drv_of[event.id], []).append(strip_ansi(event.line))
        elif isinstance(event, NixMessage) and event.level == 0:
            errors.append(strip_ansi(event.msg))
    if errors:
        out = []
        for error in errors:
            out.append(error)
            m = _BUILDER_FAILED_RE.search(error)
            if m and "last " not in error:
                out.extend(f"  > {line}" for line in logs.get(m["drv"], [])[-log_tail:])
        return out
    plain = [strip_ansi(line) for line in stderr.splitlines() if not line.startswith("@nix ")]
    return plain[-20:]


@dataclass(frozen=True)
class UpdateSettings:
    """Where the repository and the package set are, and how to drive Nix.

    Attributes:
        repo_dir: The git checkout holding `nix/`.
        nix_dir: The package set directory, relative to `repo_dir`.
        nix_args: `--argstr` arguments of the package set (besides `source`, which the update sets).
        nix_executable: The `nix` command; `nix-instantiate` and `nix-store` are looked up next to it.
        nix_config: Put in `NIX_CONFIG` of every Nix call.
        source_attr: The attribute of the source.
        lock_python: Interpreter running `nix/bootstrap/lock.py` in release updates.
        lock_targets: The `<python>-<system>` locks to regenerate (default: every target lock.py knows);
            the others are dropped from the lock, since they would pin the old Dagster.
        pip_args: Extra pip arguments for the release lookup (e.g. `--no-index --find-links DIR`).
        package_set_checks: Run the asset checks of `dagster_nix_builder.checks` that apply to each rebuilt
            package (`imports`, `cli_version`; `smoke` too with `run_smoke_check`), as the assets would.
        run_smoke_check: Also start the rebuilt webserver (the `smoke` check), as a materialization does.
        run_version_checks: Run every `bin/*` of a rebuilt package with `--version` when the package-set
            checks do not cover it (no checks apply to it, or `package_set_checks` is off).
        checks: Further checks, called with the rebuilt attributes and their out paths; raise to fail.
        timeout_seconds: Limit of each Nix/lock command.
        author: `Name <email>` of the commit when git has no identity configured.
    """

    repo_dir: Path
    nix_dir: str = "nix"
    nix_args: Mapping[str, str] = field(default_factory=lambda: {"scope": "bootstrap"})
    nix_executable: str = "nix"
    nix_config: str = DEFAULT_NIX_CONFIG
    source_attr: str = "dagster-src"
    lock_python: str = "/usr/bin/python3"
    lock_targets: Sequence[str] = ()
    pip_args: Sequence[str] = ()
    package_set_checks: bool = True
    run_smoke_check: bool = True
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


@dataclass
class _Proc:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str


def _run(
    cmd: Sequence[str], *, env: Mapping[str, str] | None, timeout: float, cwd: Path | None = None
) -> _Proc:
    """Run a command, killing it cleanly (SIGTERM, wait, SIGKILL) on timeout or interrupt."""
    logger.debug("running %s", shlex.join(cmd))
    proc = processes.popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        processes.stop_group(proc)
        raise
    return _Proc(list(cmd), proc.returncode, out, err)


class Updater:
    """Runs one update of the pins in a repository.

    Args:
        settings: Where and how.
        log: Progress messages go here (a Dagster `context.log.info` for instance).
    """

    def __init__(self, settings: UpdateSettings, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.log = log or logger.info
        self.repo_dir = Path(settings.repo_dir).resolve()
        self._originals: dict[Path, bytes | None] = {}
        self._journal_active = False
        self._outputs_of: dict[str, list[str]] = {}
        self._written: dict[Path, list[str]] = {}
        self._external: set[Path] = set()

    # -- public --------------------------------------------------------------------------------------

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

    # -- the workflow --------------------------------------------------------------------------------

    def _update(self, mode: str, target: str | None, **options: Any) -> UpdateResult:
        repo = self._open_repo()
        with self._exclusive(repo):
            return self._update_locked(repo, mode, target, **options)

    @contextlib.contextmanager
    def _exclusive(self, repo: git.Repo) -> Iterator[None]:
        """One update at a time per checkout; the kernel drops the lock when a killed run dies."""
        with open(Path(repo.git_dir) / LOCK_NAME, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise UpdateError(UpdateStep.PREFLIGHT, "another update is running in this checkout") from e
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _update_locked(
        self,
        repo: git.Repo,
        mode: str,
        target: str | None,
        *,
        url: str | None = None,
        branch: str | None = None,
        switch: bool = False,
    ) -> UpdateResult:
        step = UpdateStep.PREFLIGHT
        try:
            edited = [self._rel(self.settings.pins_path)]
            # Release mode relocks for the new release; git mode relocks when the source drifted from the lock.
            if self._lock_script().exists() and self._wheels_path().is_file():
                edited.append(self._rel(self._wheels_path()))
            self._recover_interrupted_run()
            self._refuse_dirty(repo, edited)
            for path in edited:
                for tmp in remove_stale_temp_files(self.repo_dir / path):
                    self.log(f"removed {self._rel(tmp)} left by a killed write")
            pins = self._read_pins()
            switching = switch and pins.source != mode
            if switching:
                old = pins.current()
                self.log(f"switching the source from {pins.source} ({old}) to {mode}")
            else:
                old = (pins.git.rev or "none") if mode == "git" else pins.release.version
                if pins.source != mode:
                    self.log(
                        f"note: pins select source {pins.source!r}; updating the {mode} pin leaves that as is"
                    )

            step = UpdateStep.RESOLVE
            candidate = replace(pins, source=mode) if switching else pins
            if mode == "git":
                candidate = candidate.with_git(
                    url=validate_git_argument(url, "git url") if url is not None else pins.git.url,
                    branch=validate_git_argument(branch, "git branch") if branch is not None else pins.git.branch,
                )
            target = self._resolve(mode, target, candidate)
            if mode == "git":
                candidate = candidate.with_git(rev=target)
                if candidate == pins and pins.git.hash:
                    self.log(f"dagster-src already pinned to {target}; nothing to do")
                    return UpdateResult(mode, old, target, None, version=pins.git.version)
            else:
                if candidate.with_release(version=target) == pins:
                    self.log(f"dagster-src already pinned to release {target}; nothing to do")
                    return UpdateResult(mode, old, target, None, version=target)
                candidate = candidate.with_release(version=target)

            self._begin_journal()
            if mode == "release" and self._lock_script().exists():
                step = UpdateStep.LOCK
                self._regenerate_lock(target)

            step = UpdateStep.HASH
            hashes = self._discover_hashes(mode, target, candidate)
            if mode == "git":
                final = candidate.with_git(hash=hashes[self.settings.source_attr])
                step = UpdateStep.VERSION
                version, tree = self._source_version(final)
                final = final.with_git(version=version)
                step = UpdateStep.LOCK
                self._check_lock(tree, target, version)
            else:
                # Keep the file's key order so the commit's diff shows only changed values.
                order = [*pins.release.hashes, *(p for p in RELEASE_PACKAGES if p not in pins.release.hashes)]
                final = candidate.with_release(hashes={p: hashes.get(p, pins.release.hashes.get(p)) for p in order})

            step = UpdateStep.WRITE
            self._write(self.settings.pins_path, render_pins(final))

            step = UpdateStep.BUILD
            built = self._build_downstream(mode)

            step = UpdateStep.CHECK
            checks = self._check(mode, built)

            step = UpdateStep.COMMIT
            changed = self._changed_files(repo, edited)
            message = f"dagster-src: {old} -> {target}"
            sha = self._commit(repo, changed, message, mode, hashes, built)
            self._end_journal()
            self._originals.clear()
            self.log(f"committed {sha[:12]} {message!r} ({', '.join(changed)})")
            version = final.git.version if mode == "git" else target
            return UpdateResult(
                mode, old, target, sha, tuple(changed), hashes, built, tuple(checks), version=version
            )
        except UpdateError as e:
            e.restored = self._restore()
            raise
        except Exception as e:  # whatever broke, the files are restored and the step is named
            err = UpdateError(step, f"{type(e).__name__}: {e}")
            err.restored = self._restore()
            raise err from e
        except BaseException:
            # Interrupted (run terminated, Ctrl-C): leave the files as they were, then let it propagate.
            self._restore()
            raise

    # -- steps ---------------------------------------------------------------------------------------

    def _open_repo(self) -> git.Repo:
        try:
            return git.Repo(self.repo_dir)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
            err = UpdateError(UpdateStep.PREFLIGHT, f"{self.repo_dir} is not a git checkout")
            raise err from e

    def _refuse_dirty(self, repo: git.Repo, paths: Sequence[str]) -> None:
        # Porcelain status covers staged, unstaged and untracked changes of exactly these paths.
        out = repo.git.status("--porcelain=v1", "--untracked-files=all", "--", *paths)
        dirty = sorted({line[3:].strip() for line in out.splitlines() if line.strip()})
        if dirty:
            raise DirtyFilesError(dirty)

    def _read_pins(self) -> Pins:
        try:
            return parse_pins(self.settings.pins_path.read_bytes())
        except FileNotFoundError as e:
            raise UpdateError(
                UpdateStep.PREFLIGHT, f"no pin file at {self._rel(self.settings.pins_path)}"
            ) from e

    def _resolve(self, mode: str, target: str | None, pins: Pins) -> str:
        if mode == "git":
            if target is not None:
                return validate_rev(target)
            try:
                head = git_upstream.ls_remote_head(pins.git.url, pins.git.branch, timeout=120)
            except git_upstream.UpstreamError as e:
                raise UpdateError(
                    UpdateStep.RESOLVE, f"no rev given, and the head of {pins.git.branch} could not be read: {e}"
                ) from e
            self.log(f"{pins.git.url} {pins.git.branch} is at {head}")
            return head
        try:
            if target is None:
                latest = git_upstream.latest_release(pip_args=self.settings.pip_args)
                if latest is None:
                    raise UpdateError(
                        UpdateStep.RESOLVE,
                        f"no version given, and no release has all of {', '.join(RELEASE_PACKAGES)} as sdists "
                        "on the package index",
                    )
                self.log(f"newest complete release: {latest}")
                return latest
            version = validate_version(target)
            missing = git_upstream.missing_sdists(version, pip_args=self.settings.pip_args)
        except git_upstream.UpstreamError as e:
            raise UpdateError(UpdateStep.RESOLVE, f"the package index could not be asked: {e}") from e
        if missing:
            raise UpdateError(
                UpdateStep.RESOLVE,
                f"release {version} is not complete on the package index: no sdist for {', '.join(missing)}",
            )
        return version

    def _regenerate_lock(self, version: str, requirements: Path | None = None) -> None:
        cmd = [
            self.settings.lock_python, str(self._lock_script()),
            "--dagster-version", version, "--output", str(self._wheels_path()),
            *(["--requirements", str(requirements)] if requirements else []),
            *(arg for target in self.settings.lock_targets for arg in ("--target", target)),
        ]  # fmt: skip
        self._remember(self._wheels_path(), external=True)
        proc = self._sh(cmd, env=None, timeout=self.settings.timeout_seconds, cwd=self.repo_dir)
        if proc.returncode != 0:
            raise UpdateError(
                UpdateStep.LOCK,
                f"{self._rel(self._lock_script())} failed with exit code {proc.returncode}",
                proc.stderr.strip().splitlines()[-20:],
            )

    def _discover_hashes(self, mode: str, target: str, candidate: Pins) -> dict[str, str]:
        # The candidate pins go to Nix as an argument: nothing with a fake hash is ever written, so a build
        # running beside this update reads the committed pins.
        if mode == "git":
            fake = candidate.with_git(hash=FAKE_HASH)
        else:
            fake = candidate.with_release(hashes={p: FAKE_HASH for p in RELEASE_PACKAGES})
        proc = self._nix_build([self.settings.source_attr], mode, pins=fake)
        mismatches = parse_hash_mismatches(proc.stderr)
        if proc.returncode == 0 and not mismatches:
            raise UpdateError(UpdateStep.HASH, "Nix accepted the fake hash: the source is not fixed-output?")
        if mode == "git":
            got = [m for m in mismatches if m.specified == FAKE_HASH]
            if len(got) != 1:
                raise UpdateError(
                    UpdateStep.HASH,
                    f"expected Nix to report one hash mismatch for {self.settings.source_attr}, "
                    f"got {len(got)}: the rev could not be fetched or the source failed to build",
                    _errors(proc.stderr),
                )
            self.log(f"{self.settings.source_attr}: {got[0].got}")
            return {self.settings.source_attr: validate_sri_hash(got[0].got)}
        hashes: dict[str, str] = {}
        for m in mismatches:
            package = sdist_package_name(m.drv_name, target)
            if package is not None and m.specified == FAKE_HASH:
                hashes[package] = validate_sri_hash(m.got)
                self.log(f"{package} {target}: {m.got}")
        missing = [p for p in RELEASE_PACKAGES if p not in hashes]
        if missing:
            raise UpdateError(
                UpdateStep.HASH,
                f"Nix reported no hash for the sdists of {', '.join(missing)} {target}",
                _errors(proc.stderr),
            )
        return hashes

    def _source_version(self, pins: Pins) -> tuple[str, Path]:
        """The version the source says it is (`__version__` of its dagster/version.py; the pinned one when
        the tree has no such file: a repository not laid out like Dagster's), and the source tree."""
        proc = self._nix_build([self.settings.source_attr], "git", json_out=True, pins=pins)
        if proc.returncode != 0:
            raise UpdateError(
                UpdateStep.VERSION,
                f"building {self.settings.source_attr} at its real hash failed (exit {proc.returncode})",
                _errors(proc.stderr),
            )
        tree = next(iter(next(iter(parse_build_json(proc.stdout).values()), {}).values()), None)
        if tree is None:
            raise UpdateError(UpdateStep.VERSION, f"nix build printed no output path: {proc.stdout[-500:]}")
        version_file = Path(tree) / VERSION_FILE
        if not version_file.is_file():
            self.log(f"the source has no {VERSION_FILE}: git.version stays {pins.git.version}")
            return pins.git.version, Path(tree)
        version = read_version_file(version_file.read_text(errors="replace"))
        if version is None:
            raise UpdateError(
                UpdateStep.VERSION,
                f"{VERSION_FILE} of rev {pins.git.rev} has no line __version__ = \"...\"",
            )
        try:
            validate_version(version)
        except ValueError as e:
            raise UpdateError(UpdateStep.VERSION, f"{VERSION_FILE} of rev {pins.git.rev}: {e}") from e
        if version != pins.git.version:
            self.log(f"the source reports version {version} (was {pins.git.version})")
        return version, Path(tree)

    def _check_lock(self, tree: Path, rev: str, version: str) -> None:
        """Git mode: the source's own requirements must be what the wheel lock provides; when they drift,
        the lock is resolved again from those requirements (`lock.py --requirements`)."""
        if not self._wheels_path().is_file():
            return
        python = self.settings.nix_args.get("hostPythonVersion")
        if not python:
            proc = self._sh(
                [self.settings.lock_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                env=None, timeout=60,
            )  # fmt: skip
            python = proc.stdout.strip()
        key, drift = lock_drift(tree, json.loads(self._wheels_path().read_text()), python, os.uname().machine)
        relocked = False
        if drift and self._lock_script().exists():
            self.log(f"the source at {rev} drifted from {self._rel(self._wheels_path())} ({key}): " + "; ".join(drift))
            requirements = self.repo_dir / ".git" / "dagster-nix-builder-requirements.txt"
            requirements.write_text("".join(f"{spec}\n" for spec in source_requirements(tree)))
            try:
                self._regenerate_lock(version, requirements=requirements)
            finally:
                requirements.unlink(missing_ok=True)
            relocked = True
            key, drift = lock_drift(tree, json.loads(self._wheels_path().read_text()), python, os.uname().machine)
        if drift:
            raise UpdateError(
                UpdateStep.LOCK,
                f"the source at {rev} requires what {self._rel(self._wheels_path())} does not lock for {key}"
                + (f", even after {self._rel(self._lock_script())} resolved the source's own requirements"
                   if relocked else ""),
                drift,
            )
        self.log(f"{'regenerated' if relocked else 'checked'} {self._rel(self._wheels_path())}: the source's "
                 f"requirements are all locked ({key})")

    def _build_downstream(self, mode: str) -> dict[str, tuple[str, ...]]:
        drvs = self._drv_paths(mode)
        attrs = [self.settings.source_attr, *self._downstream_attrs(drvs)]
        self.log(f"rebuilding {', '.join(attrs)}")
        # Every output (a Python package's `dist` too), as the checks look at all of them.
        installables = [
            f"{a}.{o}" if len(self._outputs_of.get(a, [])) > 1 else a
            for a in attrs
            for o in (self._outputs_of.get(a) or ["out"])
        ]
        proc = self._nix_build(list(dict.fromkeys(installables)), mode, json_out=True)
        if proc.returncode != 0:
            raise UpdateError(
                UpdateStep.BUILD,
                f"rebuilding {', '.join(attrs)} failed (exit {proc.returncode})",
                _errors(proc.stderr),
            )
        outputs = parse_build_json(proc.stdout)
        return {attr: tuple(outputs.get(drvs[attr], {}).values()) for attr in attrs}

    def _downstream_attrs(self, drvs: Mapping[str, str]) -> list[str]:
        """Attributes of the set whose derivation depends on the source's, asked from Nix."""
        source_drv = drvs.get(self.settings.source_attr)
        if not source_drv:
            raise UpdateError(
                UpdateStep.BUILD, f"the package set has no attribute {self.settings.source_attr}"
            )
        proc = self._sh(
            [self._nix_tool("nix-store"), "--query", "--referrers-closure", source_drv],
            env=self._env(), timeout=self.settings.timeout_seconds,
        )  # fmt: skip
        if proc.returncode != 0:
            raise UpdateError(
                UpdateStep.BUILD, "nix-store --query --referrers-closure failed", _errors(proc.stderr)
            )
        referrers = set(proc.stdout.split())
        return sorted(a for a, d in drvs.items() if d in referrers and a != self.settings.source_attr)

    def _drv_paths(self, mode: str) -> dict[str, str]:
        cmd = [
            self._nix_tool("nix-instantiate"), "--eval", "--strict", "--json", "--read-write-mode",
            "--expr", _DRV_PATHS_EXPR, "--arg", "nixDir", str(self.repo_dir / self.settings.nix_dir),
            *self._nix_arg_flags(mode),
        ]  # fmt: skip
        proc = self._sh(cmd, env=self._env(), timeout=self.settings.timeout_seconds)
        if proc.returncode != 0:
            raise UpdateError(UpdateStep.BUILD, "evaluating the package set failed", _errors(proc.stderr))
        data = {k: v for k, v in json.loads(proc.stdout).items() if v}
        self._outputs_of = {k: list(v["outputs"]) for k, v in data.items()}
        return {k: v["drvPath"] for k, v in data.items()}

    def _check(self, mode: str, built: Mapping[str, Sequence[str]]) -> list[str]:
        passed: list[str] = []
        covered: set[str] = set()
        if self.settings.package_set_checks:
            covered = self._package_set_checks(mode, built, passed)
        if self.settings.run_version_checks:
            for attr, outs in built.items():
                if attr in covered:
                    continue
                for out in outs:
                    bindir = Path(out) / "bin"
                    if not bindir.is_dir():
                        continue
                    for exe in sorted(bindir.iterdir()):
                        if not os.access(exe, os.X_OK):
                            continue
                        proc = self._sh([str(exe), "--version"], env=_clean_env(), timeout=120)
                        if proc.returncode != 0:
                            raise UpdateError(
                                UpdateStep.CHECK,
                                f"{attr}: `{exe.name} --version` exited with {proc.returncode}",
                                (proc.stderr or proc.stdout).strip().splitlines()[-20:],
                            )
                        first = (proc.stdout or proc.stderr).strip().splitlines()[:1]
                        passed.append(f"{attr}: {exe.name} --version: {first[0] if first else ''}")
        for check in self.settings.checks:
            try:
                check(built)
            except Exception as e:  # a check's own failure, whatever its type, fails this step
                raise UpdateError(UpdateStep.CHECK, f"{getattr(check, '__name__', check)}: {e}") from e
            passed.append(f"{getattr(check, '__name__', check)}: ok")
        for line in passed:
            self.log(f"check passed: {line}")
        return passed

    def _package_set_checks(
        self, mode: str, built: Mapping[str, Sequence[str]], passed: list[str]
    ) -> set[str]:
        """Run the asset checks of the code location on the rebuilt packages; returns the attributes covered."""
        from dagster import AssetKey

        from dagster_nix_builder import checks as asset_checks
        from dagster_nix_builder.resource import NixResource

        extra = {k: v for k, v in self.settings.nix_args.items() if k != "scope"}
        nix = NixResource(
            executable=self.settings.nix_executable,
            nix_dir=str(self.repo_dir / self.settings.nix_dir),
            scope=self.settings.nix_args.get("scope"),
            nix_args={**extra, "source": mode},
            nix_config=self.settings.nix_config,
        )
        try:
            graph = nix.load_graph()
        except NixBuilderError as e:
            raise UpdateError(
                UpdateStep.CHECK, f"loading the package graph for the checks failed: {e}"
            ) from e
        covered: set[str] = set()
        for attr, outs in built.items():
            if attr not in graph:
                continue
            package = graph[attr]
            if set(package.outputs.values()) != set(outs):
                raise UpdateError(
                    UpdateStep.CHECK,
                    f"{attr}: the checked package is not the one built ({package.outputs} != {outs})",
                )
            key = AssetKey(attr)
            names = [spec.name for spec in asset_checks.check_specs_for(package, key)]
            for name in names:
                if name == asset_checks.IMPORTS:
                    result = asset_checks.check_imports(nix, graph, package, key)
                elif name == asset_checks.CLI_VERSION:
                    result = asset_checks.check_cli_version(package, key)
                elif name == asset_checks.SMOKE and self.settings.run_smoke_check:
                    result = asset_checks.check_webserver_smoke(package, key)
                else:
                    continue
                if not result.passed:
                    raise UpdateError(
                        UpdateStep.CHECK,
                        f"{attr}: check {name} failed",
                        [result.description or "(no detail)"],
                    )
                passed.append(f"{attr}: {name}")
            if names:
                covered.add(attr)
        return covered

    def _changed_files(self, repo: git.Repo, paths: Sequence[str]) -> list[str]:
        out = repo.git.status("--porcelain=v1", "--untracked-files=all", "--", *paths)
        return sorted({line[3:].strip() for line in out.splitlines() if line.strip()})

    def _commit(
        self,
        repo: git.Repo,
        paths: Sequence[str],
        message: str,
        mode: str,
        hashes: Mapping[str, str],
        built: Mapping[str, Sequence[str]],
    ) -> str:
        body = "\n".join(
            [f"source: {mode}", *(f"{k}: {v}" for k, v in hashes.items()), f"rebuilt: {', '.join(built)}"]
        )
        name, _, email = self.settings.author.partition(" <")
        env = {}
        if not _git_identity(repo):
            env = {
                "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"),
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email.rstrip(">"),
            }  # fmt: skip
        # Others may be committing in the same checkout: retry while their index.lock exists.
        for attempt in range(30):
            try:
                repo.git.add("--", *paths)
                # `commit -- PATHS` commits only these paths, whatever else is staged.
                # The user's hooks run: a failing pre-commit hook fails this step like any other error.
                repo.git.commit("-m", f"{message}\n\n{body}", "--", *paths, env=env)
                return repo.head.commit.hexsha
            except git.GitCommandError as e:
                if "index.lock" in str(e) and attempt < 29:
                    time.sleep(1)
                    continue
                # The paths were clean (index == HEAD) when the update started: put the index back.
                with contextlib.suppress(git.GitCommandError):
                    repo.git.reset("-q", "--", *paths)
                raise UpdateError(UpdateStep.COMMIT, "git commit failed", [str(e)]) from e
        raise AssertionError("unreachable")

    # -- files ---------------------------------------------------------------------------------------

    def _remember(self, path: Path, *, external: bool = False) -> None:
        if path not in self._originals:
            self._originals[path] = path.read_bytes() if path.exists() else None
        if external:
            self._external.add(path)
        self._save_journal()

    def _write(self, path: Path, data: bytes) -> None:
        # Journal first: a run killed right after the rename is recognised by the digest of what it wrote.
        self._written.setdefault(path, []).append(hashlib.sha256(data).hexdigest())
        self._remember(path)
        atomic_write_bytes(path, data)

    def _restore(self) -> list[str]:
        restored = []
        for path, original in self._originals.items():
            current = path.read_bytes() if path.exists() else None
            if current == original:
                continue
            if original is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_bytes(path, original)
            restored.append(self._rel(path))
            self.log(f"restored {self._rel(path)}")
        self._originals.clear()
        self._end_journal()
        return sorted(restored)

    # A journal in .git/ holds the original bytes while files are edited, so that a run killed before it
    # could restore them is undone by the next run instead of leaving the files edited.
    def _journal_path(self) -> Path:
        return Path(git.Repo(self.repo_dir).git_dir) / JOURNAL_NAME

    def _begin_journal(self) -> None:
        self._journal_active = True
        self._save_journal()

    def _save_journal(self) -> None:
        data = {
            "pid": os.getpid(),
            "files": {
                self._rel(p): {
                    "original": None if b is None else base64.b64encode(b).decode(),
                    "written": self._written.get(p, []),
                    "external": p in self._external,
                }
                for p, b in self._originals.items()
            },
        }
        atomic_write_bytes(self._journal_path(), (json.dumps(data, indent=2) + "\n").encode())

    def _end_journal(self) -> None:
        if self._journal_active:
            self._journal_path().unlink(missing_ok=True)
            self._journal_active = False

    def _recover_interrupted_run(self) -> None:
        journal = self._journal_path()
        if not journal.exists():
            return
        # Holding the lock, a journal can only be left by a run that died.
        data = json.loads(journal.read_bytes())
        files = data.get("files", {})
        todo: dict[Path, bytes | None] = {}
        edited_since: list[str] = []
        for rel, entry in files.items():
            path = self.repo_dir / rel
            original = None if entry["original"] is None else base64.b64decode(entry["original"])
            current = path.read_bytes() if path.exists() else None
            if current == original:
                continue
            ours = current is not None and hashlib.sha256(current).hexdigest() in entry["written"]
            if ours or entry["external"]:
                todo[path] = original
            else:
                edited_since.append(rel)
        if edited_since:
            # Someone edited the files after the interrupted run: never overwrite that.
            raise UpdateError(
                UpdateStep.PREFLIGHT,
                f"{', '.join(edited_since)} changed after an interrupted update; its original bytes are in "
                f"{journal}: restore or commit the files by hand, then delete that journal",
            )
        for path, original in todo.items():
            if original is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_bytes(path, original)
            self.log(f"restored {self._rel(path)} left edited by an interrupted update")
        journal.unlink(missing_ok=True)

    # -- helpers -------------------------------------------------------------------------------------

    def _sh(self, cmd: Sequence[str], **kwargs: Any) -> _Proc:
        self.log(f"$ {shlex.join(cmd)}")
        return _run(cmd, **kwargs)

    def _rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.repo_dir).as_posix()

    def _lock_script(self) -> Path:
        return self.repo_dir / LOCK_SCRIPT_RELATIVE_PATH

    def _wheels_path(self) -> Path:
        return self.repo_dir / WHEELS_LOCK_RELATIVE_PATH

    def _env(self, pins: Pins | None = None) -> dict[str, str]:
        env = dict(os.environ)
        base = "\n".join(filter(None, [env.get("NIX_CONFIG", ""), self.settings.nix_config]))
        scope = self.settings.nix_args.get("scope")
        config = nix_config_for_scope(
            base, scope,
            host_python=self.settings.nix_args.get("hostPython", DEFAULT_HOST_PYTHON),
            nix_instantiate=self._nix_tool("nix-instantiate"),
            nix_dir=self.repo_dir / self.settings.nix_dir,
        )  # fmt: skip
        # The candidate pins may name another (local) upstream than the file: the sandboxed fetch must see it.
        local = _local_upstream(pins.git.url) if pins is not None else None
        if local and uses_bootstrap_scope(scope, self._nix_tool("nix-instantiate")):
            config += f"\nextra-sandbox-paths = {local}"
        env["NIX_CONFIG"] = config
        return env

    def _nix_tool(self, name: str) -> str:
        exe = Path(self.settings.nix_executable)
        return str(exe.with_name(name)) if exe.parent != Path(".") else name

    def _nix_arg_flags(self, mode: str, pins: Pins | None = None) -> list[str]:
        flags: list[str] = []
        for k, v in {**self.settings.nix_args, "source": mode}.items():
            flags += ["--argstr", k, v]
        if pins is not None:
            flags += ["--arg", "pins", pins_nix_expression(pins)]
        return flags

    def _nix_build(
        self, attrs: Sequence[str], mode: str, *, json_out: bool = False, pins: Pins | None = None
    ) -> _Proc:
        """`nix build` of the package set; with `pins`, of the set as those pins would make it."""
        cmd = [
            self.settings.nix_executable, "--log-format", "internal-json", "build",
            "-f", str(self.repo_dir / self.settings.nix_dir), *self._nix_arg_flags(mode, pins),
            "--no-link", "--keep-going", *(["--json"] if json_out else []), *attrs,
        ]  # fmt: skip
        return self._sh(cmd, env=self._env(pins), timeout=self.settings.timeout_seconds)


def source_requirements(tree: Path) -> list[str]:
    """`[project].dependencies` of the five packages' `pyproject.toml` in `tree`, without the five themselves."""
    specs: list[str] = []
    for directory in SOURCE_LAYOUT.values():
        pyproject = tree / directory / "pyproject.toml"
        if pyproject.is_file():
            project = tomllib.loads(pyproject.read_text()).get("project", {})
            specs += [s for s in project.get("dependencies", []) if canonicalize_name(Requirement(s).name) not in SOURCE_LAYOUT]
    return list(dict.fromkeys(specs))


def lock_drift(tree: Path, lock: Mapping[str, Any], python: str, machine: str) -> tuple[str, list[str]]:
    """What the source requires that the wheel lock does not provide, for the lock of `python` on `machine`.

    Reads `[project].dependencies` of the five packages' `pyproject.toml` in `tree` (markers evaluated for
    that target), leaves out the five themselves, and compares names and versions with the lock.

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
    for directory in SOURCE_LAYOUT.values():
        pyproject = tree / directory / "pyproject.toml"
        if not pyproject.is_file():
            continue
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        for spec in project.get("dependencies", []):
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            name = canonicalize_name(req.name)
            if name in SOURCE_LAYOUT:
                continue
            locked = wheels.get(name)
            if locked is None:
                drift.append(f"{directory}: {spec} (not in the lock)")
            elif req.specifier and not req.specifier.contains(locked["version"], prereleases=True):
                drift.append(f"{directory}: {spec} (the lock has {locked['version']})")
    return key, drift


def pins_nix_expression(pins: Pins) -> str:
    """A Nix expression evaluating to `pins` (for `--arg pins`): `builtins.fromJSON` of a Nix string."""
    text = json.dumps(pins.to_dict(), sort_keys=True)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'builtins.fromJSON "{escaped}"'


_VERSION_LINE_RE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def read_version_file(text: str) -> str | None:
    """`__version__` of a `version.py` (as Dagster's packages write it), or None."""
    m = _VERSION_LINE_RE.search(text)
    return m.group(1) if m else None


def _local_upstream(url: str) -> str | None:
    if url.startswith("file://"):
        return unquote(urlsplit(url).path)
    return url if url.startswith("/") else None


def _git_identity(repo: git.Repo) -> bool:
    reader = repo.config_reader()
    return reader.has_option("user", "name") and reader.has_option("user", "email")


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


def update(
    settings: UpdateSettings,
    *,
    rev: str | None = None,
    version: str | None = None,
    source: str | None = None,
    url: str | None = None,
    branch: str | None = None,
    log: Callable[[str], None] | None = None,
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
    mode = source or ("git" if rev is not None else "release" if version is not None else None)
    if mode is None:
        raise ValueError("give source ('git' or 'release'), a rev (git mode) or a version (release mode)")
    if mode == "git" and version is not None:
        raise ValueError("source 'git' takes a rev, not a version")
    if mode == "release" and (rev is not None or url is not None or branch is not None):
        raise ValueError("source 'release' takes a version, not a rev, url or branch")
    updater = Updater(settings, log=log)
    if mode == "git":
        return updater.update_git(rev, url=url, branch=branch, switch=source is not None)
    return updater.update_release(version, switch=source is not None)
