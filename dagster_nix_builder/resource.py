"""``NixResource``: the Nix CLI as a Dagster resource. Nix itself is run by :mod:`.nix_cli`; this module
only resolves the resource's configuration into a :class:`NixCli` and hands a run's selection to the build."""

from __future__ import annotations

import difflib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dagster import AssetExecutionContext, ConfigurableResource, EnvVar
from pydantic import Field, ValidationError, field_validator

from .build import Build, NixBuild, Target
from .errors import NixConfigError, NixNotFoundError
from .graph import NixPackageGraph, load_package_graph
from .nix_cli import NixCli
from .nix_settings import DEFAULT_NIX_CONFIG
from .results import Result, build_and_stream


def _find_executable(executable: str) -> str | None:
    return shutil.which(executable)


def _is_env_var(value: object) -> bool:
    # EnvVar and IntEnvVar (not a subclass of EnvVar) both defer to run time and offer get_value().
    return hasattr(value, "env_var_name") and hasattr(value, "get_value")


class NixResource(ConfigurableResource):
    """The Nix CLI against a package-set directory, as a Dagster resource: its configuration becomes a
    :class:`~dagster_nix_builder.nix_cli.NixCli` (:meth:`cli`); :meth:`stream` builds what a run selects.

    Configure it in code, in a component's ``defs.yaml``, or through ``EnvVar``s.
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

    def cli(self) -> NixCli:
        """The Nix CLI this resource describes, every ``EnvVar`` resolved."""
        return NixCli(
            nix_dir=str(self.resolved("nix_dir")),
            executable=str(self.resolved("executable")),
            scope=self.resolved("scope"),
            nix_args={str(k): str(v) for k, v in (self.resolved("nix_args") or {}).items()},
            nix_config=str(self.resolved("nix_config")),
            out_link_dir=str(self.resolved("out_link_dir")),
            max_jobs=self.resolved("max_jobs"),
            cores=self.resolved("cores"),
            builders=self.resolved("builders"),
            extra_options={str(k): str(v) for k, v in (self.resolved("extra_options") or {}).items()},
        )

    def load_graph(self) -> NixPackageGraph:
        """Ask Nix for the package graph of :attr:`nix_dir` (see :func:`~dagster_nix_builder.graph.load_package_graph`)."""
        return load_package_graph(self.cli())

    def build(self, attrs: Sequence[str], tests: Mapping[str, Sequence[str]] | None = None) -> Build:
        """Start one ``nix build`` of ``attrs`` and of ``tests`` (test names by attribute), outside Dagster.
        Consume it with ``.outcomes()`` or ``.wait()``."""
        targets = [Target(a) for a in attrs] + [Target(a, t) for a, names in (tests or {}).items() for t in names]
        return NixBuild(self.cli(), self.load_graph(), targets).start()

    def stream(self, context: AssetExecutionContext) -> Iterator[Result]:
        """Build what ``context`` selects (packages and checks) with one ``nix build`` and yield its results.

        The package set is evaluated again now, not when the definitions were loaded: it may have changed.
        """
        cli = self.cli()
        yield from build_and_stream(cli, load_package_graph(cli), context)


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
