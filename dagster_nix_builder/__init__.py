"""dagster-nix-builder: every package of a Nix package set a Dagster asset, every build a materialization."""

from .assets import nix_assets
from .build import NixBuild
from .errors import (
    NixBuilderError,
    NixBuildError,
    NixCommandError,
    NixConfigError,
    NixDependencyCycleError,
    NixEvalError,
    NixNotFoundError,
    NixPackageSetError,
)
from .graph import NixPackage, NixPackageGraph, NixTest, load_package_graph
from .nix_cli import NixCli
from .outcomes import PackageOutcome, Target, TestOutcome
from .resource import NixResource
from .translator import DagsterNixTranslator, DagsterNixTranslatorSettings

__all__ = [
    "DagsterNixTranslator",
    "DagsterNixTranslatorSettings",
    "NixBuild",
    "NixBuildError",
    "NixBuilderError",
    "NixCli",
    "NixCommandError",
    "NixConfigError",
    "NixDependencyCycleError",
    "NixEvalError",
    "NixNotFoundError",
    "NixPackage",
    "NixPackageGraph",
    "NixPackageSetError",
    "NixResource",
    "NixTest",
    "PackageOutcome",
    "Target",
    "TestOutcome",
    "load_package_graph",
    "nix_assets",
]
