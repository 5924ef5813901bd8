"""dagster-nix-builder: every package of a Nix package set a Dagster asset, every build a materialization."""

from .assets import nix_assets
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
from .graph import NixPackage, NixPackageGraph, load_package_graph
from .invocation import NixBuildInvocation, PackageOutcome
from .resource import NixResource
from .translator import DagsterNixTranslator, DagsterNixTranslatorSettings

__all__ = [
    "DagsterNixTranslator",
    "DagsterNixTranslatorSettings",
    "NixBuildError",
    "NixBuildInvocation",
    "NixBuilderError",
    "NixCommandError",
    "NixConfigError",
    "NixDependencyCycleError",
    "NixEvalError",
    "NixNotFoundError",
    "NixPackage",
    "NixPackageGraph",
    "NixPackageSetError",
    "NixResource",
    "PackageOutcome",
    "load_package_graph",
    "nix_assets",
]
