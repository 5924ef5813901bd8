"""Whether a package set gets the update job and the upstream sensors (``include_update`` of ``defs.yaml``).

They follow Dagster upstream and move a *Dagster source*: the set's ``dagster-src`` attribute (the tree every
``dagster-src.package`` declaration is cut from), built from the ``pins.json`` beside the set's ``default.nix``
that the update job edits and commits. The one sign that a set declares such a source is that attribute, read
from the evaluated graph (the component's state: deciding runs no Nix); a ``pins.json`` alone is none (pin files
of other tools are called so too). ``null`` (the default): on exactly for such a set, so the bundled ``nix/``
gets them and any other set does not; ``false``: off; ``true``: on, and a set that lacks what the update needs
fails here, naming the ``defs.yaml`` key and what is missing, instead of at the update's first run.
"""

from __future__ import annotations

from pathlib import Path

from dagster_nix_builder.nix.errors import NixConfigError
from dagster_nix_builder.nix.graph import NixPackageGraph
from dagster_nix_builder.upstream.update.model import DAGSTER_SOURCE_ATTR


def declares_dagster_source(graph: NixPackageGraph) -> bool:
    """Whether the package set has a Dagster source the update job can move (its ``dagster-src``)."""
    return DAGSTER_SOURCE_ATTR in graph


def missing_for_update(graph: NixPackageGraph, package_dir: Path) -> list[str]:
    """What the update job needs of the package set and it lacks (empty: nothing)."""
    missing = []
    if not declares_dagster_source(graph):
        attrs = ", ".join(sorted(graph)) or "none"
        missing.append(f"no `{DAGSTER_SOURCE_ATTR}` attribute (the Dagster source the update moves; it has: {attrs})")
    if not (package_dir / "pins.json").is_file():
        missing.append(f"no {package_dir / 'pins.json'} (the pins the update edits)")
    return missing


def include_update(setting: bool | None, graph: NixPackageGraph, package_dir: Path, where: str) -> bool:
    """``include_update`` resolved against the package set (see the module docstring).

    Args:
        setting: The attribute as configured: None (decide from the set), True or False.
        graph: The package set's graph.
        package_dir: The package-set directory.
        where: Where the attribute is set (``<defs.yaml>:<line>``), for the error.

    Raises:
        NixConfigError: ``setting`` is True and the set lacks what the update needs.
    """
    if setting is None:
        return declares_dagster_source(graph)
    if setting and (missing := missing_for_update(graph, package_dir)):
        raise NixConfigError(
            f"{where}: attributes.include_update is true, but the package set {package_dir} has "
            + " and ".join(missing)
            + ": the update job and the upstream sensors follow a Dagster source. Remove include_update "
            "(null, the default: on only for a set with one) or set it to false."
        )
    return setting
