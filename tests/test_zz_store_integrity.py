"""Last of the suite (files run in name order): nothing any test ran wrote into the Nix store.

Every store path the suite added, and the closure of the real six (built or reused by the suite, and run
by it: wrappers, checks, the webserver), is verified with `nix-store --verify-path`, which hashes each
path's contents and compares the NAR hash Nix registered when it was built.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import REPO_NIX, STORE, STORE_BEFORE

from dagster_nix_builder.nix.settings import bootstrap_nix_config

pytestmark = pytest.mark.skipif(shutil.which("nix-store") is None, reason="Nix is not installed")
SIX = ["dagster-src", "dagster-shared", "dagster-pipes", "dagster", "dagster-graphql", "dagster-webserver"]


def _valid(paths: list[str]) -> list[str]:
    if not paths:
        return []
    invalid = subprocess.run(["nix-store", "--check-validity", "--print-invalid", *paths],
                             capture_output=True, text=True, check=True).stdout.split()
    return sorted(set(paths) - set(invalid))


def test_every_path_the_suite_added_or_ran_still_verifies(request: pytest.FixtureRequest):
    added = [str(p) for p in set(STORE.iterdir()) - request.config.stash[STORE_BEFORE]
             if not p.name.startswith(".") and not p.name.endswith((".drv", ".lock", ".chroot", ".check"))]
    env = {**os.environ, "NIX_CONFIG": bootstrap_nix_config(), "NIX_PATH": ""}
    six = subprocess.run(["nix-build", str(REPO_NIX), *(a for attr in SIX for a in ("-A", attr)), "--no-out-link"],
                         capture_output=True, text=True, env=env, check=False)
    used = (subprocess.run(["nix-store", "-qR", *six.stdout.split()], capture_output=True, text=True,
                           check=True).stdout.split() if six.returncode == 0 else [])
    paths = _valid(sorted(set(added) | set(used)))
    assert paths, "nothing to verify: the suite built nothing and the six are not built"
    verify = subprocess.run(["nix-store", "--verify-path", *paths], capture_output=True, text=True, check=False)
    modified = [line for line in verify.stderr.splitlines() if "was modified" in line]
    assert verify.returncode == 0 and not modified, "\n".join(modified or [verify.stderr[-3000:]])
    print(f"{len(paths)} store paths verified ({len(added)} added by the suite)")
