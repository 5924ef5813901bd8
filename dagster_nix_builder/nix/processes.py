"""Child processes that never outlive us: every program this package starts goes through here.

A ``SIGKILL`` of the Dagster process runs no cleanup code of ours, so the child is told to stop by the
kernel instead: Linux's parent-death signal (``PR_SET_PDEATHSIG``). ``setpriv --pdeathsig TERM`` (util-linux,
in every Debian) sets it and then execs the program, so the program itself gets ``SIGTERM`` the moment the
thread that started it dies: ``nix`` then stops its builders, the webserver its code server. Setting it from
``preexec_fn`` would spare one exec, but ``preexec_fn`` may deadlock in a process with threads (Dagster's
are), which is why it is not used.

Two rules follow from the kernel's semantics: the parent is the *thread* that started the child, so start
and wait for a child in the same thread (every caller here does); and the signal survives ``execve`` of
ordinary programs but not of set-user-ID ones (none are started here).

The other half is :func:`stop_group`, the one place that stops a child and its process group on purpose
(cancel, timeout, end of a check).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from functools import cache
from typing import Any

logger = logging.getLogger(__name__)

# How long a process group gets between SIGTERM and SIGKILL.
STOP_TIMEOUT_S = 10.0


@cache
def _setpriv() -> str | None:
    """``setpriv`` if it supports ``--pdeathsig`` (util-linux 2.33 and later), else None (warned once)."""
    found = shutil.which("setpriv") or next(
        (p for p in ("/usr/bin/setpriv", "/bin/setpriv") if os.access(p, os.X_OK)), None
    )
    if found is not None:
        try:
            help_text = subprocess.run(
                [found, "--help"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            help_text = ""
        if "--pdeathsig" in help_text:
            return found
    logger.warning(
        "setpriv with --pdeathsig (util-linux 2.33 or later) was not found: programs started by "
        "dagster-nix-builder will keep running if the Dagster process is killed with SIGKILL. "
        "Install util-linux (Debian: apt-get install util-linux)."
    )
    return None


def dies_with_parent(command: Sequence[str], sig: str = "TERM") -> list[str]:
    """``command`` prefixed so the program gets ``SIG<sig>`` when the thread that started it dies."""
    setpriv = _setpriv()
    if setpriv is None:
        return list(command)
    return [setpriv, f"--pdeathsig={sig}", "--", *command]


def popen(command: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """:class:`subprocess.Popen` of ``command`` that gets SIGTERM when the starting thread dies.

    ``proc.args`` is the command as given (without the ``setpriv`` prefix), for messages.
    """
    proc = subprocess.Popen(dies_with_parent(command), **kwargs)
    proc.args = list(command)
    return proc


def run(command: Sequence[str], *, check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` of ``command`` that gets SIGTERM when the starting thread dies."""
    proc = subprocess.run(dies_with_parent(command), check=False, **kwargs)
    proc.args = list(command)
    if check:
        proc.check_returncode()
    return proc


def stop_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop ``proc`` and its process group (it must lead one: ``start_new_session=True``): SIGTERM,
    wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code (None if it could not be reaped)."""
    if proc.poll() is not None:
        return proc.returncode
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


__all__ = ["dies_with_parent", "popen", "run", "stop_group"]
