"""``NixResource``: the Nix CLI as a Dagster resource. Nix itself is run by :mod:`~dagster_nix_builder.nix.cli`;
this module only resolves the resource's configuration into a :class:`NixCli` and hands a run's selection to the
build."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster import AssetExecutionContext, ConfigurableResource
from pydantic import Field, field_validator

from dagster_nix_builder.adapters.results import Result, build_and_stream
from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixNotFoundError
from dagster_nix_builder.nix.graph import NixPackageGraph, load_package_graph
from dagster_nix_builder.nix.outcomes import Build, Target
from dagster_nix_builder.nix.settings import DEFAULT_NIX_CONFIG


def _find_executable(executable: str) -> str | None:
    return shutil.which(executable)


def _is_env_var(value: object) -> bool:
    # EnvVar and IntEnvVar (not a subclass of EnvVar) both defer to run time and offer get_value().
    return hasattr(value, "env_var_name") and hasattr(value, "get_value")


class NixResource(ConfigurableResource):
    """The Nix CLI against a package-set directory, as a Dagster resource: its configuration becomes a
    :class:`~dagster_nix_builder.nix.cli.NixCli` (:meth:`cli`); :meth:`stream` builds what a run selects.

    Configure it in code, in a component's ``defs.yaml``, or through ``EnvVar``s.
    """

    executable: str = Field(
        default="nix",
        description="The `nix` executable (name on PATH or absolute path). `nix-instantiate` and "
        "`nix-store` are taken from the same directory.",
    )
    nix_dir: str = Field(
        default="nix",
        description="Where the package set is: a directory (`default.nix` plus one `packages/<attr>.nix` per "
        "package), a Nix file or a flake, as `kind` says.",
    )
    kind: str = Field(default="directory", description="directory | file | flake.")
    attribute: list[str] | None = Field(
        default=None, description="Attribute path of the packages in a file or flake (a flake's: packages.<system>)."
    )
    select: list[str] | None = Field(default=None, description="Globs of the attribute names to take (all: null).")
    exclude: list[str] | None = Field(default=None, description="Globs of attribute names to leave out.")
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

    def resolved(self, name: str) -> Any:
        """Value of a field with any ``EnvVar`` resolved (needed before Dagster resolves config)."""
        value = getattr(self, name)
        return value.get_value() if _is_env_var(value) else value

    def cli(self) -> NixCli:
        """The Nix CLI this resource describes, every ``EnvVar`` resolved."""
        return NixCli(
            nix_dir=str(self.resolved("nix_dir")),
            kind=str(self.resolved("kind")),
            attribute=tuple(self.resolved("attribute") or ()),
            select=tuple(self.resolved("select") or ()),
            exclude=tuple(self.resolved("exclude") or ()),
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
        """The package graph of :attr:`nix_dir`, asked of Nix
        (:func:`~dagster_nix_builder.nix.graph.load_package_graph`)."""
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
