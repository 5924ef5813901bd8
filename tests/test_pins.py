"""The pin file: validation, stable formatting, atomic writes that survive a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_nix_builder.upstream.pins import (
    FAKE_HASH,
    Pins,
    PinsError,
    atomic_write_bytes,
    parse_pins,
    read_pins,
    remove_stale_temp_files,
    render_pins,
    stale_temp_files,
    validate_git_argument,
    validate_rev,
    write_pins,
)

REPO_PINS = Path(__file__).resolve().parent.parent / "nix" / "pins.json"
SAMPLE = {
    "source": "release",
    "release": {"version": "1.13.27", "hashes": {"dagster": FAKE_HASH, "dagster-pipes": FAKE_HASH}},
    "git": {
        "url": "https://github.com/dagster-io/dagster.git",
        "branch": "master",
        "rev": None,
        "hash": None,
        "version": "1!0+dev",
    },
}


def sample_bytes() -> bytes:
    return (json.dumps(SAMPLE, indent=2) + "\n").encode()


def test_render_is_stable_and_round_trips() -> None:
    pins = parse_pins(sample_bytes())
    assert render_pins(pins) == sample_bytes()
    assert render_pins(parse_pins(render_pins(pins))) == render_pins(pins)


@pytest.mark.skipif(not REPO_PINS.exists(), reason="nix/pins.json not written yet")
def test_repository_pins_are_valid_and_in_stable_format() -> None:
    assert render_pins(read_pins(REPO_PINS)) == REPO_PINS.read_bytes()


def test_unknown_keys_are_kept() -> None:
    data = {**SAMPLE, "comment": "kept"}
    assert Pins.from_dict(data).to_dict()["comment"] == "kept"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("git", "rev", "abc"),
        ("git", "rev", "z" * 40),
        ("git", "hash", "sha256-short="),
        ("git", "hash", "md5-" + "A" * 22),
        ("git", "url", "--upload-pack=touch /tmp/x"),
        ("git", "branch", "-b"),
        ("git", "branch", "master\nevil"),
        ("release", "version", ""),
        ("release", "version", "1.0 ; rm"),
    ],
)
def test_invalid_values_are_rejected(section: str, key: str, value: str) -> None:
    data = json.loads(json.dumps(SAMPLE))
    data[section][key] = value
    with pytest.raises(PinsError):
        Pins.from_dict(data)


def test_malformed_files_are_rejected() -> None:
    with pytest.raises(PinsError):
        parse_pins(b"{not json")
    with pytest.raises(PinsError):
        parse_pins(b'{"source": "git"}')
    with pytest.raises(PinsError):
        parse_pins(json.dumps({**SAMPLE, "source": "svn"}).encode())


def test_rev_and_argument_validation() -> None:
    assert validate_rev("A" * 40) == "a" * 40
    with pytest.raises(PinsError):
        validate_rev("a" * 41)
    with pytest.raises(PinsError):
        validate_git_argument("-oProxyCommand=x", "git url")
    assert validate_git_argument("/tmp/up.git", "git url") == "/tmp/up.git"


def test_atomic_write_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_bytes(sample_bytes())
    path.chmod(0o640)
    pins = parse_pins(sample_bytes()).with_git(rev="a" * 40, hash=FAKE_HASH)
    write_pins(path, pins)
    assert read_pins(path) == pins
    assert (path.stat().st_mode & 0o777) == 0o640
    assert not stale_temp_files(path)


def test_failed_write_leaves_original_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_bytes(sample_bytes())

    def boom(_tmp: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new", before_replace=boom)
    assert path.read_bytes() == sample_bytes()
    assert not stale_temp_files(path)


_KILLED_WRITER = """
import sys, time
from dagster_nix_builder.upstream.pins import atomic_write_bytes
def wait(tmp):
    print(tmp, flush=True)
    time.sleep(60)
atomic_write_bytes(sys.argv[1], b'{"half": ' + b"x" * 100000, before_replace=wait)
"""


def test_writer_killed_between_write_and_rename_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_bytes(sample_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        tmp = Path(proc.stdout.readline().strip())  # the temp file is complete, the rename not done
        assert tmp.exists() and tmp.parent == path.parent
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert path.read_bytes() == sample_bytes()
    assert stale_temp_files(path) == [tmp]
    assert remove_stale_temp_files(path) == [tmp]
    assert not stale_temp_files(path)
