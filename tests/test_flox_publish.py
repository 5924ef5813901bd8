"""`flox publish` command lines and preconditions, on real git repositories (a bare remote in tmp_path).
The real `flox publish` is never run: no Flox CLI here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dagster_nix_builder.flox.build import FloxPackageError
from dagster_nix_builder.flox.publish import check_publish_preconditions, flox_publish_commands

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

MANIFEST = 'version = 1\n\n[install]\nhello.pkg-path = "hello"\n'


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git configuration; a fixed identity."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.invalid")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A Flox project, committed and pushed to its upstream (a bare repository)."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(remote)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "init", "--quiet", "-b", "main", str(work)], check=True)
    (work / ".flox" / "env").mkdir(parents=True)
    (work / ".flox" / "env" / "manifest.toml").write_text(MANIFEST)
    (work / ".flox" / "pkgs").mkdir()
    (work / ".flox" / "pkgs" / "dagster.nix").write_text("{ }: { }\n")
    (work / "README").write_text("hello\n")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "init")
    git(work, "remote", "add", "origin", str(remote))
    git(work, "push", "--quiet", "-u", "origin", "main")
    return work


def test_clean_and_pushed_has_no_problem(project: Path):
    assert check_publish_preconditions(project) == []
    (project / "notes.txt").write_text("untracked, outside .flox: Flox ignores it\n")
    assert check_publish_preconditions(project) == []


def test_a_dirty_tree_names_the_files(project: Path):
    (project / "README").write_text("changed\n")
    (project / ".flox" / "pkgs" / "dagster.nix").write_text("{ x }: { }\n")
    git(project, "add", ".flox/pkgs/dagster.nix")
    (problem,) = check_publish_preconditions(project)
    assert "not clean" in problem and "2 tracked file(s)" in problem
    assert "README" in problem and ".flox/pkgs/dagster.nix" in problem


def test_untracked_files_under_flox_are_named(project: Path):
    (project / ".flox" / "pkgs" / "new.nix").write_text("{ }: { }\n")
    (problem,) = check_publish_preconditions(project)
    assert "Untracked" in problem and ".flox/pkgs/new.nix" in problem


def test_an_unpushed_commit_is_reported(project: Path):
    (project / "README").write_text("changed\n")
    git(project, "commit", "--quiet", "-am", "local only")
    head = git(project, "rev-parse", "HEAD").strip()
    (problem,) = check_publish_preconditions(project)
    assert "not pushed" in problem and "1 commit(s)" in problem and "origin/main" in problem and head[:12] in problem
    git(project, "push", "--quiet")
    assert check_publish_preconditions(project) == []


def test_a_branch_without_upstream(project: Path):
    git(project, "switch", "--quiet", "-c", "topic")
    assert check_publish_preconditions(project) == []  # its commit is on origin/main: Flox can clone it
    (project / "README").write_text("topic\n")
    git(project, "commit", "--quiet", "-am", "topic")
    (problem,) = check_publish_preconditions(project)
    assert "branch topic has no upstream" in problem and "git push -u origin topic" in problem


def test_no_remote_no_repository_no_commit_no_manifest(tmp_path: Path, project: Path):
    git(project, "remote", "remove", "origin")
    (problem,) = check_publish_preconditions(project)
    assert "no remote" in problem

    plain = tmp_path / "plain"
    plain.mkdir()
    (problem,) = check_publish_preconditions(plain)
    assert "not in a git work tree" in problem

    subprocess.run(["git", "init", "--quiet", str(plain)], check=True)
    assert any("no commit yet" in p for p in check_publish_preconditions(plain))

    (tmp_path / "work" / ".flox" / "env" / "manifest.toml").write_text("version = 1\n")
    problems = check_publish_preconditions(project)
    assert any("installs no package" in p for p in problems)
    assert any("not clean" in p and "manifest.toml" in p for p in problems)


def test_one_command_line_per_package():
    commands = flox_publish_commands("/opt/flox/bin/flox", "/srv/project", ["dagster-pipes", "dagster", "dagster"])
    assert commands == [
        ["/opt/flox/bin/flox", "publish", "-d", "/srv/project", "dagster-pipes"],
        ["/opt/flox/bin/flox", "publish", "-d", "/srv/project", "dagster"],
    ]
    signed = flox_publish_commands("flox", Path("p"), ["dagster"], org="myorg", signing_private_key="/k/key.sec")
    assert signed == [["flox", "publish", "-d", "p", "-o", "myorg", "--signing-private-key", "/k/key.sec", "dagster"]]
    assert all(isinstance(arg, str) for command in commands + signed for arg in command)


@pytest.mark.parametrize("bad", ["-h", "a b", "../x", ".#x", "x.nix", "nixpkgs#hello"])
def test_bad_or_unknown_names_are_refused(bad: str):
    with pytest.raises(FloxPackageError):
        flox_publish_commands("flox", "/p", ["dagster", bad])
    with pytest.raises(FloxPackageError, match="Unknown package"):
        flox_publish_commands("flox", "/p", ["dagster-ui"], known={"dagster", "dagster-webserver"})
    with pytest.raises(FloxPackageError):
        flox_publish_commands("flox", "/p", [])
