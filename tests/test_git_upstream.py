"""Upstream lookups against a real local bare repository and a local package index folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from upstream_repo import Upstream, git, world_readable_tmpdir

from dagster_nix_builder.upstream.lookup import (
    IndexUnreachableError,
    UpstreamError,
    latest_release,
    ls_remote_head,
    missing_sdists,
    sdist_versions,
)
from dagster_nix_builder.upstream.pins import PinsError


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    root = world_readable_tmpdir("dnb-upstream-")
    yield Upstream(root)
    shutil.rmtree(root, ignore_errors=True)


def test_head_follows_pushes(upstream: Upstream) -> None:
    rev1 = upstream.push({"a.txt": "1"}, "one")
    assert ls_remote_head(upstream.url, "master") == rev1
    rev2 = upstream.push({"a.txt": "2"}, "two")
    assert ls_remote_head(upstream.url, "master") == rev2
    assert ls_remote_head(upstream.url, "refs/heads/master") == rev2


def test_branch_not_confused_with_tag_or_other_branch(upstream: Upstream) -> None:
    rev1 = upstream.push({"a.txt": "1"}, "one")
    git(upstream.work, "tag", "master-old")
    git(upstream.work, "push", "-q", str(upstream.bare), "HEAD:refs/heads/release/master", "master-old")
    rev2 = upstream.push({"a.txt": "2"}, "two")
    assert ls_remote_head(upstream.url, "master") == rev2
    assert ls_remote_head(upstream.url, "release/master") == rev1


def test_unreachable_and_missing_refs_raise_upstream_error(upstream: Upstream) -> None:
    upstream.push({"a.txt": "1"}, "one")
    with pytest.raises(UpstreamError, match="failed"):
        ls_remote_head(str(upstream.root / "missing.git"), "master")
    with pytest.raises(UpstreamError, match="no ref refs/heads/nope"):
        ls_remote_head(upstream.url, "nope")


@pytest.mark.parametrize(("url", "branch"), [("--upload-pack=touch /tmp/pwned", "master"), ("/x", "-h")])
def test_option_like_arguments_are_refused(url: str, branch: str) -> None:
    with pytest.raises(PinsError):
        ls_remote_head(url, branch)


def _index(folder: Path, files: list[str]) -> list[str]:
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"")
    return ["--no-index", "--find-links", str(folder)]


def test_sdist_versions_ignore_wheels_and_prereleases(tmp_path: Path) -> None:
    args = _index(
        tmp_path / "index",
        [
            "dagster_pipes-1.13.27.tar.gz",
            "dagster_pipes-1.13.28.tar.gz",
            "dagster_pipes-1.13.29-py3-none-any.whl",  # wheel only: not a published sdist
            "dagster_pipes-1.14.0rc1.tar.gz",
        ],
    )
    assert sdist_versions("dagster-pipes", pip_args=args) == ["1.13.28", "1.13.27"]
    assert sdist_versions("dagster-nothing", pip_args=args) == []


def test_latest_release_needs_all_five(tmp_path: Path) -> None:
    names = ["dagster", "dagster_shared", "dagster_pipes", "dagster_graphql", "dagster_webserver"]
    files = [f"{n}-{v}.tar.gz" for n in names for v in ("1.13.9", "1.13.10")]
    files += [f"{n}-1.13.11.tar.gz" for n in names if n != "dagster_graphql"]
    args = _index(tmp_path / "index", files)
    packages = [n.replace("_", "-") for n in names]
    assert latest_release(packages, pip_args=args) == "1.13.10"  # 1.13.10 > 1.13.9 as versions, not strings
    assert missing_sdists("1.13.11", packages, pip_args=args) == ["dagster-graphql"]
    assert missing_sdists("1.13.10", packages, pip_args=args) == []


UNREACHABLE_INDEX = ["--index-url", "http://127.0.0.1:9/simple", "--retries", "0", "--timeout", "5"]


def test_unreachable_index_is_not_a_missing_release(tmp_path: Path) -> None:
    # Nothing listens on port 9: pip's finder would skip the page and report no versions at all.
    with pytest.raises(IndexUnreachableError, match=r"could not be read \(a network or server error, not a "
                       r"missing release\): Could not fetch URL http://127.0.0.1:9/simple/dagster/: connection error"):
        missing_sdists("1.13.27", ["dagster"], pip_args=UNREACHABLE_INDEX)
    with pytest.raises(IndexUnreachableError):
        latest_release(["dagster"], pip_args=UNREACHABLE_INDEX)
    # A reachable index without the release is an answer: the missing sdists.
    args = _index(tmp_path / "index", ["dagster_pipes-1.13.27.tar.gz"])
    assert missing_sdists("1.13.27", ["dagster-pipes", "dagster-shared"], pip_args=args) == ["dagster-shared"]
