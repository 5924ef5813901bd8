"""``nix_assets``: one subsettable multi-asset for a package set."""


import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    PartitionsDefinition,
    multi_asset,
)
from dagster._utils.warnings import PreviewWarning

from dagster_nix_builder.adapters.large_steps import compute_output_keys_once
from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.adapters.translator import DagsterNixTranslator
from dagster_nix_builder.nix.errors import NixPackageSetError
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph

# The attribute is a Nix identifier (a formal argument of the packages depending on it) and a Dagster asset
# key that the CLI's and the UI's selection syntax can name (no '.', no spaces).
PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def validate_package_names(graph: NixPackageGraph) -> None:
    """Raise :class:`NixPackageSetError` naming the file of the first package whose name cannot be a
    package (see :data:`PACKAGE_NAME`)."""
    for attr in sorted(graph):
        if PACKAGE_NAME.fullmatch(attr):
            continue
        file = graph[attr].file
        what = f"Package file {file}" if file else f"Attribute {attr!r} of {graph.nix_dir}/default.nix"
        fixed = re.sub(r"[^A-Za-z0-9_-]+", "-", attr).strip("-")
        hint = f" Rename it, e.g. to {fixed}{'.nix' if file else ''}." if PACKAGE_NAME.fullmatch(fixed) else ""
        raise NixPackageSetError(
            f"{what} cannot be a package: its name {attr!r} must be letters, digits, '_' and '-', not starting "
            "with a digit or '-' ([A-Za-z_][A-Za-z0-9_-]*), since it is the Nix attribute, the argument other "
            f"packages take and the Dagster asset key.{hint}"
        )


def check_specs_for(
    package: NixPackage, asset_key: AssetKey, partitions_def: PartitionsDefinition | None = None
) -> list[AssetCheckSpec]:
    """One check per derivation of the package's ``passthru.tests``: a test added to an expression is a
    check, with no Python. Blocking tests keep the packages downstream from being materialized. With
    ``partitions_def`` (the asset's), each result is the check of the partition built."""
    with warnings.catch_warnings():
        # Dagster calls a check's partitions a preview: chosen knowingly (a check per version), said once in the
        # README, not on every load.
        warnings.filterwarnings("ignore", "Specifying a partitions_def on an AssetCheckSpec", PreviewWarning)
        return [
            AssetCheckSpec(
                name,
                asset=asset_key,
                blocking=test.blocking,
                description=(test.description or f"passthru.tests.{name} of {package.file or package.attr} builds")
                + f" (the derivation {Path(test.drv_path).name}).",
                partitions_def=partitions_def,
            )
            for name, test in sorted(package.tests.items())
        ]


def nix_assets(
    graph: NixPackageGraph,
    *,
    name: str = "nix_packages",
    translator: DagsterNixTranslator | None = None,
    op_tags: Mapping[str, Any] | None = None,
    pool: str | None = None,
    partitions_def: PartitionsDefinition | None = None,
) -> AssetsDefinition:
    """Build one multi-asset with a spec per package of ``graph`` (edges from Nix) and its checks.

    Materializing any subset runs one ``nix build`` of the selected packages and tests through the ``nix``
    resource (:class:`NixResource`); each test of ``passthru.tests`` is a check.

    Args:
        graph: the package graph, e.g. ``NixResource(...).load_graph()``.
        name: op name of the multi-asset.
        translator: maps packages to specs; subclass :class:`DagsterNixTranslator` to customise.
        op_tags: tags of the op.
        pool: concurrency pool of the op.
        partitions_def: partitions of every package and check (e.g. one per upstream version); the resource
            builds the run's partition.

    Raises:
        NixPackageSetError: a package's name cannot be an asset key (names its file).
    """
    validate_package_names(graph)
    translator = translator or DagsterNixTranslator()
    specs = []
    check_specs = []
    for attr in graph.topological_order():
        spec = translator.get_asset_spec(graph[attr])
        specs.append(spec)
        if translator.settings.enable_asset_checks:
            check_specs += check_specs_for(graph[attr], spec.key, partitions_def)

    @multi_asset(
        name=name,
        specs=specs,
        check_specs=check_specs,
        can_subset=True,
        op_tags=op_tags,
        pool=pool,
        compute_kind=None,
        partitions_def=partitions_def,
    )
    def _nix_assets(context: AssetExecutionContext, nix: NixResource):
        compute_output_keys_once(context)  # a run of thousands of packages: see large_steps
        yield from nix.stream(context)

    return _nix_assets
