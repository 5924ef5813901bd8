"""Real git upstreams and project checkouts for the update and sensor tests (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dagster_nix_builder.nix.settings import bootstrap_nix_config

FIXTURE_SET = Path(__file__).parent / "fixtures" / "upstream_set"
NIX_CONFIG = bootstrap_nix_config()

GOOD_MODULE = (
    'import sys\nVERSION = "{version}"\nif "--version" in sys.argv:\n    print("dagster", VERSION)\n'
)
BROKEN_MODULE = "def broken(:\n"  # a syntax error: dagster-lib fails to build
FAILING_VERSION_MODULE = 'import sys\nprint("no --version here", file=sys.stderr)\nsys.exit(3)\n'


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def world_readable_tmpdir(prefix: str) -> Path:
    """A temp dir under /tmp that Nix's build users (nixbld*) can read, unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _make_readable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)


class Upstream:
    """A bare repository standing in for Dagster's GitHub repository, and a work tree to push from."""

    def __init__(self, root: Path, branch: str = "master") -> None:
        self.root = root
        self.bare = root / "upstream.git"
        self.work = root / "upstream-work"
        self.branch = branch
        _git("init", "-q", "--bare", "-b", branch, str(self.bare), cwd=root)
        _git("init", "-q", "-b", branch, str(self.work), cwd=root)
        _make_readable(root)

    @property
    def url(self) -> str:
        return str(self.bare)

    def push(self, files: dict[str, str], message: str) -> str:
        """Commit files on the branch and push them; returns the new commit id."""
        for name, text in files.items():
            (self.work / name).parent.mkdir(parents=True, exist_ok=True)
            (self.work / name).write_text(text)
        _git("add", "-A", cwd=self.work)
        _git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        _git("push", "-q", str(self.bare), f"HEAD:refs/heads/{self.branch}", cwd=self.work)
        _make_readable(self.bare)
        return _git("rev-parse", "HEAD", cwd=self.work)


def make_project(
    root: Path,
    upstream: Upstream,
    *,
    rev: str | None = None,
    hash_: str | None = None,
    source: str = "git",
    url: str | None = None,
) -> Path:
    """A git checkout with the small package set as `nix/` and its pins, committed."""
    repo = root / "project"
    repo.mkdir()
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("config", "user.name", "Test", cwd=repo)
    _git("config", "user.email", "test@localhost", cwd=repo)
    shutil.copytree(FIXTURE_SET, repo / "nix")
    pins = {
        "source": source,
        "release": {"version": "1.13.27", "hashes": {}},
        "git": {
            "url": url or upstream.url,
            "branch": upstream.branch,
            "rev": rev,
            "hash": hash_,
            "version": "1!0+dev",
        },
    }
    (repo / "nix" / "pins.json").write_text(json.dumps(pins, indent=2) + "\n")
    (repo / "README.md").write_text("project\n")
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


def clone_project(source: Path, root: Path) -> Path:
    """An independent copy of a project checkout (history included)."""
    dest = root / f"project-{len(list(root.iterdir()))}"
    shutil.copytree(source, dest, symlinks=True)
    return dest


def git(repo: Path, *args: str) -> str:
    """Run git in a checkout and return its stdout."""
    return _git(*args, cwd=repo)


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every file under nix/ (temp files included) with its bytes, to prove nothing changed."""
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in sorted((repo / "nix").rglob("*"))
        if p.is_file()
    }
