"""``nix_assets``: one subsettable multi-asset for a package set."""


from collections.abc import Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetsDefinition, multi_asset

from .checks import check_specs_for
from .graph import NixPackageGraph
from .resource import NixResource
from .translator import DagsterNixTranslator


def nix_assets(
    graph: NixPackageGraph,
    *,
    name: str = "nix_packages",
    translator: DagsterNixTranslator | None = None,
    op_tags: Mapping[str, Any] | None = None,
    pool: str | None = None,
) -> AssetsDefinition:
    """Build one multi-asset with a spec per package of ``graph`` (edges from Nix) and its checks.

    Materializing any subset runs one ``nix build`` of the selected packages through the ``nix``
    resource (:class:`NixResource`).

    Args:
        graph: the package graph, e.g. ``NixResource(...).load_graph()``.
        name: op name of the multi-asset.
        translator: maps packages to specs; subclass :class:`DagsterNixTranslator` to customise.
        op_tags: tags of the op.
        pool: concurrency pool of the op.
    """
    translator = translator or DagsterNixTranslator()
    specs = []
    check_specs = []
    for attr in graph.topological_order():
        spec = translator.get_asset_spec(graph[attr])
        specs.append(spec)
        if translator.settings.enable_asset_checks:
            check_specs += check_specs_for(graph[attr], spec.key)

    @multi_asset(
        name=name,
        specs=specs,
        check_specs=check_specs,
        can_subset=True,
        op_tags=op_tags,
        pool=pool,
        compute_kind=None,
    )
    def _nix_assets(context: AssetExecutionContext, nix: NixResource):
        yield from nix.build(context=context).stream()

    return _nix_assets
