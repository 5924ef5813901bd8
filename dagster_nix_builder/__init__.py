"""dagster-nix-builder: every package of a Nix package set a Dagster asset, every build a materialization.

What a user composes is exported here (``type: dagster_nix_builder.NixPackageSetComponent`` in ``defs.yaml``;
``nix_assets``, ``NixResource`` and the translator in Python). The layers, each a subpackage whose
``__init__`` states what it may import: ``nix`` (no Dagster) < ``adapters`` < ``flox``, ``publish``;
``upstream`` (on ``nix`` alone) < ``components``; this module and ``definitions`` assemble them.

May import: every layer.
"""

from dagster_nix_builder.adapters.assets import nix_assets
from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.adapters.translator import DagsterNixTranslator, DagsterNixTranslatorSettings
from dagster_nix_builder.components.package_set import NixPackageSetComponent
from dagster_nix_builder.flox.resource import FloxResource
from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import (
    NixBuilderError,
    NixBuildError,
    NixCommandError,
    NixConfigError,
    NixDependencyCycleError,
    NixEvalError,
    NixNotFoundError,
    NixPackageSetError,
)
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph, NixTest, load_package_graph
from dagster_nix_builder.nix.outcomes import PackageOutcome, Target, TestOutcome

__all__ = [
    "DagsterNixTranslator",
    "DagsterNixTranslatorSettings",
    "FloxResource",
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
    "NixPackageSetComponent",
    "NixPackageSetError",
    "NixResource",
    "NixTest",
    "PackageOutcome",
    "Target",
    "TestOutcome",
    "load_package_graph",
    "nix_assets",
]
