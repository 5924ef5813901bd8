"""The code location: the project's defs folder (``dagster_nix_builder/defs/``), loaded the ``dg`` way.

``dg`` finds it through ``[tool.dg]`` of ``pyproject.toml``; ``dagster ... -m dagster_nix_builder.definitions``
and ``workspace.yaml`` through the module-level ``defs``. The package set is configured in
``defs/packages/defs.yaml`` (see :mod:`dagster_nix_builder.components.package_set`); its paths are relative
to the project root: the directory of the ``pyproject.toml`` whose ``[tool.dg.project]`` names this
package — the checkout holding this module (editable install), else the working directory (an installed
package run from a checkout, e.g. this project's own Nix package: never a directory of the Nix store, which
is read-only by contract; the component keeps its state in the project then, see ``NixPackageSetComponent``).

``DAGSTER_HOME``: Dagster's and dg's CLIs read a ``.env`` in the working directory before they pick the
instance; ``scripts/setup.sh`` writes one with ``DAGSTER_HOME`` = ``<project>/.dagster_home``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_shared.utils.config import discover_config_file, load_toml_as_dict

from dagster_nix_builder.nix.output import nix_store_dir

ROOT_MODULE = "dagster_nix_builder"


def _is_this_project(config: Path | None) -> bool:
    if config is None:
        return False
    raw = load_toml_as_dict(config)
    project = (
        raw.get("project", {})
        if config.name == "dg.toml"
        else raw.get("tool", {}).get("dg", {}).get("project", {})
    )
    return project.get("root_module") == ROOT_MODULE


def project_root() -> Path:
    """The dg project of this code location (see the module docstring)."""
    for start in (Path(__file__).resolve().parent, Path.cwd()):
        if start.is_relative_to(nix_store_dir()):
            continue
        config = discover_config_file(start)
        if _is_this_project(config):
            return config.parent  # type: ignore[union-attr]
    raise dg.DagsterInvariantViolationError(
        f"No dg project of {ROOT_MODULE} above {Path(__file__).resolve().parent} or the working directory "
        f"{Path.cwd()}: run from the checkout (its pyproject.toml has [tool.dg.project] root_module = "
        f'"{ROOT_MODULE}").'
    )


def build_definitions() -> dg.Definitions:
    """Every component of the defs folder (today the package set's)."""
    return dg.load_from_defs_folder(path_within_project=project_root())


defs = build_definitions()
