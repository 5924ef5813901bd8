"""The update and git: open the checkout, refuse files with uncommitted changes, commit exactly the files
that changed (whatever else is staged), and put the index back when the commit fails."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# GitPython refuses to import without a git executable; let the code location load anyway and fail
# only where git is used, with our own message.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
import git

from dagster_nix_builder.upstream.update.model import DirtyFilesError, UpdateError, UpdateStep

COMMIT_ATTEMPTS = 30


def open_repo(repo_dir: Path) -> git.Repo:
    """The checkout at `repo_dir`."""
    try:
        return git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
        raise UpdateError(UpdateStep.PREFLIGHT, f"{repo_dir} is not a git checkout") from e


def changed_files(repo: git.Repo, paths: Sequence[str]) -> list[str]:
    """Those of `paths` with staged, unstaged or untracked changes."""
    out = repo.git.status("--porcelain=v1", "--untracked-files=all", "--", *paths)
    return sorted({line[3:].strip() for line in out.splitlines() if line.strip()})


def refuse_dirty(repo: git.Repo, paths: Sequence[str]) -> None:
    """Raise `DirtyFilesError` naming those of `paths` with uncommitted changes."""
    dirty = changed_files(repo, paths)
    if dirty:
        raise DirtyFilesError(dirty)


def _has_identity(repo: git.Repo) -> bool:
    reader = repo.config_reader()
    return reader.has_option("user", "name") and reader.has_option("user", "email")


def commit(
    repo: git.Repo,
    paths: Sequence[str],
    message: str,
    *,
    mode: str,
    hashes: Mapping[str, str],
    rebuilt: Sequence[str],
    author: str,
) -> str:
    """Commit exactly `paths` with `message` (and a body naming the source, hashes and what was rebuilt);
    `author` (`Name <email>`) when git has no identity. Returns the commit id."""
    body = "\n".join([f"source: {mode}", *(f"{k}: {v}" for k, v in hashes.items()), f"rebuilt: {', '.join(rebuilt)}"])
    env = {}
    if not _has_identity(repo):
        name, _, email = author.partition(" <")
        env = {
            "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"),
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email.rstrip(">"),
        }  # fmt: skip
    # Others may be committing in the same checkout: retry while their index.lock exists.
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            repo.git.add("--", *paths)
            # `commit -- PATHS` commits only these paths, whatever else is staged.
            # The user's hooks run: a failing pre-commit hook fails this step like any other error.
            repo.git.commit("-m", f"{message}\n\n{body}", "--", *paths, env=env)
            return repo.head.commit.hexsha
        except git.GitCommandError as e:
            if "index.lock" in str(e) and attempt < COMMIT_ATTEMPTS - 1:
                time.sleep(1)
                continue
            # The paths were clean (index == HEAD) when the update started: put the index back.
            with contextlib.suppress(git.GitCommandError):
                repo.git.reset("-q", "--", *paths)
            raise UpdateError(UpdateStep.COMMIT, "git commit failed", [str(e)]) from e
    raise AssertionError("unreachable")


__all__ = ["changed_files", "commit", "open_repo", "refuse_dirty"]
