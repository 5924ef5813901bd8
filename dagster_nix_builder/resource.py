"""``NixResource``: the Nix CLI as a Dagster resource. Every Nix command line is built here."""

from __future__ import annotations

import difflib
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
from typing import TYPE_CHECKING, Any

import yaml
from dagster import ConfigurableResource, EnvVar
from pydantic import Field, ValidationError, field_validator

from . import processes
from .errors import NixCommandError, NixConfigError, NixNotFoundError, NixPackageSetError
from .log_format import error_messages
from .nix_output import Derivation, NixVersion, parse_derivation_show, parse_path_info, parse_version
from .nix_settings import DEFAULT_HOST_PYTHON, DEFAULT_NIX_CONFIG, nix_config_for_scope

if TYPE_CHECKING:
    from dagster import AssetExecutionContext

    from .graph import NixPackageGraph
    from .invocation import NixBuildInvocation

NIX_BASE32_CHARS = "0123456789abcdfghijklmnpqrsvwxyz"

# Every Nix command this package runs is logged here (DEBUG), e.g. to count them in tests.
command_logger = logging.getLogger("dagster_nix_builder.commands")

# `nix --version` per executable path: asked once per process, not once per run or package.
_VERSIONS: dict[str, NixVersion] = {}


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


def _find_executable(executable: str) -> str | None:
    return shutil.which(executable)


def _is_env_var(value: object) -> bool:
    # EnvVar and IntEnvVar (not a subclass of EnvVar) both defer to run time and offer get_value().
    return hasattr(value, "env_var_name") and hasattr(value, "get_value")


