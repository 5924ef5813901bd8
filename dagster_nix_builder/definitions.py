"""The code location: one ``Definitions`` with an asset per package of the repo's ``nix/``.

Environment:
    DAGSTER_NIX_DIR: package-set directory (default: ``<repo>/nix``).
    DAGSTER_NIX_CONFIG: YAML file of :class:`NixResource` fields (default: ``<repo>/nix-builder.yaml``
        if it exists); values ``{env: NAME}`` are read from the environment at run time.
    DAGSTER_NIX_SCOPE, DAGSTER_NIX_OUT_LINK_DIR, DAGSTER_NIX_EXECUTABLE: override single fields.
    DAGSTER_HOME: defaults to ``<repo>/.dagster_home`` (SQLite) for processes that load this module
        before creating an instance (``dagster dev`` code servers); export it for ``dagster asset
        materialize`` so CLI runs land in the same place.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)

from .assets import nix_assets
from .resource import NixResource
from .sensors import package_automation_condition, update_definitions
from .translator import DagsterNixTranslator, DagsterNixTranslatorSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NIX_DIR = REPO_ROOT / "nix"
DEFAULT_DAGSTER_HOME = REPO_ROOT / ".dagster_home"
DEFAULT_CONFIG = REPO_ROOT / "nix-builder.yaml"


def default_dagster_home() -> Path:
    """Set ``DAGSTER_HOME`` to the project-local ``.dagster_home`` unless it is set; return it."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    return home


def nix_resource_from_env() -> NixResource:
    """The Nix resource as configured by the YAML file and the environment."""
    overrides = {
        "nix_dir": os.environ.get("DAGSTER_NIX_DIR", str(DEFAULT_NIX_DIR)),
        "out_link_dir": os.environ.get("DAGSTER_NIX_OUT_LINK_DIR", str(REPO_ROOT / ".nix-results")),
    }
    for field, var in (("scope", "DAGSTER_NIX_SCOPE"), ("executable", "DAGSTER_NIX_EXECUTABLE")):
        if var in os.environ:
            overrides[field] = os.environ[var]
    config = Path(os.environ.get("DAGSTER_NIX_CONFIG", str(DEFAULT_CONFIG)))
    if config.is_file():
        return NixResource.from_yaml(config, **overrides)
    return NixResource(**overrides)


def build_definitions() -> Definitions:
    """Evaluate the package set with Nix and build the code location's definitions."""
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
