"""The Nix settings this project passes per invocation (``NIX_CONFIG``), never by editing nix.conf.

Every Nix command gets :data:`DEFAULT_NIX_CONFIG`. Builds in the bootstrap scope also get the host
paths its builders borrow (:func:`bootstrap_sandbox_paths`): with the sandbox on (Nix's default, and
Debian 13's), a builder sees only the store and what ``sandbox-paths`` names, so the host's
interpreter, ``tar`` and ``cp`` must be declared. The nixpkgs scope gets none: it stays pure.
"""

from __future__ import annotations

import configparser
import json
import os
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dagster_nix_builder.nix import processes

DEFAULT_NIX_CONFIG = "experimental-features = nix-command\nsubstituters ="
DEFAULT_HOST_PYTHON = "/usr/bin/python3"

# Where a usr-merged host (Debian 12 and later) keeps the programs and libraries the bootstrap
# builders run; /lib and /lib64 are symlinks into /usr, which Nix recreates as symlinks. Never /bin:
# Nix puts its own /bin/sh there, and through a bind of the host's /bin that mount point would
# overwrite the host's /bin/sh (seen: an emptied dash).
HOST_PROGRAM_PATHS = ("/usr", "/lib", "/lib64")
# The pip configuration the fixed-output fetches read (a user's own lies in HOME, which builders lack).
PIP_CONFIG_PATHS = ("/etc/pip.conf", "/etc/xdg/pip")
PIP_LOCATION_VARIABLES = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
PIP_LOCATION_KEYS = ("find-links", "index-url", "extra-index-url")


def bootstrap_sandbox_paths(
    host_python: str = DEFAULT_HOST_PYTHON, nix_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """The host paths a sandboxed bootstrap build needs, those of them that exist here: programs,
    the interpreter, pip's configuration and the local folders it names, a local git upstream."""
    paths = [path for path in HOST_PROGRAM_PATHS if os.path.lexists(path)]
    # The builders' /bin/sh: Debian 12's Nix puts none into the sandbox, Debian 13's a static bash. The
    # host's own shell, mounted onto a file Nix creates in the sandbox's own /bin (a symlink such as
    # /bin/sh -> dash would be copied as a dangling link, hence the real path).
    shell = os.path.realpath("/bin/sh")
    if shell.startswith("/usr/"):
        paths.append(f"/bin/sh={shell}")
    prefix = Path(host_python).resolve().parent.parent  # e.g. /opt/python3.12 for /opt/python3.12/bin/python3
    config_file = os.environ.get("PIP_CONFIG_FILE")
    configs = [*PIP_CONFIG_PATHS, *([config_file] if config_file and config_file != os.devnull else [])]
    for path in [str(prefix), *configs, *_local_pip_locations(configs), *local_upstreams(nix_dir)]:
        if os.path.exists(path) and not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    return paths


def local_path(location: str) -> str | None:
    """The directory of a local location (a path or `file://` URL), None for a remote one."""
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return location if location.startswith("/") else None


def _local_pip_locations(config_files: list[str]) -> list[str]:
    """Local folders the fetches' pip is pointed at (find-links, file:// indexes), from the
    environment and the system configuration files."""
    values = [os.environ.get(name, "") for name in PIP_LOCATION_VARIABLES]
    for file in config_files:
        parser = configparser.ConfigParser()
        path = Path(file)
        try:
            parser.read([*(sorted(path.glob("*.conf")) if path.is_dir() else [path])])
        except (configparser.Error, OSError):
            continue  # pip itself reports a broken configuration, naming the file
        values += [parser.get(section, key, fallback="") for section in parser.sections() for key in PIP_LOCATION_KEYS]
    return [local for value in values for location in value.split() if (local := local_path(location))]


def local_upstreams(nix_dir: str | os.PathLike[str] | None) -> list[str]:
    """The git upstream of ``<nix_dir>/pins.json`` when it is a local path or ``file://`` URL: the
    fetch runs in the sandbox and must see it (a remote URL needs only the network)."""
    if nix_dir is None:
        return []
    try:
        url = json.loads(Path(nix_dir, "pins.json").read_text())["git"]["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # the package set itself reports a missing or broken pins.json
    local = local_path(url) if isinstance(url, str) else None
    return [local] if local else []


def bootstrap_nix_config(
    base: str = DEFAULT_NIX_CONFIG,
    host_python: str = DEFAULT_HOST_PYTHON,
    nix_dir: str | os.PathLike[str] | None = None,
) -> str:
    """``base`` plus the ``extra-sandbox-paths`` of the bootstrap scope (ignored where the sandbox is off)."""
    return f"{base}\nextra-sandbox-paths = {' '.join(bootstrap_sandbox_paths(host_python, nix_dir))}"


@cache
def nixpkgs_on_nix_path(nix_instantiate: str = "nix-instantiate") -> bool:
    """Whether ``<nixpkgs>`` resolves, which makes the package set's ``scope = "auto"`` pick nixpkgs."""
    try:
        proc = processes.run([nix_instantiate, "--find-file", "nixpkgs"], capture_output=True)
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


def nix_config_for_scope(
    base: str,
    scope: str | None,
    host_python: str = DEFAULT_HOST_PYTHON,
    nix_instantiate: str = "nix-instantiate",
    nix_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The ``NIX_CONFIG`` of a command on the package set in ``nix_dir`` with ``scope``."""
    if uses_bootstrap_scope(scope, nix_instantiate):
        return bootstrap_nix_config(base, host_python, nix_dir)
    return base
