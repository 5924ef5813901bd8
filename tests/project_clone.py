"""This project as a fresh clone of it has it, for tests that need the repository itself in a temporary place
(git mode's end-to-end test, the flake's tests): never the checkout, so nothing they do writes into it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from upstream_repo import git

REPO = Path(__file__).resolve().parent.parent

# What a work tree holds besides the project (scripts/debian-root.sh copies the work tree without .git).
NOT_PROJECT = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".dagster_home", ".nix-results",
               ".debian-root", ".test-results", "bench/results"}


def project_files() -> list[str]:
    """The files git tracks or would track here; without a .git, the work tree less what it ignores."""
    if (REPO / ".git").exists():
        files = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True,
        ).stdout
        return [name for name in files.decode().split("\0") if name]
    names = []
    for path in REPO.rglob("*"):
        name = path.relative_to(REPO).as_posix()
        parts = name.split("/")
        if path.is_file() and not path.is_symlink() and not parts[0].startswith("result") and not any(
            part in NOT_PROJECT or part.endswith(".egg-info") or "/".join(parts[: i + 1]) in NOT_PROJECT
            for i, part in enumerate(parts)
        ):
            names.append(name)
    return names


def fresh_clone(dest: Path) -> Path:
    """This project as a fresh clone of it has it: the files of this work tree that git tracks or would
    track (new ones too, so work not committed yet is tested as it will be), committed."""
    for name in project_files():
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    git(dest.parent, "init", "-q", "-b", "main", str(dest))
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "fresh clone")
    git(dest, "clean", "-q", "-f", "-d", "-X")  # what .gitignore names (a root's .env): a fresh clone lacks it
    return dest
