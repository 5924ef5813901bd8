"""``NixCli``: the one wrapper of the Nix command line. Every Nix command this package runs is built and
started here: settings (``NIX_CONFIG``, per invocation, never the user's files), version differences,
Nix's own error messages, and the process's start and stop (through :mod:`processes`).

No Dagster import: the Dagster resource (:class:`~dagster_nix_builder.adapters.resource.NixResource`) only turns its
configuration into a :class:`NixCli`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dagster_nix_builder.nix import processes
from dagster_nix_builder.nix.errors import NixCommandError, NixNotFoundError, NixPackageSetError
from dagster_nix_builder.nix.log_format import error_messages
from dagster_nix_builder.nix.output import Derivation, NixVersion, parse_derivation_show, parse_path_info, parse_version
from dagster_nix_builder.nix.package_source import PackageSource, args_for, attr_path_text
from dagster_nix_builder.nix.settings import DEFAULT_HOST_PYTHON, DEFAULT_NIX_CONFIG, nix_config_for_scope

NIX_BASE32_CHARS = "0123456789abcdfghijklmnpqrsvwxyz"

# Every Nix command this package runs is logged here (DEBUG), e.g. to count them in tests.
command_logger = logging.getLogger("dagster_nix_builder.commands")

# `nix --version` per executable path: asked once per process, not once per run or package.
_VERSIONS: dict[str, NixVersion] = {}
# builtins.currentSystem per executable path (a flake's packages.<system>).
_SYSTEMS: dict[str, str] = {}

# JSON files of a package set that its Nix code reads with builtins.fromJSON, relative to nix_dir. Nix's
# own parse error names neither the file nor the line, so they are parsed here first.
JSON_INPUTS = ("pins.json", "bootstrap/wheels.json")


@dataclass(frozen=True)
class NixCli:
    """How to run Nix against one package set; every value already resolved. ``nix_dir`` is where the set is
    (a directory, a Nix file or a flake, as ``kind`` says), narrowed by ``attribute``, ``select`` and ``exclude``
    (:class:`~dagster_nix_builder.nix.package_source.PackageSource`)."""

    nix_dir: str = "nix"
    kind: str = "directory"
    attribute: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    executable: str = "nix"
    scope: str | None = "auto"
    nix_args: Mapping[str, str] = field(default_factory=dict)
    value_args: Mapping[str, Any] = field(default_factory=dict)
    """Arguments of the package set given as Nix values, JSON data (e.g. candidate ``pins``): ``--arg`` of
    ``nix build``, and in ``graph.nix``'s arguments beside the strings of :meth:`package_args`."""
    nix_config: str = DEFAULT_NIX_CONFIG
    out_link_dir: str = ".nix-results"
    max_jobs: int | None = None
    cores: int | None = None
    builders: str | None = None
    extra_options: Mapping[str, str] = field(default_factory=dict)

    # ---- programs --------------------------------------------------------------------------------

    @cached_property
    def executable_path(self) -> str:
        """Absolute path of the nix executable; raises :class:`NixNotFoundError`."""
        found = shutil.which(self.executable)
        if found is None:
            raise NixNotFoundError(self.executable)
        return found

    def tool_path(self, tool: str) -> str:
        """Path of a legacy tool (``nix-instantiate``, ``nix-store``) next to the nix executable."""
        sibling = Path(self.executable_path).parent / tool
        if sibling.exists():
            return str(sibling)
        found = shutil.which(tool)
        if found is None:
            raise NixNotFoundError(tool)
        return found

    @cached_property
    def source(self) -> PackageSource:
        """Where the package set is (raises :class:`NixPackageSetError` for a bad attribute path or glob)."""
        return PackageSource(self.kind, self.nix_dir, self.attribute, self.select, self.exclude)  # type: ignore[arg-type]

    @property
    def package_dir(self) -> str:
        """The package set's location, absolute: its directory, its file, or a flake's directory or reference."""
        path = self.source.path
        return str(path) if path is not None else self.nix_dir

    def package_args(self) -> dict[str, str]:
        """Arguments passed to the package set's function: a directory's ``scope`` and ``nix_args``; a file's
        ``nix_args`` alone (its user wrote them); a flake's none."""
        args: dict[str, str] = {}
        if self.scope and self.kind == "directory":
            args["scope"] = str(self.scope)
        args.update({str(k): str(v) for k, v in self.nix_args.items()})
        return args_for(self.source, args)

    def function_args(self) -> dict[str, Any]:
        """Every argument the package set's function gets: :meth:`package_args` and ``value_args``."""
        return {**self.package_args(), **args_for(self.source, dict(self.value_args))}

    def current_system(self) -> str:
        """Nix's ``builtins.currentSystem`` (asked once per executable)."""
        exe = self.executable_path
        if exe not in _SYSTEMS:
            command = [self.tool_path("nix-instantiate"), "--eval", "--json", "--expr", "builtins.currentSystem"]
            _SYSTEMS[exe] = json.loads(self.run(command).stdout)
        return _SYSTEMS[exe]

    def set_path(self) -> tuple[str, ...]:
        """The attribute path of the packages inside the file or flake (a flake's: ``packages.<system>``)."""
        return self.source.set_path(self.current_system() if self.kind == "flake" else "")

    def checks_path(self) -> tuple[str, ...]:
        """A flake's ``checks.<system>``; empty for the other kinds."""
        return (self.source.checks_path(self.current_system()) or ()) if self.kind == "flake" else ()

    def installable(self, path: str | tuple[str, ...]) -> str:
        """What ``nix build`` takes for ``path``: a str is an attribute path of the package set as dotted text
        (``base``, ``mid.tests.imports``), a tuple an attribute path from the file's or flake's top (a flake's
        check)."""
        if isinstance(path, tuple):
            text = attr_path_text(path)
        else:
            text = ".".join(filter(None, [attr_path_text(self.set_path()), path]))
        return f"{self.source.flake_ref}#{text}" if self.kind == "flake" else text

    def argstrs(self) -> list[str]:
        """:meth:`package_args` as ``--argstr`` flags."""
        return [flag for key, value in self.package_args().items() for flag in ("--argstr", key, value)]

    def value_flags(self) -> list[str]:
        """``value_args`` as ``--arg`` flags (each value ``builtins.fromJSON`` of a Nix string)."""
        args = args_for(self.source, dict(self.value_args))
        return [flag for key, value in args.items() for flag in ("--arg", key, json_expression(value))]

    def subprocess_env(self) -> dict[str, str]:
        """Environment of every Nix command: ours plus NIX_CONFIG (with the host paths the bootstrap
        scope's builders borrow, when the package set uses it)."""
        env = dict(os.environ)
        args = self.package_args()
        config = self.nix_config + (
            "\nextra-experimental-features = nix-command flakes" if self.kind == "flake" else ""
        )
        if self.kind != "directory":  # only a set that takes `scope` gets the bootstrap scope's sandbox paths
            env["NIX_CONFIG"] = config
            return env
        env["NIX_CONFIG"] = nix_config_for_scope(
            config, args.get("scope"), host_python=args.get("hostPython", DEFAULT_HOST_PYTHON),
            nix_instantiate=self.tool_path("nix-instantiate"), nix_dir=self.nix_dir,
        )  # fmt: skip
        return env

    # ---- command lines ---------------------------------------------------------------------------

    def nix_command(self, *args: str) -> list[str]:
        """``nix <args>`` with the structured log format (stderr is ``@nix {json}`` lines)."""
        return [self.executable_path, "--log-format", "internal-json", "-v", *args]

    def instantiate_command(self, *args: str) -> list[str]:
        """``nix-instantiate <args>`` with the structured log format."""
        return [self.tool_path("nix-instantiate"), "--log-format", "internal-json", *args]

    def store_command(self, *args: str) -> list[str]:
        """``nix-store <args>``."""
        return [self.tool_path("nix-store"), *args]

    def build_command(self, installables: Sequence[str | tuple[str, ...]], *, rebuild: bool = False) -> list[str]:
        """The one ``nix build`` of a run: all ``installables`` (attribute paths of the package set, see
        :meth:`installable`) at once, keep going, JSON on stdout. ``rebuild``: build valid outputs again and
        compare (``--rebuild``). A flake's lock file is never written."""
        where = ["--no-write-lock-file"] if self.kind == "flake" else [
            "--file", self.package_dir, *self.argstrs(), *self.value_flags()
        ]  # fmt: skip
        command = self.nix_command("build", *where, "--keep-going", "--json", "--no-link")
        if rebuild:
            command.append("--rebuild")
        if self.max_jobs is not None:
            command += ["--max-jobs", str(self.max_jobs)]
        if self.cores is not None:
            command += ["--cores", str(self.cores)]
        if self.builders:
            command += ["--builders", self.builders]
        for name, value in self.extra_options.items():
            command += ["--option", str(name), str(value)]
        return [*command, *map(self.installable, installables)]

    # ---- running ---------------------------------------------------------------------------------

    def run(self, command: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short Nix command to completion; on failure raise with Nix's own error messages."""
        log_command(command)
        proc = processes.run(list(command), capture_output=True, text=True, env=self.subprocess_env(), check=False)
        if check and proc.returncode != 0:
            raise NixCommandError(command, proc.returncode, error_messages(proc.stderr).messages)
        return proc

    def popen(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a long Nix command (a build) in its own process group, pipes on stdout and stderr; it
        gets SIGTERM if we die (Nix then stops its builders itself). Stop it with :func:`processes.stop_group`."""
        log_command(command)
        return processes.popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.subprocess_env(), start_new_session=True,
        )  # fmt: skip

    # ---- facts -----------------------------------------------------------------------------------

    def nix_version(self) -> NixVersion:
        """``nix --version``, asked once per process and executable.

        Raises:
            NixVersionError: the Nix is older than the oldest supported (names both and the fix).
        """
        exe = self.executable_path
        if exe not in _VERSIONS:
            _VERSIONS[exe] = parse_version(self.run([exe, "--version"]).stdout, exe)
        return _VERSIONS[exe]

    def invalid_paths(self, paths: Sequence[str]) -> set[str]:
        """The subset of ``paths`` that are not valid in the store."""
        if not paths:
            return set()
        proc = self.run(self.store_command("--check-validity", "--print-invalid", *paths))
        return set(proc.stdout.split())

    @staticmethod
    def surely_invalid_paths(paths: Sequence[str]) -> set[str]:
        """The subset of ``paths`` that cannot be valid yet, seen from the file system alone: not on disk,
        or on disk but not canonicalised. Nix sets a path's mtime to 1 before it registers it valid, and
        Nix 2.8 builds in place, so a path it is still building is on disk with a real mtime. No Nix call:
        a quick filter before :meth:`invalid_paths`. With a store elsewhere (another root, a remote store)
        every path may look absent: callers ask Nix in the end anyway."""
        return {path for path in paths if not _canonical(path)}

    def path_info(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``nix path-info --json -S``: narSize, closureSize, ... per valid path."""
        if not paths:
            return {}
        proc = self.run(self.nix_command("path-info", *self.nix_version().path_info_json(), "-S", *paths))
        return {path: info for path, info in parse_path_info(proc.stdout).items() if info is not None}

    def show_derivations(self, installables: Sequence[str]) -> dict[str, Derivation]:
        """``nix derivation show`` (``show-derivation`` on a Nix without it), by ``.drv`` path."""
        proc = self.run(self.nix_command(*self.nix_version().derivation_show(), *installables))
        return parse_derivation_show(proc.stdout)

    def requisites(self, path: str) -> set[str]:
        """The closure of a store path (of a ``.drv``: every derivation and source it needs)."""
        return set(self.run(self.store_command("--query", "--requisites", path), check=False).stdout.split())

    def outputs_of(self, drv_path: str) -> list[str]:
        """The output paths of a derivation."""
        return self.run(self.store_command("--query", "--outputs", drv_path)).stdout.split()

    def add_root(self, link: Path, store_path: str) -> bool:
        """Make ``link`` an indirect GC root pointing at ``store_path``; return whether Nix was asked.

        Nothing runs when ``link`` already points at ``store_path`` and Nix's indirect root for it
        exists (so a no-op run registers nothing again).
        """
        if is_registered_root(link, store_path):
            return False
        link.parent.mkdir(parents=True, exist_ok=True)
        self.run(self.store_command("--add-root", str(link), "--indirect", "--realise", store_path))
        return True

    def add_output_roots(self, link: Path, drv_path: str | None, outputs: Mapping[str, str]) -> bool:
        """Out-links of every output of ``drv_path`` in one Nix call, nix-store's naming: ``link`` for
        ``out``, ``link-<output>`` for each other output, each an indirect GC root (one call per output
        without a derivation). Returns whether Nix was asked: nothing runs when every link is registered
        already (a no-op run registers nothing)."""
        links = {name: link.with_name(link.name if name == "out" else f"{link.name}-{name}") for name in outputs}
        if all(is_registered_root(links[name], path) for name, path in outputs.items()):
            return False
        if all(_registered_link(links[name]) for name in outputs):
            # Nix's indirect root names the link, not its target: pointing a registered link at the new
            # output is all `nix-store --add-root` would do (one process per package of a big set spared).
            # Called for outputs this run just found valid, while the build's own temporary roots hold them.
            for name, path in outputs.items():
                _replace_symlink(links[name], path)
            return False
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            if drv_path:  # realising a derivation whose outputs are valid builds nothing; it links every output
                self.run(self.store_command("--add-root", str(link), "--indirect", "--realise", drv_path))
                return True
        except NixCommandError:  # the .drv itself was garbage-collected since the evaluation: one call each
            pass
        for name, path in outputs.items():
            self.add_root(links[name], path)
        return True

    def check_json_inputs(self) -> None:
        """Raise :class:`NixPackageSetError` naming the file, line and column of an invalid JSON input."""
        for name in JSON_INPUTS if self.kind == "directory" else ():
            path = Path(self.nix_dir) / name
            if not path.is_file():
                continue
            try:
                json.loads(path.read_bytes())
            except json.JSONDecodeError as exc:
                raise NixPackageSetError(
                    f"{path.resolve()}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}. The package set reads "
                    f"this file (builtins.fromJSON), so nothing evaluates until it is fixed"
                    + (" (`git diff` shows what changed)." if name == "pins.json" else ".")
                ) from None
            except UnicodeDecodeError as exc:
                raise NixPackageSetError(f"{path.resolve()}: invalid JSON: not UTF-8 ({exc.reason})") from None


def _canonical(path: str) -> bool:
    try:
        return os.lstat(path).st_mtime == 1  # canonicalisePathMetaData's mtime, also of a symlink
    except OSError:
        return False


def log_command(command: Sequence[str]) -> None:
    """Log a Nix command about to run (DEBUG on :data:`command_logger`)."""
    command_logger.debug("%s", shlex.join(command))


def json_expression(value: Any) -> str:
    """A Nix expression evaluating to the JSON data ``value``: ``builtins.fromJSON`` of a Nix string."""
    text = json.dumps(value, sort_keys=True)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'builtins.fromJSON "{escaped}"'


def describe(command: Sequence[str]) -> str:
    """A command as one shell-quoted string, for logs."""
    return shlex.join(command)


def nix_base32(digest: bytes) -> str:
    """Nix's base-32 encoding of a hash (as in store paths and ``gcroots/auto`` names)."""
    length = (len(digest) * 8 - 1) // 5 + 1
    chars = []
    for n in range(length - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = digest[i] >> j
        if i + 1 < len(digest):
            c |= digest[i + 1] << (8 - j)
        chars.append(NIX_BASE32_CHARS[c & 0x1F])
    return "".join(chars)


def indirect_root_path(link: str | os.PathLike[str]) -> Path:
    """Where Nix registers ``link`` as an indirect GC root: ``<state>/gcroots/auto/<base32 sha1(link)>``."""
    state_dir = os.environ.get("NIX_STATE_DIR", "/nix/var/nix")
    return Path(state_dir) / "gcroots" / "auto" / nix_base32(hashlib.sha1(os.fsencode(link)).digest())


def _registered_link(link: Path) -> bool:
    """Whether ``link`` is a symlink registered as an indirect GC root (whatever it points at)."""
    try:
        return link.is_symlink() and os.readlink(indirect_root_path(link)) == str(link)
    except OSError:
        return False


def _replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a new symlink renamed over it)."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def is_registered_root(link: Path, store_path: str) -> bool:
    """Whether ``link`` points at ``store_path`` and is registered as an indirect GC root."""
    try:
        return os.readlink(link) == store_path and os.readlink(indirect_root_path(link)) == str(link)
    except OSError:
        return False


__all__ = [
    "NixCli", "command_logger", "describe", "indirect_root_path", "is_registered_root", "json_expression",
    "nix_base32",
]  # fmt: skip
