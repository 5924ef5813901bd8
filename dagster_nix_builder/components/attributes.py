"""``defs.yaml`` attributes: an invalid one named with its file and line, maps of strings kept as written, and
the nested ``translation`` and ``publish`` models.

Dagster renders every attribute as a native Jinja template, which turns a string that looks like a Python
literal into one: ``nix_args: {version: '1.10'}`` would reach Nix as ``1.1``, ``'007'`` as ``7``. A
:data:`TextMap` field renders its templates as text, so the YAML's own text (or the environment variable's)
is what Nix gets; an unquoted number is refused by the schema, naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import jinja2
import yaml
from dagster import Resolver
from dagster.components import Model, Resolvable
from dagster.components.resolved.context import ResolutionContext
from pydantic import Field, ValidationError


def _render_as_text(context: ResolutionContext, value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    rendered = {}
    for key, raw in value.items():
        native = context.at_path(key).resolve_value(raw)  # Dagster's own errors for an unknown name
        text = isinstance(raw, str) and raw and not isinstance(native, str)
        rendered[key] = jinja2.Template(raw, keep_trailing_newline=True).render(**context.scope) if text else native
    return rendered


TextMap = Annotated[dict[str, str] | None, Resolver(_render_as_text, model_field_type=dict[str, str] | None)]
"""A map of strings whose ``{{ templates }}`` render as text (see the module docstring)."""


def _line_of(defs_yaml: Path, keys: tuple) -> int | None:
    """Line of the deepest of ``keys`` (a path of mapping keys) found in ``defs_yaml``."""
    try:
        node = yaml.compose(defs_yaml.read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(key)), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def attribute_location(path: Path, *keys: str) -> str:
    """``<defs.yaml>:<line>`` of ``attributes.<keys>`` (the file alone where the key is not written)."""
    defs_yaml = path / "defs.yaml" if path.is_dir() else path
    line = _line_of(defs_yaml, ("attributes", *keys))
    return f"{defs_yaml}:{line}" if line else str(defs_yaml)


def attribute_errors(path: Path, exc: ValidationError) -> str:
    """One line per invalid attribute: ``<defs.yaml>:<line>: attributes.<key>: <what is wrong> (got ...)``."""
    lines = []
    for error in exc.errors():
        keys = tuple(str(k) for k in error["loc"])
        where = attribute_location(path, *keys)
        lines.append(f"{where}: attributes.{'.'.join(keys)}: {error['msg']} (got {error['input']!r})")
    return "\n".join(lines)


# ---- nested attributes ----


class NixTranslation(Model, Resolvable):
    """How packages become asset specs (:class:`DagsterNixTranslatorSettings`)."""

    group_name: str | None = Field(default="nix", description="Asset group of the packages.")
    key_prefix: list[str] = Field(default_factory=list, description="Prefix of every asset key.")
    code_versions: bool = Field(default=True, description="code_version = derivation hash.")
    checks: bool = Field(default=True, description="A check per passthru.tests test.")


class NixPublish(Model, Resolvable):
    """Where to publish (:class:`~dagster_nix_builder.publish.assets.PublishSettings`): ``published/<attr>`` assets."""

    cache_url: str | None = Field(
        default=None, description="Binary cache `nix copy` writes to, e.g. file:///srv/nix-cache; null: no publishing."
    )
    secret_key_file: str | None = Field(default=None, description="Signing key, outside the repository.")
    cache_http_url: str | None = Field(default=None, description="Where consumers substitute from.")
    index_repository_url: str | None = Field(default=None, description="Python package index upload URL.")
    index_url: str | None = Field(default=None, description="Its simple index (the installs check).")
    index_username: str | None = Field(default=None, description="Index user.")
    index_password_env: str | None = Field(default=None, description="Variable holding the index password.")
    allow_nonreproducible: bool = Field(default=False, description="Publish what does not rebuild identically.")
