"""Ask upstream what is new: the head of a git branch, and the newest release on the Python package index.

Neither lookup clones or downloads anything: `git ls-remote` lists refs, and pip's package finder lists the
versions of which an sdist is published, through the user's own pip configuration (index, mirrors, proxies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

# GitPython refuses to import without a git executable; let the code location load anyway and fail
# only where git is used, with our own message.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
import git
from packaging.version import InvalidVersion, Version

from dagster_nix_builder.nix import processes
from dagster_nix_builder.upstream.pins import validate_git_argument, validate_rev

DEFAULT_TIMEOUT_SECONDS = 60


class UpstreamError(RuntimeError):
    """Upstream could not be asked (unreachable, bad URL, missing ref, index failure)."""


def _branch_ref(branch: str) -> str:
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


def ls_remote_head(url: str, branch: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> str:
    """The commit a branch of a remote repository points at, without cloning.

    Args:
        url: Repository URL or path, passed to git as one argument.
        branch: Branch name (`master`) or full ref (`refs/heads/master`).
        timeout: Seconds before git is killed.

    Returns:
        The commit id, 40 lowercase hex digits.

    Raises:
        UpstreamError: If git fails (unreachable, not a repository), the ref does not exist, or git
            returns something that is not a commit id.
    """
    validate_git_argument(url, "git url")
    validate_git_argument(branch, "git branch")
    ref = _branch_ref(branch)
    g = git.cmd.Git()
    # Never wait for a password prompt in a sensor; fail instead.
    g.update_environment(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true", SSH_ASKPASS="/bin/true")
    try:
        out = str(g.ls_remote(url, ref, kill_after_timeout=timeout))
    except git.GitCommandError as e:
        stderr = (e.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
        raise UpstreamError(f"git ls-remote {url} {ref} failed (exit {e.status}): {stderr}") from e
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            try:
                return validate_rev(sha)
            except ValueError as e:
                raise UpstreamError(f"git ls-remote returned {sha!r} for {ref}") from e
    raise UpstreamError(f"{url} has no ref {ref}")


def commits_between(
    url: str, branch: str, good: str, bad: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> list[tuple[str, str]]:
    """The commits after `good` up to and with `bad` on `bad`'s first-parent line, oldest first, with their
    subjects: the range a bisect searches. Fetched into a temporary bare repository (commits and trees,
    no file contents where the server filters; deleted afterwards), from `branch`, or `bad` itself when the
    branch does not hold it.

    Raises:
        UpstreamError: If git fails, a rev is missing, or `good` is not an ancestor of `bad`.
    """
    validate_git_argument(url, "git url")
    validate_git_argument(branch, "git branch")
    good, bad = validate_rev(good), validate_rev(bad)
    with tempfile.TemporaryDirectory(prefix="dnb-bisect-history-") as tmp:
        g = git.cmd.Git(tmp)
        g.update_environment(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true", SSH_ASKPASS="/bin/true")

        def run(*args: str, check: bool = True) -> str | None:
            try:
                return str(g.execute(["git", *args], kill_after_timeout=timeout))
            except git.GitCommandError as e:
                if not check:
                    return None
                stderr = (e.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
                # git's own verdict, without the warnings around it (a server that does not filter, ...)
                said = [line for line in stderr.splitlines() if line.startswith(("fatal:", "error:"))][:1]
                raise UpstreamError(f"git {args[0]} {url} failed (exit {e.status}): {''.join(said) or stderr}") from e

        run("init", "--quiet", "--bare", tmp)
        run("remote", "add", "upstream", url)
        fetch = ["fetch", "--quiet", "--no-tags", "--filter=blob:none", "upstream"]
        run(*fetch, f"+{_branch_ref(branch)}:refs/heads/followed")
        for rev in (bad, good):
            if run("cat-file", "-e", f"{rev}^{{commit}}", check=False) is None:
                run(*fetch, rev)  # not on the branch: the server may still give it by id
        if run("merge-base", "--is-ancestor", good, bad, check=False) is None:
            raise UpstreamError(f"{good} is not an ancestor of {bad} in {url}: no range to bisect")
        out = run("log", "--first-parent", "--reverse", "--format=%H %s", f"{good}..{bad}") or ""
    commits = [tuple(line.split(" ", 1)) if " " in line else (line, "") for line in out.splitlines() if line]
    return [(validate_rev(sha), subject) for sha, subject in commits]


# `pip index versions` ignores --no-binary, so it cannot tell a published sdist from a wheel. This asks
# pip's own package finder (the one `pip download` uses), configured by pip from the user's
# configuration plus `pip_args`, for the candidates that are sdists. It lists links, downloads nothing.
# The finder skips an index page it cannot fetch and only logs why (at debug level): those messages are
# collected, so that an unreachable index is told apart from a release that is not published.
_SDIST_VERSIONS_SCRIPT = """
import json, logging, sys
from pip._internal.commands import create_command