class NixResource(ConfigurableResource):
    """Runs the Nix CLI against a package-set directory.

    Configure it in code, from a YAML file (:meth:`from_yaml`) or through ``EnvVar``s.
    """

    executable: str = Field(
        default="nix",
        description="The `nix` executable (name on PATH or absolute path). `nix-instantiate` and "
        "`nix-store` are taken from the same directory.",
    )
    nix_dir: str = Field(
        default="nix",
        description="Package-set directory: `default.nix` plus one `packages/<attr>.nix` per package.",
    )
    scope: str | None = Field(
        default="auto",
        description="Passed as `--argstr scope <scope>` (auto | bootstrap | nixpkgs); null to omit.",
    )
    out_link_dir: str = Field(
        default=".nix-results",
        description="Folder for the out-links `result-<attr>` (and `result-<attr>-<output>`), GC roots.",
    )
    max_jobs: int | None = Field(
        default=os.cpu_count(),
        description="`--max-jobs` for `nix build`: how many derivations Nix builds at once. Defaults to the "
        "number of cores of this machine (Nix's own default is 1); null leaves it to Nix's configuration.",
    )
    cores: int | None = Field(default=None, description="`--cores` for `nix build`.")
    extra_options: dict[str, str] | None = Field(
        default=None, description="Extra Nix settings, each passed as `--option <name> <value>`."
    )
    builders: str | None = Field(
        default=None, description="Remote builders (`--builders`), e.g. 'ssh://host x86_64-linux'."
    )
    nix_args: dict[str, str] | None = Field(
        default=None, description="Extra arguments of the package set, each passed as `--argstr <k> <v>`."
    )
    nix_config: str = Field(
        default=DEFAULT_NIX_CONFIG,
        description="Value of NIX_CONFIG in the environment of every Nix command.",
    )
    recheck: bool = Field(
        default=False,
        description="Run checks again even when the output path was already checked.",
    )

    @field_validator("executable")
    @classmethod
    def _executable_exists(cls, value: str) -> str:
        # An EnvVar is resolved only at run time; its value is checked then by ``executable_path``.
        if _is_env_var(value):
            return value
        if _find_executable(value) is None:
            raise NixNotFoundError(value)
        return value

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> NixResource:
        """Build a resource from a YAML mapping of its fields; ``overrides`` win over the file.

        A value written as ``{env: NAME}`` becomes ``EnvVar("NAME")`` (``EnvVar.int`` for the integer
        fields), so secrets and per-machine values stay in the environment. Relative ``nix_dir`` and
        ``out_link_dir`` are relative to the file's folder.

        Raises:
            NixConfigError: the file is missing or not valid YAML, has an unknown key or a value of the
                wrong type; the message names the file, the line and the key.
        """
        config = read_config(path)
        return cls.from_fields({**config.fields, **overrides}, config)

    @classmethod
    def from_fields(cls, fields: dict[str, Any], config: NixConfigFile | None = None) -> NixResource:
        """Build a resource from ``fields``; a wrong value names the key, and the file and line when it
        comes from ``config``."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                key = str(error["loc"][0]) if error["loc"] else "?"
                from_file = config is not None and key in config.fields and fields.get(key) is config.fields[key]
                where = f"{config.path}:{config.lines.get(key, 1)}: " if from_file and config else ""
                problems.append(f"{where}{key}: {error['msg']} (got {error['input']!r})")
            if len(problems) == 1:
                raise NixConfigError(problems[0]) from None
            raise NixConfigError(f"{len(problems)} invalid NixResource values:\n" + "\n".join(problems)) from None

    def resolved(self, name: str) -> Any:
        """Value of a field with any ``EnvVar`` resolved (needed before Dagster resolves config)."""
        value = getattr(self, name)
        return value.get_value() if _is_env_var(value) else value

    # ---- command lines -------------------------------------------------------------------------

    @cached_property
    def executable_path(self) -> str:
        """Absolute path of the nix executable; raises :class:`NixNotFoundError`."""
        exe = str(self.resolved("executable"))
        found = _find_executable(exe)
        if found is None:
            raise NixNotFoundError(exe)
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

    def subprocess_env(self) -> dict[str, str]:
        """Environment of every Nix command: ours plus NIX_CONFIG (with the host paths the bootstrap
        scope's builders borrow, when the package set uses it)."""
        env = dict(os.environ)
        args = self.package_args()
        env["NIX_CONFIG"] = nix_config_for_scope(
            str(self.resolved("nix_config")), args.get("scope"),
            host_python=args.get("hostPython", DEFAULT_HOST_PYTHON), nix_instantiate=self.tool_path("nix-instantiate"),
            nix_dir=self.resolved("nix_dir"),
        )  # fmt: skip
        return env

    def package_args(self) -> dict[str, str]:
        """Arguments passed to the package set's function (scope and ``nix_args``)."""
        args: dict[str, str] = {}
        scope = self.resolved("scope")
        if scope:
            args["scope"] = str(scope)
        args.update({str(k): str(v) for k, v in (self.resolved("nix_args") or {}).items()})
        return args

    def _argstrs(self) -> list[str]:
        out: list[str] = []
        for key, value in self.package_args().items():
            out += ["--argstr", key, value]
        return out

    def nix_command(self, *args: str) -> list[str]:
        """``nix <args>`` with the structured log format (stderr is ``@nix {json}`` lines)."""
        return [self.executable_path, "--log-format", "internal-json", "-v", *args]

    def instantiate_command(self, *args: str) -> list[str]:
        """``nix-instantiate <args>`` with the structured log format."""
        return [self.tool_path("nix-instantiate"), "--log-format", "internal-json", *args]

    def store_command(self, *args: str) -> list[str]:
        """``nix-store <args>``."""
        return [self.tool_path("nix-store"), *args]

    def build_command(self, attrs: Sequence[str]) -> list[str]:
        """The one ``nix build`` of a run: all ``attrs`` at once, keep going, JSON on stdout."""
        command = self.nix_command(
            "build", "--file", str(Path(self.resolved("nix_dir")).resolve()), *self._argstrs(),
            "--keep-going", "--json", "--no-link",
        )
        if self.resolved("max_jobs") is not None:
            command += ["--max-jobs", str(self.resolved("max_jobs"))]
        if self.resolved("cores") is not None:
            command += ["--cores", str(self.resolved("cores"))]
        if self.resolved("builders"):
            command += ["--builders", str(self.resolved("builders"))]
        for name, value in (self.resolved("extra_options") or {}).items():
            command += ["--option", str(name), str(value)]
        return [*command, *attrs]

    def run(self, command: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short Nix command to completion; on failure raise with Nix's own error messages."""
        self.log_command(command)
        proc = processes.run(list(command), capture_output=True, text=True, env=self.subprocess_env(), check=False)
        if check and proc.returncode != 0:
            raise NixCommandError(command, proc.returncode, error_messages(proc.stderr).messages)
        return proc

    def log_command(self, command: Sequence[str]) -> None:
        """Log a Nix command about to run (DEBUG on :data:`command_logger`)."""
        command_logger.debug("%s", shlex.join(command))

    # ---- facts -----------------------------------------------------------------------------------

    def nix_version(self) -> NixVersion:
        """``nix --version`` (``str()`` gives e.g. ``nix (Nix) 2.8.0``), asked once per process and executable.

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

    def load_graph(self) -> NixPackageGraph:
        """Ask Nix for the package graph of :attr:`nix_dir`.

        Raises:
            NixPackageSetError: a JSON file the package set reads is invalid (names file and line), or
                :func:`~dagster_nix_builder.graph.load_package_graph`'s errors.
        """
        from .graph import load_package_graph

        check_json_inputs(Path(str(self.resolved("nix_dir"))))
        return load_package_graph(self)

    def build(
        self,
        attrs: Sequence[str] | None = None,
        *,
        context: AssetExecutionContext | None = None,
        graph: NixPackageGraph | None = None,
    ) -> NixBuildInvocation:
        """Start one ``nix build`` of ``attrs`` (default: the assets selected in ``context``).

        Use as ``yield from nix.build(context=context).stream()``.
        """
        from .invocation import NixBuildInvocation

        return NixBuildInvocation.start(self, attrs, context=context, graph=graph)

    def describe(self, command: Sequence[str]) -> str:
        """A command as one shell-quoted string, for logs."""
        return shlex.join(command)


# JSON files of a package set that its Nix code reads with builtins.fromJSON, relative to nix_dir. Nix's
# own parse error names neither the file nor the line, so they are parsed here first.
JSON_INPUTS = ("pins.json", "bootstrap/wheels.json")


def check_json_inputs(nix_dir: Path) -> None:
    """Raise :class:`NixPackageSetError` naming the file, line and column of an invalid JSON input."""
    for name in JSON_INPUTS:
        path = nix_dir / name
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


def is_registered_root(link: Path, store_path: str) -> bool:
    """Whether ``link`` points at ``store_path`` and is registered as an indirect GC root."""
    try:
        return os.readlink(link) == store_path and os.readlink(indirect_root_path(link)) == str(link)
    except OSError:
        return False


# ---- configuration file ------------------------------------------------------------------------------

INT_FIELDS = ("max_jobs", "cores")
PATH_FIELDS = ("nix_dir", "out_link_dir")


@dataclass(frozen=True)
class NixConfigFile:
    """The fields of :class:`NixResource` read from one YAML file, with the line of each key."""

    path: Path
    fields: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def read_config(path: str | os.PathLike[str]) -> NixConfigFile:
    """Read a YAML file of :class:`NixResource` fields (see :meth:`NixResource.from_yaml`).

    Raises:
        NixConfigError: naming the file (and line and key) when it is missing, unreadable, not YAML, not
            a mapping, has an unknown key or a malformed ``{env: NAME}``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NixConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NixConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NixConfigError(_yaml_error(path, exc)) from None
    if data is None:
        return NixConfigFile(path)
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise NixConfigError(
            f"{path}: expected a mapping of NixResource fields (lines `key: value`), not a {type(data).__name__}"
        )
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    known = list(NixResource.model_fields)
    fields: dict[str, Any] = {}
    for key, value in data.items():
        line = lines.get(str(key), 1)
        if key not in NixResource.model_fields:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NixConfigError(
                f"{path}:{line}: unknown key {key!r}{hint} (known keys: {', '.join(sorted(known))})"
            )
        if isinstance(value, dict) and "env" in value:
            if set(value) != {"env"} or not isinstance(value["env"], str) or not value["env"]:
                raise NixConfigError(
                    f"{path}:{line}: {key}: an environment variable is written {{env: NAME}}, not {value!r}"
                )
            value = EnvVar.int(value["env"]) if key in INT_FIELDS else EnvVar(value["env"])
        elif key in PATH_FIELDS and isinstance(value, str) and value and not Path(value).is_absolute():
            value = str(path.parent / value)
        fields[key] = value
    return NixConfigFile(path, fields, lines)


CONFIG_ENV = "DAGSTER_NIX_CONFIG"
# Fields set by one environment variable each; they win over the file.
ENV_FIELDS = {
    "nix_dir": "DAGSTER_NIX_DIR",
    "scope": "DAGSTER_NIX_SCOPE",
    "out_link_dir": "DAGSTER_NIX_OUT_LINK_DIR",
    "executable": "DAGSTER_NIX_EXECUTABLE",
}


def resource_from_environment(
    environ: Mapping[str, str],
    *,
    defaults: Mapping[str, Any] | None = None,
    default_config: str | os.PathLike[str] | None = None,
) -> NixResource:
    """A :class:`NixResource` from three layers, each over the one before: ``defaults`` (over the fields'
    own), the YAML file named by ``DAGSTER_NIX_CONFIG`` (else ``default_config`` if it exists), and the
    variables of :data:`ENV_FIELDS` in ``environ``. Empty variables count as unset.

    Raises:
        NixConfigError: ``DAGSTER_NIX_CONFIG`` names no file, or the file or a value is wrong (names the
            file, line and key).
    """
    fields: dict[str, Any] = dict(defaults or {})
    named = environ.get(CONFIG_ENV)
    config = None
    if named:
        if not Path(named).is_file():
            state = "is not a file" if Path(named).exists() else "does not exist"
            fallback = f"{default_config} if it exists, else " if default_config else ""
            raise NixConfigError(f"{CONFIG_ENV} names {named}, which {state} (unset it to use {fallback}the defaults)")
        config = read_config(named)
    elif default_config is not None and Path(default_config).is_file():
        config = read_config(default_config)
    if config is not None:
        fields.update(config.fields)
    fields.update({name: environ[var] for name, var in ENV_FIELDS.items() if environ.get(var)})
    return NixResource.from_fields(fields, config)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context += f" (line {context_mark.line + 1}, column {context_mark.column + 1})"
    if problem:
        what = f"{context}, {problem}" if context else problem
    else:
        what = str(exc)
    return f"{where}: invalid YAML: {what}"
