"""Whatever nix/pins.json says, the code location loads: pins that cannot be built are a failed build of
dagster-src (blocking what depends on it) with the reason, never an evaluation error. Real Nix, the real
`nix/` package set (copied, so a test may break its pins)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import materialize
from repo_packages import PACKAGES
from upstream_repo import Upstream, world_readable_tmpdir

from dagster_nix_builder import NixResource
from dagster_nix_builder.adapters.assets import nix_assets
from dagster_nix_builder.nix.settings import bootstrap_nix_config
from dagster_nix_builder.upstream.pins import FAKE_HASH

NIX_DIR = Path(__file__).resolve().parent.parent / "nix"
REV = "0123456789abcdef0123456789abcdef01234567"
HASH = "sha256-" + "B" * 43 + "="

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="Nix is not installed")


@pytest.fixture
def nix_copy() -> Iterator[Path]:
    """A private copy of nix/ in a folder Nix's build users can read (a local upstream may lie beside it)."""
    root = world_readable_tmpdir("dnb-git-mode-")
    shutil.copytree(NIX_DIR, root / "nix")
    # The self package (nix/packages/dagster-nix-builder.nix) builds from the project around nix/.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(NIX_DIR.parent / name, root / name)
    shutil.copytree(NIX_DIR.parent / "dagster_nix_builder", root / "dagster_nix_builder",
                    ignore=shutil.ignore_patterns("__pycache__", ".local_defs_state"))
    yield root / "nix"
    shutil.rmtree(root, ignore_errors=True)


def write_pins(nix_dir: Path, edit) -> dict:
    pins = json.loads((nix_dir / "pins.json").read_text())
    edit(pins)
    (nix_dir / "pins.json").write_text(json.dumps(pins, indent=2) + "\n")
    return pins


def nix_env(nix_dir: Path) -> dict[str, str]:
    import os

    return {**os.environ, "NIX_CONFIG": bootstrap_nix_config(nix_dir=nix_dir), "NIX_PATH": ""}


def nix_build(nix_dir: Path, *attrs: str) -> subprocess.CompletedProcess[str]:
    cmd = ["nix-build", str(nix_dir), "--no-out-link", "--argstr", "scope", "bootstrap"]
    for attr in attrs:
        cmd += ["-A", attr]
    return subprocess.run(cmd, capture_output=True, text=True, env=nix_env(nix_dir), check=False)


def git_pins(**git: object):
    def edit(pins: dict) -> None:
        pins["source"] = "git"
        pins["git"].update(git)

    return edit


def _release_without(package: str):
    def edit(pins: dict) -> None:
        del pins["release"]["hashes"][package]

    return edit


def _release_hash(package: str, value: object):
    def edit(pins: dict) -> None:
        pins["release"]["hashes"][package] = value

    return edit


def _source(value: object):
    def edit(pins: dict) -> None:
        pins["source"] = value

    return edit


def _drop_url(pins: dict) -> None:
    pins["source"] = "git"
    pins["git"].update(rev=REV, hash=HASH)
    del pins["git"]["url"]


BAD_PINS = {
    "rev-null": (git_pins(rev=None, hash=None), "nix/pins.json: git.rev is not pinned; run the update job"),
    "rev-short": (git_pins(rev="abc123", hash=HASH), 'git.rev must be a full 40-hex commit, not "abc123"'),
    "rev-number": (git_pins(rev=42, hash=HASH), "git.rev must be a full 40-hex commit, not 42"),
    "hash-null": (git_pins(rev=REV, hash=None), f"git.hash is not set for rev {REV}"),
    "hash-malformed": (
        git_pins(rev=REV, hash="md5-xyz"), 'git.hash must be an SRI sha256 hash (sha256-<43 base64>=), not "md5-xyz"'
    ),
    "version-bad": (
        git_pins(rev=REV, hash=HASH, version="a b"), 'git.version must be a version such as "1!0+dev", not "a b"'
    ),
    "url-missing": (_drop_url, "git.url must be a repository URL or path, not null"),
    "source-unknown": (_source("svn"), 'nix/pins.json: source must be "release" or "git", not "svn"'),
    "release-hash-missing": (_release_without("dagster-shared"), "release.hashes has no hash for dagster-shared"),
    "release-hash-malformed": (
        _release_hash("dagster", "abc"),
        'release.hashes.dagster must be an SRI sha256 hash (sha256-<43 base64>=), not "abc"',
    ),
}