class Failures(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []
    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Could not fetch URL"):
            self.messages.append(message)

failures = Failures()
collector = logging.getLogger("pip._internal.index.collector")
collector.setLevel(logging.DEBUG)
collector.addHandler(failures)
command = create_command("download")
packages = json.loads(sys.argv[1])
options, _ = command.parse_args(["--no-deps", "--no-binary", ":all:", *sys.argv[2:], *packages])
found = {}
with command._build_session(options) as session:
    finder = command._build_package_finder(options=options, session=session)
    for package in packages:
        candidates = finder.find_all_candidates(package)
        found[package] = sorted({str(c.version) for c in candidates if not c.link.is_wheel})
print(json.dumps({"found": found, "failures": failures.messages}))
"""


class IndexUnreachableError(UpstreamError):
    """The package index could not be read (network, TLS, server error): nothing is known about releases."""


def _is_not_found(message: str) -> bool:
    # An index answers 404 for a project it does not have: an answer, not a failure to ask.
    return " 404 " in message or "404 Client Error" in message


def sdist_versions(
    package: str,
    *,
    pip_args: Sequence[str] = (),
    python: str = sys.executable,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    pre: bool = False,
) -> list[str]:
    """Versions of a package on the index that have an sdist, newest first.

    Asks pip's package finder with the user's pip configuration plus `pip_args` (e.g.
    `--no-index --find-links DIR` for a local folder), keeping sdists only. Nothing is downloaded.

    Args:
        package: The distribution name.
        pip_args: Extra pip arguments.
        python: The interpreter whose pip to use.
        timeout: Seconds before pip is killed.
        pre: Include pre-releases.

    Returns:
        The versions, or an empty list if the index has no sdist of the package.

    Raises:
        IndexUnreachableError: If the index could not be read (network, TLS, server error).
        UpstreamError: If pip fails (bad arguments, a pip without the finder this relies on).
    """
    return sdist_versions_of([package], pip_args=pip_args, python=python, timeout=timeout, pre=pre)[package]


def sdist_versions_of(
    packages: Sequence[str],
    *,
    pip_args: Sequence[str] = (),
    python: str = sys.executable,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    pre: bool = False,
) -> dict[str, list[str]]:
    """:func:`sdist_versions` of several packages in one pip process (a finder per call costs ~1 s)."""
    for package in packages:
        validate_git_argument(package, "package name")
    cmd = [python, "-c", _SDIST_VERSIONS_SCRIPT, json.dumps(list(packages)), *pip_args]
    try:
        proc = processes.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UpstreamError(f"listing the sdists of {', '.join(packages)} failed: {e}") from e
    try:
        if proc.returncode != 0:
            raise ValueError(proc.stderr.strip().splitlines()[-1:] or f"exit {proc.returncode}")
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        result = {p: [str(v) for v in answer["found"][p]] for p in packages}
        failures = [str(m) for m in answer["failures"] if not _is_not_found(str(m))]
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise UpstreamError(f"listing the sdists of {', '.join(packages)} with pip failed: {e}") from e
    if failures:
        raise IndexUnreachableError(
            f"the package index could not be read (a network or server error, not a missing release): "
            f"{failures[0]}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
        )
    return {
        p: sorted((v for v in vs if pre or not _version_key(v).is_prerelease), key=_version_key, reverse=True)
        for p, vs in result.items()
    }


def _version_key(v: str) -> Version:
    try:
        return Version(v)
    except InvalidVersion:
        return Version("0")


def latest_release(
    packages: Sequence[str],
    *,
    pip_args: Sequence[str] = (),
    python: str = sys.executable,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> str | None:
    """The newest version for which every one of `packages` has an sdist on the index (a set whose
    packages share one version; the release update asks the package set's declarations instead).

    Returns:
        The version, or None if no version has all of them.

    Raises:
        UpstreamError: If the index cannot be asked.
    """
    common: set[str] | None = None
    for versions in sdist_versions_of(packages, pip_args=pip_args, python=python, timeout=timeout).values():
        common = set(versions) if common is None else common & set(versions)
    if not common:
        return None
    return max(common, key=_version_key)


def missing_sdists(
    version: str,
    packages: Sequence[str],
    *,
    pip_args: Sequence[str] = (),
    python: str = sys.executable,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[str]:
    """Which of `packages` have no sdist of `version` on the index (empty when the release is complete).

    Raises:
        IndexUnreachableError: If the index could not be read, so nothing can be said about the release.
        UpstreamError: If pip fails otherwise.
    """
    found = sdist_versions_of(packages, pip_args=pip_args, python=python, timeout=timeout, pre=True)
    return [p for p in packages if version not in found[p]]
