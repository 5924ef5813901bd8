"""The code location: one ``Definitions`` with an asset per package of the repo's ``nix/``.

Configuration of the ``nix`` resource (:class:`NixResource`), each layer over the one before:

1. defaults: the fields' own, except ``nix_dir`` = ``<repo>/nix`` and ``out_link_dir`` = ``<repo>/.nix-results``;
2. the YAML file named by ``DAGSTER_NIX_CONFIG``, else ``<repo>/nix-builder.yaml`` if it exists (values
   ``{env: NAME}`` are read from the environment at run time; relative paths are relative to the file);
3. the environment: ``DAGSTER_NIX_DIR``, ``DAGSTER_NIX_SCOPE``, ``DAGSTER_NIX_OUT_LINK_DIR``,
   ``DAGSTER_NIX_EXECUTABLE``.

A named file that does not exist, an unknown key, a value of the wrong type or invalid YAML fails the load
with a :class:`NixConfigError` naming the file, the line and the key.

``DAGSTER_HOME``: Dagster's CLI picks its instance before it loads this module, so without ``DAGSTER_HOME``
``dagster asset materialize`` keeps its run in a throwaway instance. ``dagster-nix-builder`` (see
:mod:`dagster_nix_builder.cli`) is Dagster's CLI with ``DAGSTER_HOME`` defaulting to ``<repo>/.dagster_home``;
loading this module without ``DAGSTER_HOME`` warns.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)

from .assets import nix_assets
from .cli import DEFAULT_DAGSTER_HOME
from .resource import NixResource, resource_from_environment
from .sensors import package_automation_condition, update_definitions
from .translator import DagsterNixTranslator, DagsterNixTranslatorSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NIX_DIR = REPO_ROOT / "nix"
DEFAULT_CONFIG = REPO_ROOT / "nix-builder.yaml"


def default_dagster_home() -> Path:
    """Set ``DAGSTER_HOME`` to the project-local ``.dagster_home`` unless it is set; return it."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    return home


def nix_resource_from_env(environ: Mapping[str, str] | None = None) -> NixResource:
    """The Nix resource: defaults, then the YAML file, then the environment (see the module docstring).

    Raises:
        NixConfigError: the named file does not exist, or the file is wrong (names file, line and key).
    """
    return resource_from_environment(
        os.environ if environ is None else environ,
        defaults={"nix_dir": str(DEFAULT_NIX_DIR), "out_link_dir": str(REPO_ROOT / ".nix-results")},
        default_config=DEFAULT_CONFIG,
    )


def build_definitions() -> Definitions:
    """Evaluate the package set with Nix and build the code location's definitions."""
    if not os.environ.get("DAGSTER_HOME"):
        print(
            "dagster-nix-builder: DAGSTER_HOME is not set, so Dagster's CLI keeps this command's runs in a "
            "temporary instance, deleted when it exits. Run `.venv/bin/dagster-nix-builder ...` (Dagster's CLI "
            f"with DAGSTER_HOME={DEFAULT_DAGSTER_HOME}) or export DAGSTER_HOME={DEFAULT_DAGSTER_HOME}.",
            file=sys.stderr,
        )
    default_dagster_home()
    nix = nix_resource_from_env()
    graph = nix.load_graph()
    translator = DagsterNixTranslator(DagsterNixTranslatorSettings(automation_condition=package_automation_condition()))
    packages = Definitions(
        assets=[nix_assets(graph, translator=translator)],
        resources={"nix": nix},
        # Rebuild downstream packages after a dependency changes, and retry a failed one once its
        # dependency is fixed. Stopped until turned on: on its first tick it builds every missing package.
        sensors=[AutomationConditionSensorDefinition(
            "nix_packages_automation", target=AssetSelection.all(), default_status=DefaultSensorStatus.STOPPED,
        )],
        # All packages are built by one step (one `nix build`): a step subprocess would only load the
        # definitions a second time (about 2 s a run).
        executor=in_process_executor,
    )
    return Definitions.merge(
        packages,
        # The update job and the upstream sensors: they edit and commit nix/pins.json of this checkout.
        update_definitions(scope=nix.resolved("scope"), nix_config=nix.resolved("nix_config")),
    )


defs = build_definitions()
