"""Partitions of the package assets: one dynamic partition per upstream version (a release or a commit),
each materialized with that version's arguments given to Nix as values (``--arg pins``), its out-links in a
folder of its own, its checks reported for that partition.

What a partition's arguments are is not decided here (the components layer resolves them); this module only
builds one partition with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, DynamicPartitionsDefinition

from dagster_nix_builder.adapters.results import Result, build_and_stream
from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.graph import load_package_graph

PARTITION_KEY_META = "dagster_nix_builder/partition"


def versions_partitions(name: str) -> DynamicPartitionsDefinition:
    """The dynamic partitions of the package assets, one per upstream version, named ``name``."""
    return DynamicPartitionsDefinition(name=name)


def partition_cli(cli: NixCli, key: str, value_args: Mapping[str, Any]) -> NixCli:
    """``cli`` for partition ``key``: ``value_args`` (e.g. ``pins``) in every command (the graph's evaluation and
    ``nix build``), out-links ``<out_link_dir>/<key>/result-<package>``, so partitions never replace each other's
    GC roots."""
    return replace(cli, value_args={**cli.value_args, **value_args}, out_link_dir=str(Path(cli.out_link_dir) / key))


def stream_partition(cli: NixCli, context: AssetExecutionContext, value_args: Mapping[str, Any]) -> Iterator[Result]:
    """Build what ``context`` selects of its partition (one ``nix build``, the set evaluated now with
    ``value_args``) and yield its results, as :func:`~dagster_nix_builder.adapters.results.build_and_stream`."""
    key = context.partition_key
    partition = partition_cli(cli, key, value_args)
    context.log.info(f"partition {key}: building with {', '.join(sorted(value_args))} given to Nix (--arg)")
    yield from build_and_stream(partition, load_package_graph(partition), context)


__all__ = ["PARTITION_KEY_META", "partition_cli", "stream_partition", "versions_partitions"]
