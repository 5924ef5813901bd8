"""The Nix settings this project passes per invocation (``NIX_CONFIG``), never by editing nix.conf.

Every Nix command gets :data:`DEFAULT_NIX_CONFIG`. Builds in the bootstrap scope also get the host
paths its builders borrow (:func:`bootstrap_sandbox_paths`): with the sandbox on (Nix's default, and
Debian 13's), a builder sees only the store and what ``sandbox-paths`` names, so the host's
interpreter, ``tar`` and ``cp`` must be declared. The nixpkgs scope gets none: it stays pure.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

DEFAULT_NIX_CONFIG = "experimental-features = nix-command\nsubstituters ="
DEFAULT_HOST_PYTHON = "/usr/bin/python3"

# Where a Debian-like host keeps the programs and libraries the bootstrap builders run. On a
# usr-merged system /bin, /lib and /lib64 are symlinks into /usr, which Nix recreates as symlinks.
HOST_PROGRAM_PATHS = ("/usr", "/lib", "/lib64", "/bin")
# The pip configuration the fixed-output fetches read (a user's own lies in HOME, which builders lack).
PIP_CONFIG_PATHS = ("/etc/pip.conf", "/etc/xdg/pip")


def bootstrap_sandbox_paths(host_python: str = DEFAULT_HOST_PYTHON) -> list[str]:
    """The host paths a sandboxed bootstrap build needs, those of them that exist here."""
    paths = []
    for path in HOST_PROGRAM_PATHS:
        # A usr-merged /bin is a symlink, and Nix's own sandbox-paths often put /bin/sh inside it.
        if path == "/bin" and os.path.islink(path):
            continue
        if os.path.lexists(path):
            paths.append(path)
    prefix = Path(host_python).resolve().parent.parent  # e.g. /opt/python3.12 for /opt/python3.12/bin/python3
    if not any(prefix == Path(p) or Path(p) in prefix.parents for p in paths):
        paths.append(str(prefix))
    config_file = os.environ.get("PIP_CONFIG_FILE")
    for path in (*PIP_CONFIG_PATHS, *([config_file] if config_file and config_file != os.devnull else [])):
        if os.path.exists(path) and path not in paths:
            paths.append(path)
    return paths


def bootstrap_nix_config(base: str = DEFAULT_NIX_CONFIG, host_python: str = DEFAULT_HOST_PYTHON) -> str:
    """``base`` plus the ``extra-sandbox-paths`` of the bootstrap scope (ignored where the sandbox is off)."""
    return f"{base}\nextra-sandbox-paths = {' '.join(bootstrap_sandbox_paths(host_python))}"


@cache
def nixpkgs_on_nix_path(nix_instantiate: str = "nix-instantiate") -> bool:
    """Whether ``<nixpkgs>`` resolves, which makes the package set's ``scope = "auto"`` pick nixpkgs."""
    try:
        proc = subprocess.run([nix_instantiate, "--find-file", "nixpkgs"], capture_output=True, check=False)
    except OSError:
        return False
    return proc.returncode == 0


def uses_bootstrap_scope(scope: str | None, nix_instantiate: str = "nix-instantiate") -> bool:
    """Whether the package set evaluated with ``scope`` builds with the bootstrap scope."""
    if scope == "bootstrap":
        return True
    if scope in (None, "", "auto"):
        return not nixpkgs_on_nix_path(nix_instantiate)
    return False


def nix_config_for_scope(base: str, scope: str | None, host_python: str = DEFAULT_HOST_PYTHON,
                         nix_instantiate: str = "nix-instantiate") -> str:
    """The ``NIX_CONFIG`` of a command on the package set with ``scope``."""
    if uses_bootstrap_scope(scope, nix_instantiate):
        return bootstrap_nix_config(base, host_python)
    return base