@pytest.mark.parametrize("case", list(BAD_PINS))
def test_unusable_pins_load_and_fail_the_source_build_with_the_reason(nix_copy: Path, case: str) -> None:
    edit, message = BAD_PINS[case]
    write_pins(nix_copy, edit)

    graph = NixResource(nix_dir=str(nix_copy), scope="bootstrap").load_graph()  # no evaluation error
    assert set(graph) == set(PACKAGES)
    assert graph["dagster"].deps == ("dagster-pipes", "dagster-shared", "dagster-src")  # the same edges
    # Git pins that cannot be built are a stand-in that fails; the release tree checks its pins as it builds.
    stand_in = "-dagster-src-1.13.27.drv" if case.startswith("release-") else "-dagster-src-unusable-pins.drv"
    assert graph["dagster-src"].drv_path.endswith(stand_in)

    result = nix_build(nix_copy, "dagster-src")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_unpinned_git_source_is_a_failed_materialization_that_blocks_downstream(nix_copy: Path, tmp_path: Path) -> None:
    write_pins(nix_copy, git_pins(rev=None, hash=None))
    nix = NixResource(nix_dir=str(nix_copy), scope="bootstrap", out_link_dir=str(tmp_path / "results"))
    graph = nix.load_graph()

    result = materialize(
        [nix_assets(graph)], resources={"nix": nix}, selection=["dagster-src", "dagster-pipes"], raise_on_error=False
    )

    assert not result.success
    assert result.get_asset_materialization_events() == []
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.event_specific_data.error)
    assert "dagster-src: build of" in text and "dagster-src-unusable-pins.drv failed" in text
    assert "nix/pins.json: git.rev is not pinned; run the update job" in text
    assert "dagster-pipes: dependency failed: dagster-src" in text


def test_definitions_load_with_the_shipped_unpinned_git_source(
    nix_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pins(nix_copy, git_pins())  # the shipped git section: rev null, hash null, version 1!0+dev
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_NIX_DIR", str(nix_copy))
    monkeypatch.setenv("DAGSTER_NIX_SCOPE", "bootstrap")
    monkeypatch.delenv("DAGSTER_NIX_CONFIG", raising=False)
    from dagster_nix_builder.definitions import build_definitions

    defs = build_definitions()
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == set(PACKAGES)
    assert defs.resolve_job_def("update_dagster_src") is not None
    assert defs.resolve_sensor_def("dagster_upstream_commit_sensor") is not None


def _tiny_upstream(root: Path) -> tuple[Upstream, str, str]:
    upstream = Upstream(root)
    rev1 = upstream.push({"README": "one\n"}, "one")
    rev2 = upstream.push({"README": "two\n"}, "two")
    return upstream, rev1, rev2


def _got(stderr: str) -> str:
    m = re.search(r"got:\s+(sha256-\S+)", stderr)
    assert m, stderr[-2000:]
    return m.group(1)


def test_new_rev_with_the_old_hash_is_a_hash_mismatch_not_the_old_tree(nix_copy: Path) -> None:
    upstream, rev1, rev2 = _tiny_upstream(nix_copy.parent)
    write_pins(nix_copy, git_pins(url=upstream.url, rev=rev1, hash=FAKE_HASH))
    hash1 = _got(nix_build(nix_copy, "dagster-src").stderr)
    write_pins(nix_copy, git_pins(hash=hash1))
    first = nix_build(nix_copy, "dagster-src")
    assert first.returncode == 0, first.stderr[-2000:]
    tree1 = first.stdout.strip()
    assert tree1.endswith(f"-dagster-src-git-{rev1[:12]}") and Path(tree1, "README").read_text() == "one\n"

    write_pins(nix_copy, git_pins(rev=rev2))  # the rev edited by hand, the hash kept
    second = nix_build(nix_copy, "dagster-src")

    assert second.returncode != 0, f"built {second.stdout.strip()} for {rev2} with the hash of {rev1}"
    assert "hash mismatch in fixed-output derivation" in second.stderr
    assert f"-dagster-src-git-{rev2[:12]}.drv" in second.stderr
    assert re.search(rf"specified:\s+{re.escape(hash1)}", second.stderr)
    assert _got(second.stderr) != hash1


def test_store_names_are_sanitized_and_the_version_stays_real(nix_copy: Path) -> None:
    write_pins(nix_copy, git_pins(rev=REV, hash=HASH, version="1!0+dev"))
    expr = (
        f"let s = import {nix_copy} {{ scope = \"bootstrap\"; }}; in "
        "{ version = s.dagster-src.version; cut = (s.dagster-src.subdir \"python_modules/dagster\").name; }"
    )
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        capture_output=True, text=True, env=nix_env(nix_copy), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"version": "1!0+dev", "cut": "dagster-source-1-0-dev"}


def test_every_package_name_is_valid_with_masters_version(nix_copy: Path) -> None:
    write_pins(nix_copy, git_pins(rev=REV, hash=HASH, version="1!0+dev"))
    graph = NixResource(nix_dir=str(nix_copy), scope="bootstrap").load_graph()
    assert graph["dagster"].version == "1!0+dev"
    assert graph["dagster"].drv_path.endswith("-dagster-1-0-dev.drv")
    assert all(graph[attr].eval_error is None for attr in graph), [graph[a].eval_error for a in graph]
