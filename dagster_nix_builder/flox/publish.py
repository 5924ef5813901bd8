"""``flox publish``: its command lines and its preconditions, checked before anything calls it.

Flox publishes one package per call (``flox publish [-d <dir>] [-o <org>] [--signing-private-key <path>]
<package>``, see ``man flox-publish``), and refuses unless the environment's directory is tracked by git, its
tracked files are clean, the repository has a remote and the current revision has been pushed to it (Flox
clones the repository and builds from the clone), and the environment has at least one package installed.
:func:`check_publish_preconditions` states each unmet one as a sentence that says what to do, so nothing is
half-published because the third call found a dirty tree. Git runs through :func:`processes.run` with
argument lists; nothing is fetched (the remote-tracking branches are what this clone last saw).

The real ``flox publish`` needs the Flox CLI and a FloxHub account; neither exists on our machines, so it is
never run here. No Dagster import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Collection, Sequence
from pathlib import Path

from dagster_nix_builder.flox.build import validate_package_names
from dagster_nix_builder.nix import processes

MANIFEST = Path(".flox") / "env" / "manifest.toml"


def flox_publish_command(
    flox: str,
    project_dir: str | os.PathLike[str],
    package: str,
    *,
    org: str | None = None,
    signing_private_key: str | os.PathLike[str] | None = None,
) -> list[str]:
    """``flox publish -d <project_dir> [-o <org>] [--signing-private-key <path>] <package>``, one package."""
    (name,) = validate_package_names([package])
    command = [str(flox), "publish", "-d", str(project_dir)]
    if org:
        command += ["-o", str(org)]
    if signing_private_key:
        command += ["--signing-private-key", str(Path(signing_private_key).absolute())]  # Flox wants it absolute
    return [*command, name]


def flox_publish_commands(
    flox: str,
    project_dir: str | os.PathLike[str],
    packages: Sequence[str],
    *,
    known: Collection[str] | None = None,
    org: str | None = None,
    signing_private_key: str | os.PathLike[str] | None = None,
) -> list[list[str]]:
    """One ``flox publish`` command line per package (Flox publishes one package per call), in the given
    order, duplicates removed.

    Raises:
        FloxPackageError: a name is not a Flox package name, is not in ``known``, or no package is named.
    """
    names = validate_package_names(packages, known)
    return [
        flox_publish_command(flox, project_dir, name, org=org, signing_private_key=signing_private_key)
        for name in names
    ]


# ---- preconditions --------------------------------------------------------------------------------


def _git(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git") or "git"
    return processes.run([git, "-C", str(project_dir), *args], capture_output=True, text=True)


def check_publish_preconditions(project_dir: str | os.PathLike[str], *, manifest: bool = True) -> list[str]:
    """The reasons ``flox publish`` would refuse ``project_dir`` now, each saying what to do; empty if none.

    Checked: a git work tree; tracked files clean (each changed file named); HEAD a commit, on a branch with an
    upstream whose remote-tracking branch contains it (or, without an upstream, some remote branch does);
    with ``manifest``, a ``.flox/env/manifest.toml`` that installs at least one package.
    """
    project = Path(project_dir).resolve()
    if shutil.which("git") is None:
        return ["git is not installed: flox publish needs the environment tracked by git (apt-get install git)."]
    if not project.is_dir():
        return [f"{project} is not a directory."]
    inside = _git(project, "rev-parse", "--is-inside-work-tree")
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return [f"{project} is not in a git work tree: flox publish builds from a clone of the repository (git init, "
                "commit, add a remote and push)."]  # fmt: skip
    problems = _dirty(project)
    head = _git(project, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        return [*problems, f"{project} has no commit yet: commit the environment and push it."]
    problems += _unpushed(project, head.stdout.strip())
    if manifest:
        problems += _manifest_problems(project)
    return problems


def _dirty(project: Path) -> list[str]:
    """Tracked files of the whole repository with changes (staged or not; paths relative to its top), and
    untracked files under the project's ``.flox`` (Flox's clone would lack them)."""
    prefix = _git(project, "rev-parse", "--show-prefix").stdout.strip()  # the project within the repository
    flox_dir = f"{prefix}.flox"
    status = _git(project, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    if status.returncode != 0:
        return [f"git status failed in {project}: {status.stderr.strip()}"]
    changed: list[str] = []
    untracked: list[str] = []
    fields = iter(status.stdout.split("\0"))
    for entry in fields:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":
            next(fields, None)  # the rename's source
        if code == "??":
            if path == flox_dir or path.startswith(f"{flox_dir}/"):
                untracked.append(path)
        elif code != "!!":
            changed.append(path)
    problems = []
    if changed:
        problems.append(f"The git tree is not clean: {len(changed)} tracked file(s) changed: {_names(changed)}. "
                        "Commit them (and push), or restore them: flox publish builds the committed revision.")
    if untracked:
        problems.append(f"Untracked files under .flox: {_names(untracked)}. git add and commit them (and push): "
                        "Flox's clone of the repository would lack them.")  # fmt: skip
    return problems


def _unpushed(project: Path, head: str) -> list[str]:
    remotes = _git(project, "remote").stdout.split()
    if not remotes:
        return ["The repository has no remote: add one (git remote add origin <url>) and push HEAD "
                f"({head[:12]}); Flox clones the repository from its remote."]  # fmt: skip
    branch = _git(project, "symbolic-ref", "--quiet", "--short", "HEAD").stdout.strip()
    upstream = _git(project, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}")
    if branch and upstream.returncode == 0:
        name = upstream.stdout.strip()
        ahead = _git(project, "rev-list", "--count", f"{name}..HEAD")
        count = int(ahead.stdout.strip() or 0) if ahead.returncode == 0 else -1
        if count == 0:
            return []
        what = f"{count} commit(s)" if count > 0 else "HEAD"
        return [f"HEAD ({head[:12]}) is not pushed: {what} on {branch} not on its upstream {name}. "
                "Push them (git push), then publish."]  # fmt: skip
    contains = _git(project, "branch", "--remotes", "--contains", head)
    if contains.returncode == 0 and contains.stdout.strip():
        return []  # no upstream, but the revision is on a remote branch: Flox can clone it
    where = f"branch {branch} has no upstream" if branch else "HEAD is detached"
    return [f"HEAD ({head[:12]}) is not pushed: {where} and no remote branch contains it. Push it "
            f"(git push -u {remotes[0]} {branch or 'HEAD:<branch>'}), then publish."]  # fmt: skip


def _manifest_problems(project: Path) -> list[str]:
    path = project / MANIFEST
    if not path.is_file():
        return [f"{project} is not a Flox environment (no {MANIFEST}): run `flox init -d {project}`."]
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return [f"{path}: not valid TOML ({exc}): fix it, then publish."]
    if not data.get("install"):
        return [f"{path} installs no package: flox publish needs at least one in the environment "
                "(flox install <package>)."]  # fmt: skip
    return []


def _names(paths: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


__all__ = ["MANIFEST", "check_publish_preconditions", "flox_publish_command", "flox_publish_commands"]
