"""ruff (the rule set of pyproject.toml) and mypy pass on the whole project: the tools run, pytest reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)


def test_ruff_passes():
    proc = run(str(BIN / "ruff"), "check", "dagster_nix_builder", "tests", "bench", "nix", "scripts")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_mypy_passes():
    proc = run(str(BIN / "mypy"), "--cache-dir", str(REPO / ".test-results" / "mypy-cache"))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
