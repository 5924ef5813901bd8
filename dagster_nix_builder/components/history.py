"""Versions as partitions (``history:`` of ``defs.yaml``): a dynamic partition of the package assets per Dagster
release (``partitions: releases``) or per commit of the followed branch (``partitions: commits``).

A partition's key is the version or the 40-hex rev. Materializing it resolves its pins once, the way the update's
resolve and hash steps would (:func:`~dagster_nix_builder.upstream.history.partition_pins`), keeps them in a JSON
file in the Dagster instance's directory (``nix-partition-pins.json``, written atomically) and builds the set with
them given to Nix (``--arg pins``), out-links in ``<out_link_dir>/<key>/``, checks reported per partition:
``nix/pins.json`` is never edited for it. The sensor of that kind adds the partitions it finds. Without
``history:`` nothing here is used: the assets have no partitions, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from dagster import AssetExecutionContext, DynamicPartitionsDefinition, Failure
from dagster.components import Model, Resolvable
from pydantic import Field

from dagster_nix_builder.adapters.partitions import stream_partition, versions_partitions
from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.adapters.results import Result
from dagster_nix_builder.components.update import missing_for_update
from dagster_nix_builder.nix.errors import NixConfigError
from dagster_nix_builder.nix.graph import NixPackageGraph
from dagster_nix_builder.upstream.history import (
    STORE_NAME,
    BisectError,
    HistoryKind,
    PartitionFollow,
    PartitionKeyError,
    PartitionPinsStore,
    UpdateError,
    partition_pins,
)
from dagster_nix_builder.upstream.pins import PinsError, read_pins
from dagster_nix_builder.upstream.update.bisect_job import CACHE_FILE
from dagster_nix_builder.upstream.update.model import UpdateSettings

PARTITIONS_NAMES = {"releases": "dagster_releases", "commits": "dagster_commits"}
"""The name of each kind's ``DynamicPartitionsDefinition`` (what the sensors and the UI's "add partition" use)."""


class NixHistory(Model, Resolvable):
    """``history:``: upstream versions as partitions of the package assets."""

    partitions: Literal["releases", "commits"] = Field(
        description="releases: a partition per Dagster release (the release sensor adds them); commits: per commit "
        "of the followed branch (the commit sensor adds each head)."
    )
    keep: int = Field(default=10, ge=1, description="How many partitions the sensor keeps (the newest).")
    pins_file: str | None = Field(
        default=None,
        description="Where the partitions' resolved pins are kept; default: nix-partition-pins.json in the Dagster "
        "instance's directory.",
    )

    @property
    def name(self) -> str:
        return PARTITIONS_NAMES[self.partitions]

    def partitions_def(self) -> DynamicPartitionsDefinition:
        return versions_partitions(self.name)

    def follow(self) -> PartitionFollow:
        """What the sensor of this kind adds partitions to."""
        return PartitionFollow(self.name, self.partitions, self.keep)


class HistoryNixResource(NixResource):
    """:class:`NixResource` of a set with versions as partitions: a run of a partition builds that version's pins;
    a run without a partition key (none, in a partitioned set, but the type allows it) builds as the plain one."""

    history_kind: str = Field(description="releases | commits: what a partition key names.")
    repo_dir: str = Field(description="The project (its package set's pins.json is the base of every partition).")
    pins_file: str | None = Field(default=None, description="The partitions' pins; default: in the instance's dir.")
    pip_args: list[str] = Field(default_factory=list, description="Extra pip arguments of the release lookup.")
    timeout_seconds: float = Field(default=3600, description="Limit of each Nix command resolving a partition.")

    def stream(self, context: AssetExecutionContext) -> Iterator[Result]:
        if not context.has_partition_key:
            yield from super().stream(context)
            return
        cli = self.cli()
        kind: HistoryKind = "commits" if self.history_kind == "commits" else "releases"
        root = Path(context.instance.root_directory)
        store = PartitionPinsStore(Path(self.pins_file) if self.pins_file else root / STORE_NAME)
        settings = UpdateSettings(
            repo_dir=Path(self.repo_dir), nix_dir=cli.package_dir,
            nix_args={**cli.nix_args, **({"scope": str(cli.scope)} if cli.scope else {})},
            nix_executable=cli.executable, nix_config=cli.nix_config, pip_args=tuple(self.pip_args),
            timeout_seconds=self.timeout_seconds,
        )  # fmt: skip
        key = context.partition_key
        try:
            base = read_pins(Path(cli.package_dir) / "pins.json")
            pins = store.pins_for(
                kind, key, lambda: partition_pins(settings, kind, key, base, steps=root / CACHE_FILE,
                                                  log=context.log.info), context.log.info,
            )  # fmt: skip
        except (PartitionKeyError, PinsError, UpdateError, BisectError, OSError) as e:
            raise Failure(description=f"partition {key}: its pins could not be resolved: {e}") from e
        yield from stream_partition(cli, context, {"pins": pins.to_dict()})


def history_resource(resource: NixResource, history: NixHistory, repo_dir: Path) -> HistoryNixResource:
    """The partitioned resource of ``resource`` (same fields) for ``history`` (a relative ``pins_file``: to
    ``repo_dir``, the project)."""
    pins_file = str((repo_dir / history.pins_file).resolve()) if history.pins_file else None
    return HistoryNixResource(
        **{name: getattr(resource, name) for name in NixResource.model_fields},
        history_kind=history.partitions, repo_dir=str(repo_dir), pins_file=pins_file,
    )  # fmt: skip


def check_history(history: NixHistory, graph: NixPackageGraph, package_dir: Path, where: str, *, publish: bool) -> None:
    """Refuse ``history:`` on a set it cannot move (no Dagster source or pins.json) or beside publishing (which
    publishes the unpartitioned out-links).

    Raises:
        NixConfigError: naming the ``defs.yaml`` key and what is missing.
    """
    problems = missing_for_update(graph, package_dir)
    if publish:
        problems.append("publish: set (publishing takes the unpartitioned builds; partitions have none)")
    if problems:
        raise NixConfigError(
            f"{where}: attributes.history (partitions: {history.partitions}) is set, but the package set "
            f"{package_dir} has "
            + " and ".join(problems)
            + ": partitions are versions of its Dagster source. Remove history (the default: no partitions)."
        )


def with_history(
    history: NixHistory | None,
    resource: NixResource,
    graph: NixPackageGraph,
    package_dir: Path,
    where: str,
    repo_dir: Path,
    *,
    publish: bool,
) -> tuple[NixResource, DynamicPartitionsDefinition | None]:
    """The package assets' resource and partitions: ``resource`` and none without ``history``; with it (checked
    by :func:`check_history`), the partitioned resource and the dynamic partitions."""
    if history is None:
        return resource, None
    check_history(history, graph, package_dir, where, publish=publish)
    return history_resource(resource, history, repo_dir), history.partitions_def()


__all__ = ["PARTITIONS_NAMES", "HistoryNixResource", "NixHistory", "check_history", "history_resource", "with_history"]
