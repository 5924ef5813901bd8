"""How an update runs Nix: a :class:`~dagster_nix_builder.nix.cli.NixCli` for the checkout's package set in
one source mode, and `nix build` of that set as candidate pins would make it (`--arg pins`), which is how
the hash and version steps see a source without writing anything.

Also the one helper the update's long commands share (Nix builds, lock.py): wait with a time limit, and
stop the child's whole process group on timeout or interrupt.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dagster_nix_builder.nix.build import LOG_TAIL_LINES
from dagster_nix_builder.nix.cli import NixCli, describe, json_expression
from dagster_nix_builder.nix.log_format import ActivityStarted, BuildLogLine, error_messages, parse_line
from dagster_nix_builder.nix.processes import stop_group
from dagster_nix_builder.nix.settings import local_path, uses_bootstrap_scope
from dagster_nix_builder.upstream.pins import Pins
from dagster_nix_builder.upstream.update.model import Log, UpdateSettings


def nix_cli(
    settings: UpdateSettings, repo_dir: Path, mode: str, pins: Pins | None = None, *, pass_pins: bool = False
) -> NixCli:
    """The Nix CLI of the checkout's package set with `source = mode`.

    With `pins` (candidate pins passed as `--arg pins`), their git upstream, when local, is added to the
    sandbox paths of the bootstrap scope: the file's upstream is there already, the candidate may name
    another. `pass_pins`: every command of this CLI (the graph's evaluation, `nix build`) gets `pins`
    instead of the file's, so a rev is built without writing it anywhere.
    """
    args = {str(k): str(v) for k, v in settings.nix_args.items()}
    scope = args.pop("scope", None)
    cli = NixCli(
        nix_dir=str(Path(repo_dir) / settings.nix_dir),
        executable=settings.nix_executable,
        scope=scope,
        nix_args={**args, "source": mode},
        nix_config=settings.nix_config,
        value_args={"pins": pins.to_dict()} if pins is not None and pass_pins else {},
    )
    local = local_path(pins.git.url) if pins is not None else None
    if local and uses_bootstrap_scope(scope, cli.tool_path("nix-instantiate")):
        cli = replace(cli, nix_config=f"{settings.nix_config}\nextra-sandbox-paths = {local}")
    return cli


def pins_nix_expression(pins: Pins) -> str:
    """A Nix expression evaluating to `pins` (for `--arg pins`): `builtins.fromJSON` of a Nix string."""
    return json_expression(pins.to_dict())


def build_with_pins(
    cli: NixCli, attrs: Sequence[str], pins: Pins, *, timeout: float, log: Log
) -> subprocess.CompletedProcess[str]:
    """`nix build --json` of `attrs` of the package set evaluated with `pins` instead of its pins.json.

    Never raises for a failed build: the caller reads Nix's stderr (a hash mismatch is the point of the
    hash step).
    """
    command = [*cli.build_command(attrs), "--arg", "pins", pins_nix_expression(pins)]
    log(f"$ {describe(command)}")
    return finish(cli.popen(command), timeout=timeout)


_BUILDER_FAILED_RE = re.compile(r"builder for '(?P<drv>[^']+)' failed")


def nix_errors(stderr: str) -> list[str]:
    """Nix's error messages (`log_format.error_messages`), each "builder for ... failed" followed by the end
    of that builder's log when Nix's message leaves it out (as Nix 2.8 does with internal-json logs): why a
    fetch of the source failed is in its log."""
    logs: dict[str, list[str]] = {}
    drv_of: dict[int, str] = {}
    for line in stderr.splitlines():
        event = parse_line(line)
        if isinstance(event, ActivityStarted) and event.drv_path:
            drv_of[event.id] = event.drv_path
        elif isinstance(event, BuildLogLine) and event.id in drv_of:
            logs.setdefault(drv_of[event.id], []).append(event.line)
    out = []
    for message in error_messages(stderr).messages:
        out.append(message)
        m = _BUILDER_FAILED_RE.search(message)
        if m and "last " not in message:
            out += [f"  > {line}" for line in logs.get(m["drv"], [])[-LOG_TAIL_LINES:]]
    return out


def finish(proc: subprocess.Popen, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for `proc` (started in its own process group, with pipes) and return its output as text;
    on timeout or interrupt stop its process group (SIGTERM, then SIGKILL) and re-raise."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop_group(proc)
        raise
    text = [s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in (out, err)]
    return subprocess.CompletedProcess(proc.args, proc.returncode, text[0], text[1])


__all__ = ["build_with_pins", "finish", "local_path", "nix_cli", "nix_errors", "pins_nix_expression"]
