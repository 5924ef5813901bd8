"""``NixPackageSetComponent``: a Nix package set as a state-backed Dagster component (``defs.yaml``).

.. code-block:: yaml

    # <project>/dagster_nix_builder/defs/packages/defs.yaml
    type: dagster_nix_builder.NixPackageSetComponent
    attributes:
      package_set: nix                      # relative to the project root
      scope: "{{ env.NIX_SCOPE }}"          # any value may come from the environment
      translation: {group_name: nix, key_prefix: [], code_versions: true, checks: true}
      include_update: null                  # the update job and its two sensors: for a Dagster source only

Its state is the evaluated package graph, a JSON document where the framework keeps local state
(``<defs folder>/.local_defs_state/<key>/state``) with a *fingerprint* of all the evaluation read
(:meth:`NixPackageSetComponent.fingerprint_inputs`), computed on load without running anything: when it matches,
the assets are built from the state, Nix not run; otherwise the set is evaluated with Nix and the state written
atomically (the framework's ``refresh_state``). Underneath: ``nix_assets``, ``NixResource``, the translator.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)
from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext, DefinitionsLoadType
from dagster._core.storage.defs_state.base import DefsStateStorage
from dagster._utils.env import using_dagster_dev
from dagster.components import ComponentLoadContext, Model, Resolvable, StateBackedComponent, scaffold_with
from dagster.components.utils.defs_state import DefsStateConfig, DefsStateConfigArgs, ResolvedDefsStateConfig
from dagster_shared.serdes.objects.models.defs_state_info import LOCAL_STATE_VERSION, DefsStateManagementType
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from dagster_nix_builder.adapters.assets import nix_assets
from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.adapters.translator import DagsterNixTranslator, DagsterNixTranslatorSettings
from dagster_nix_builder.components.attributes import (
    NixPublish,
    NixTranslation,
    TextMap,
    attribute_errors,
    attribute_location,
)
from dagster_nix_builder.components.history import NixHistory, with_history
from dagster_nix_builder.components.scaffolder import NixPackageSetScaffolder
from dagster_nix_builder.components.sources import source_errors
from dagster_nix_builder.components.update import include_update
from dagster_nix_builder.nix import graph as graph_module
from dagster_nix_builder.nix.errors import NixConfigError
from dagster_nix_builder.nix.file_digests import local_sources, local_sources_digest, tree_digest
from dagster_nix_builder.nix.graph import evaluate_package_set, graph_from_document
from dagster_nix_builder.nix.output import nix_store_dir
from dagster_nix_builder.nix.settings import DEFAULT_HOST_PYTHON, DEFAULT_NIX_CONFIG
from dagster_nix_builder.publish.assets import PublishSettings, publish_assets
from dagster_nix_builder.upstream.sensors import package_automation_condition, update_definitions

STATE_FORMAT = 3  # 3: the graph of any source, its edges read from the derivations (evaluate_package_set)


# ---- the fingerprint ----------------------------------------------------------------------------------


def _file_identity(path: str | None) -> dict[str, Any] | None:
    """A program's identity without running it: its real path, size and modification time."""
    if not path:
        return None
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return {"path": real, "missing": True}
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _code_digest() -> str:
    """This package's evaluation code: ``graph.py`` and the shipped ``*.nix``."""
    here = Path(graph_module.__file__).parent
    digest = hashlib.sha256()
    for path in [Path(graph_module.__file__), *sorted(here.glob("*.nix"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ---- the component ------------------------------------------------------------------------------------


@scaffold_with(NixPackageSetScaffolder)
class NixPackageSetComponent(StateBackedComponent, Model, Resolvable):
    """Every package of a Nix package set an asset, every build a materialization; the graph evaluated by
    Nix once and kept as the component's state until a file of the set or a Nix-relevant attribute changes."""

    package_set: str | None = Field(
        default=None, description="A callPackage directory (relative: to the project); default nix."
    )
    file: str | None = Field(
        default=None, description="A Nix file of the packages, instead (relative: to the project)."
    )
    flake: str | None = Field(default=None, description="A flake (a directory or flake reference), instead.")
    attribute: str | None = Field(
        default=None, description="Attribute path of the packages in the file or flake (flake: packages.<system>)."
    )
    args: TextMap = Field(default=None, description="Arguments of the file's function (`--argstr <k> <v>`).")
    select: list[str] | None = Field(default=None, description="Globs of the attribute names to take (null: all).")
    exclude: list[str] | None = Field(default=None, description="Globs of attribute names to leave out.")
    executable: str = Field(default="nix", description="The `nix` executable (on PATH or a path).")
    scope: str | None = Field(default="auto", description="auto | bootstrap | nixpkgs; null: none.")
    nix_args: TextMap = Field(default=None, description="Further `--argstr <k> <v>`.")
    nix_config: str = Field(default=DEFAULT_NIX_CONFIG, description="NIX_CONFIG of every Nix command.")
    out_link_dir: str = Field(default=".nix-results", description="Out-link folder (GC roots).")
    max_jobs: int | None = Field(default_factory=os.cpu_count, description="`--max-jobs` (default: cores).")
    cores: int | None = Field(default=None, description="`--cores` of `nix build`.")
    builders: str | None = Field(default=None, description="Remote builders (`--builders`).")
    extra_options: TextMap = Field(default=None, description="Further `--option <k> <v>`.")
    translation: NixTranslation = Field(default_factory=NixTranslation, description="Packages to specs.")
    automation: bool = Field(default=True, description="Eager condition, sensor (stopped).")
    include_update: bool | None = Field(
        default=None, description="The update job and its sensors; null: only for a set with a dagster-src."
    )
    publish: NixPublish | None = Field(default=None, description="Publish each package (published/<attr>).")
    history: NixHistory | None = Field(default=None, description="Versions as partitions (null: none).")
    defs_state: ResolvedDefsStateConfig = Field(
        default_factory=lambda: DefsStateConfigArgs(
            management_type=DefsStateManagementType.LOCAL_FILESYSTEM, refresh_if_dev=False
        ),
        description="Where the evaluated graph is kept (`refresh_if_dev: true`: evaluate on every dev load).",
    )

    _project_root: Path | None = PrivateAttr(default=None)
    _defs_module: tuple[str, Path] | None = PrivateAttr(default=None)  # (name, path) of the defs folder
    _defs_path: Path | None = PrivateAttr(default=None)  # its defs.yaml (or folder), for errors
    _known_sources: list[dict[str, Any]] = PrivateAttr(default_factory=list)  # the last state's local sources

    @field_validator("nix_args", "extra_options", "args", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        # From Python a number may come in; Nix takes strings (defs.yaml's text is kept: TextMap).
        if isinstance(value, Mapping):
            return {k: v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value

    @classmethod
    def load(cls, attributes, context: ComponentLoadContext):
        try:
            component = super().load(attributes, context)
        except ValidationError as exc:
            raise NixConfigError(attribute_errors(context.path, exc)) from None
        component._project_root = context.project_root
        component._defs_module = (context.defs_module_name, context.defs_module_path)
        component._defs_path = context.path
        component._check_source()
        return component

    def _check_source(self) -> None:
        """One source, and only the attributes it takes (:func:`source_errors`)."""
        problems = source_errors(self.package_set, self.file, self.flake, self.attribute, self.args)
        if problems:
            key, message = problems[0]
            raise NixConfigError(f"{self._where(key)}: attributes.{key}: {message}")

    def _where(self, key: str) -> str:
        """``<defs.yaml>:<line>`` of an attribute, for errors (the class's name outside a defs.yaml)."""
        return attribute_location(self._defs_path, key) if self._defs_path else type(self).__name__

    # ---- paths and the resource ----

    @property
    def project_root(self) -> Path:
        """The dg project's root (the working directory when built outside a project)."""
        return self._project_root or Path.cwd()

    def _path(self, value: str) -> Path:
        return (self.project_root / value).resolve()

    @property
    def kind(self) -> str:
        return "file" if self.file else "flake" if self.flake else "directory"

    @property
    def location(self) -> str:
        """The source as Nix is given it: an absolute path, or a flake reference that is not a path."""
        value = self.file or self.flake or self.package_set or "nix"
        if self.kind == "flake" and re.match(r"[a-z][a-z0-9+]*:", value) and not value.startswith("path:"):
            return value
        return str(self._path(value.removeprefix("path:")))

    @property
    def package_dir(self) -> Path:
        """The folder whose files the evaluation reads: the set's directory, the file's, the flake's."""
        location = Path(self.location)
        return location.parent if self.kind == "file" else location

    @property
    def defs_state_config(self) -> DefsStateConfig:
        return DefsStateConfig.from_args(
            self.defs_state,
            default_key=f"NixPackageSetComponent[{self.file or self.flake or self.package_set or 'nix'}]",
        )

    def nix_resource(self, takes: Sequence[str] | None = None) -> NixResource:
        """The resource the assets build with (every path absolute). ``takes``: the arguments the directory's
        function takes, when known (the state's): ``scope`` is passed only to a set that takes it."""
        return NixResource(
            executable=self.executable,
            nix_dir=self.location,
            kind=self.kind,
            attribute=self.attribute.split(".") if self.attribute else None,
            select=self.select,
            exclude=self.exclude,
            scope=self.scope if takes is None or "scope" in takes else None,
            out_link_dir=str(self._path(self.out_link_dir)),
            max_jobs=self.max_jobs,
            cores=self.cores,
            builders=self.builders,
            extra_options=self.extra_options,
            nix_args={**(self.nix_args or {}), **(self.args or {})} or None,
            nix_config=self.nix_config,
        )

    def translator(self) -> DagsterNixTranslator:
        t = self.translation
        return DagsterNixTranslator(DagsterNixTranslatorSettings(
            enable_code_versions=t.code_versions,
            enable_asset_checks=t.checks,
            group_name=t.group_name,
            key_prefix=tuple(t.key_prefix),
            automation_condition=package_automation_condition() if self.automation else None,
        ))  # fmt: skip

    # ---- state ----

    def fingerprint_inputs(self, sources: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """What the evaluation depends on, computed without running anything. ``sources``: the files outside
        the package set that packages take (``passthru.localSources``, as the state's graph names them: this
        project's own package takes its checkout's dagster_nix_builder/), hashed by their filter's rules."""
        nix_args = dict(self.nix_args or {})
        return {
            "format": STATE_FORMAT,
            "package_set": str(self.package_dir),
            "source": [self.kind, self.location, self.attribute, self.select, self.exclude, self.args],
            "files": self._files_digest(),
            "executable": self.executable,
            "nix": _file_identity(shutil.which(self.executable)),
            "host_python": _file_identity(nix_args.get("hostPython", DEFAULT_HOST_PYTHON)),
            "scope": self.scope,
            "nix_args": nix_args,
            "nix_config": self.nix_config,
            "nix_path": os.environ.get("NIX_PATH"),
            "platform": [sys.platform, platform.machine()],
            "code": _code_digest(),
            "local_sources": local_sources_digest(sources),
        }

    def _files_digest(self) -> str | None:
        """The files the evaluation reads: a directory's all; a file's or flake's folder but what this component
        and Dagster write there (out-links, state, virtualenvs), which would make every load stale."""
        if not self.package_dir.is_dir():
            return None
        if self.kind == "directory":
            return tree_digest(self.package_dir)
        written = {".local_defs_state", ".nix-results", Path(self.out_link_dir).name, ".venv", "__pycache__"}
        return tree_digest(self.package_dir, exclude=written)

    def fingerprint(self, sources: Sequence[Mapping[str, Any]] = ()) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint_inputs(sources), sort_keys=True).encode()).hexdigest()

    def write_state_to_path(self, state_path: Path) -> None:
        """Evaluate the package set with Nix; write graph and fingerprint (a temporary file, then a rename)."""
        nix = self.nix_resource()
        # Before evaluating, so an edit during the evaluation is seen next time: with the local sources the last
        # state named; only if the evaluation names others are those hashed after it.
        fingerprint = self.fingerprint(self._known_sources)
        graph = evaluate_package_set(nix)
        if local_sources(graph) != self._known_sources:
            fingerprint = self.fingerprint(local_sources(graph))
        document = {
            "format": STATE_FORMAT,
            "fingerprint": fingerprint,
            "nix_version": str(nix.cli().nix_version()),
            "graph": graph,
        }
        state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = state_path.with_name(f".{state_path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=1, sort_keys=True))
        os.replace(temporary, state_path)

    @staticmethod
    def read_state(state_path: Path | None) -> dict[str, Any] | None:
        """The state document at ``state_path``, or None when there is none (or it cannot be read)."""
        if state_path is None or not state_path.is_file():
            return None
        try:
            document = json.loads(state_path.read_text())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) and document.get("format") == STATE_FORMAT else None

    def _store_safe_state_path(self, project_root: Path) -> Path | None:
        """Local state lives in the defs folder (``<defs>/.local_defs_state/<key>/state``), but this package
        may run from its Nix build (tests/test_self_hosting.py), its defs folder a store path: then the state
        goes to that folder's place in the project (``<project>/dagster_nix_builder/defs/...``), never into the
        store. None: the framework's place."""
        config = self.defs_state_config
        if self._defs_module is None or config.management_type != DefsStateManagementType.LOCAL_FILESYSTEM:
            return None
        name, path = self._defs_module
        if not os.path.realpath(path).startswith(nix_store_dir().rstrip("/") + "/"):
            return None
        key = re.sub(r"[^A-Za-z0-9._-]", "__", config.key)  # as the framework names its folder
        return project_root.joinpath(*name.split("."), ".local_defs_state", key, "state")

    async def refresh_state(self, project_root: Path) -> str:
        state_path = self._store_safe_state_path(project_root)
        if state_path is None:
            return await super().refresh_state(project_root)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        ignore = state_path.parent.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        self.write_state_to_path(state_path)
        if (storage := DefsStateStorage.get()) is not None:
            storage.set_latest_version(self.defs_state_config.key, LOCAL_STATE_VERSION)
        return LOCAL_STATE_VERSION

    def _current_state(self, context: ComponentLoadContext) -> dict[str, Any] | None:
        state_path = self._store_safe_state_path(context.project_root)
        if state_path is not None:
            if state_path.is_file():
                DefinitionsLoadContext.get().add_defs_state_info(
                    self.defs_state_config.key, LOCAL_STATE_VERSION, state_path.stat().st_ctime
                )
            return self.read_state(state_path)
        with DefinitionsLoadContext.get().state_path(
            self.defs_state_config, DefsStateStorage.get(), context.project_root
        ) as state_path:
            return self.read_state(state_path)

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        """Build from the state; evaluate with Nix first only when it is missing or stale."""
        self._project_root = context.project_root
        config = self.defs_state_config
        if config.management_type == DefsStateManagementType.LEGACY_CODE_SERVER_SNAPSHOTS:
            return super().build_defs(context)
        load_context = DefinitionsLoadContext.get()
        state = self._current_state(context)
        forced = using_dagster_dev() and config.refresh_if_dev
        self._known_sources = local_sources(state["graph"]) if state else []
        stale = state is None or state.get("fingerprint") != self.fingerprint(self._known_sources)
        # A run worker (reconstruction) builds from the state its code server loaded, fresh or not.
        if state is None or ((stale or forced) and load_context.load_type == DefinitionsLoadType.INITIALIZATION):
            version = asyncio.run(self.refresh_state(context.project_root))
            load_context.add_defs_state_info(config.key, version)
            state = self._current_state(context)
        return self.build_defs_from_document(state)

    def build_defs_from_state(self, context: ComponentLoadContext, state_path: Path | None) -> Definitions:
        self._project_root = context.project_root
        return self.build_defs_from_document(self.read_state(state_path))

    def build_defs_from_document(self, state: Mapping[str, Any] | None) -> Definitions:
        """The definitions of one state document: the assets, the resource and the extras."""
        if state is None:
            raise RuntimeError(
                f"NixPackageSetComponent: no state for {self.package_dir} (key {self.defs_state_config.key!r}); "
                "run `dg utils refresh-defs-state`."
            )
        graph = graph_from_document(state["graph"])
        # Rebuild downstream packages after a dependency changes, and retry a failed one once its dependency
        # is fixed. Stopped until turned on: on its first tick it builds every missing package.
        automation = AutomationConditionSensorDefinition(
            "nix_packages_automation", target=AssetSelection.all(), default_status=DefaultSensorStatus.STOPPED
        )
        nix, partitions = with_history(  # versions as partitions, when `history:` is set (else: as given)
            self.history, self.nix_resource(state["graph"].get("takes")), graph, self.package_dir,
            self._where("history"), self.project_root, publish=bool(self.publish and self.publish.cache_url),
        )  # fmt: skip
        packages = Definitions(
            assets=[nix_assets(graph, translator=self.translator(), partitions_def=partitions)],
            resources={"nix": nix},
            sensors=[automation] if self.automation else [],
            executor=in_process_executor,  # one step (one `nix build`): a subprocess would load them again
        )
        if self.publish is not None and self.publish.cache_url:  # e.g. "{{ env.DNB_CACHE_URL }}", unset: off
            if not self.publish.secret_key_file:
                raise NixConfigError(
                    f"publish.cache_url is {self.publish.cache_url!r} but publish.secret_key_file is not set: "
                    "name the signing key (scripts/publish.sh makes one outside the repository)."
                )
            translator = self.translator()
            keys = {attr: translator.get_asset_key(attr) for attr in graph if graph[attr].outputs}
            settings = PublishSettings(**{**self.publish.model_dump(), "index_url": self.publish.index_url or None})
            packages = Definitions.merge(
                packages, Definitions(assets=[publish_assets(graph, keys, settings, group_name="published")])
            )
        if not include_update(self.include_update, graph, self.package_dir, self._where("include_update")):
            return packages
        return Definitions.merge(
            packages,
            # The update job and the upstream sensors: they edit and commit <package set>/pins.json.
            update_definitions(
                repo_dir=self.project_root, nix_dir=os.path.relpath(self.package_dir, self.project_root),
                scope=self.scope, nix_config=self.nix_config, key_prefix=tuple(self.translation.key_prefix),
                partitions=self.history.follow() if self.history else None,  # the sensor adds partitions
            ),
        )  # fmt: skip
