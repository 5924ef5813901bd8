"""Translate Nix packages into Dagster asset specs. Subclass :class:`DagsterNixTranslator` to customise."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey, AssetSpec, AutomationCondition, MetadataValue

from dagster_nix_builder.nix.graph import NixPackage

ATTR_KEY = "dagster-nix/attr"
FILE_KEY = "dagster-nix/file"
DRV_PATH_KEY = "dagster-nix/drv_path"
OUTPUTS_KEY = "dagster-nix/outputs"


@dataclass(frozen=True)
class DagsterNixTranslatorSettings:
    """Switches of the default translation.

    Attributes:
        enable_code_versions: set ``code_version`` to the derivation hash (stale marking in the UI).
        enable_asset_checks: one check per derivation of each package's ``passthru.tests``.
        group_name: asset group of every package (None: Dagster's default group).
        key_prefix: prefix of every asset key.
        automation_condition: automation condition of every package, if any.
    """

    enable_code_versions: bool = True
    enable_asset_checks: bool = True
    group_name: str | None = "nix"
    key_prefix: tuple[str, ...] = ()
    automation_condition: AutomationCondition | None = None


class DagsterNixTranslator:
    """Maps a :class:`NixPackage` to an :class:`AssetSpec`. Override :meth:`get_asset_spec` (or the
    smaller hooks it calls) to change keys, groups, descriptions or automation."""

    def __init__(self, settings: DagsterNixTranslatorSettings | None = None) -> None:
        self.settings = settings or DagsterNixTranslatorSettings()

    def get_asset_key(self, attr: str) -> AssetKey:
        """Key of the package with attribute ``attr`` (default: the attribute name)."""
        return AssetKey([*self.settings.key_prefix, attr])

    def get_description(self, package: NixPackage) -> str:
        """Description shown in the UI."""
        head = package.description or f"Nix package `{package.attr}`"
        where = f" built from `{package.file}`" if package.file else ""
        return f"{head}{where}."

    def get_asset_spec(self, package: NixPackage) -> AssetSpec:
        """The asset spec of one package: key, deps (the Nix edges), code version, metadata."""
        metadata: dict = {ATTR_KEY: package.attr}
        if package.file:
            metadata[FILE_KEY] = MetadataValue.path(package.file)
        if package.drv_path:
            metadata[DRV_PATH_KEY] = MetadataValue.path(package.drv_path)
        if package.outputs:
            metadata[OUTPUTS_KEY] = MetadataValue.json(dict(package.outputs))
        tags = {"dagster-nix/python": "true"} if package.is_python else {}
        return AssetSpec(
            key=self.get_asset_key(package.attr),
            deps=[self.get_asset_key(dep) for dep in package.deps],
            description=self.get_description(package),
            group_name=self.settings.group_name,
            code_version=package.drv_hash if self.settings.enable_code_versions else None,
            metadata=metadata,
            tags=tags,
            kinds={"nix", "python"} if package.is_python else {"nix"},
            automation_condition=self.settings.automation_condition,
            skippable=True,  # a package whose dependency failed is not reported
        )
