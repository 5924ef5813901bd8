"""Publishing as part of the asset graph: ``published/<attr>`` downstream of each package.

Materializing ``published/<attr>`` takes the package's outputs as they are in the store (it builds nothing:
a package that is not built yet fails naming the asset to materialize first) and, in this order:

1. the reproducibility gate: the derivation is rebuilt with Nix's own check and compared; a package that does
   not rebuild bit for bit is not published unless ``allow_nonreproducible`` says so (check ``reproducible``);
2. its closure is copied to the binary cache, signed on upload with the configured key (nothing is written
   into the local store or its database);
3. its wheel (``dist`` output) is uploaded to the package index, when one is configured;
4. a provenance document is written next to the cache's artifacts and kept as metadata;
5. the checks: ``substitutes`` (a fresh, empty store substitutes the closure from the cache's HTTP URL with
   signatures required, building nothing) and, for a package with executables, ``installs`` (a fresh
   virtualenv installs it from the index and runs it).

One package's failure fails only that publication (it is not reported as published) and the run at the end;
a retry after the fault is fixed completes it (uploads are skipped for what the cache or index already has).
"""


import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.adapters.results import wheel_path
from dagster_nix_builder.nix.errors import NixBuilderError, NixBuildError
from dagster_nix_builder.nix.graph import NixPackage, NixPackageGraph
from dagster_nix_builder.publish.binary_cache import publish_closure, read_public_key, verify_substitution
from dagster_nix_builder.publish.package_index import upload_wheels, verify_install
from dagster_nix_builder.publish.provenance import provenance, write_provenance
from dagster_nix_builder.publish.reproducible import check_reproducible

PUBLISHED = "published"
REPRODUCIBLE = "reproducible"
SUBSTITUTES = "substitutes"
INSTALLS = "installs"


@dataclass(frozen=True)
class PublishSettings:
    """Where and how to publish (the ``publish`` attribute of the component's ``defs.yaml``).

    Attributes:
        cache_url: the binary cache ``nix copy`` writes to, e.g. ``file:///srv/nix-cache``.
        secret_key_file: the signing key (``nix-store --generate-binary-cache-key``), kept outside the repo.
        cache_http_url: where consumers substitute from (served by any static HTTP server); the
            ``substitutes`` check verifies through it. None: no such check.
        index_repository_url: the upload URL of a Python package index (twine); None: no upload.
        index_url: its simple index, for the ``installs`` check.
        index_username: the index user.
        index_password_env: the environment variable holding the index password.
        allow_nonreproducible: publish a package that does not rebuild bit for bit (the check still fails).
    """

    cache_url: str
    secret_key_file: str
    cache_http_url: str | None = None
    index_repository_url: str | None = None
    index_url: str | None = None
    index_username: str | None = None
    index_password_env: str | None = None
    allow_nonreproducible: bool = False


def published_key(package_key: AssetKey) -> AssetKey:
    """The key of a package's publication asset: ``published/<package key>``."""
    return AssetKey([PUBLISHED, *package_key.path])


def publish_assets(
    graph: NixPackageGraph, keys: Mapping[str, AssetKey], settings: PublishSettings, *, group_name: str | None = None
) -> Any:
    """One subsettable multi-asset: ``published/<attr>`` downstream of each package of ``keys``."""
    specs, checks = [], []
    attr_of: dict[AssetKey, str] = {}
    for attr, key in keys.items():
        target = published_key(key)
        attr_of[target] = attr
        specs.append(AssetSpec(
            target, deps=[key], group_name=group_name, kinds={"nix"},
            description=f"{attr}'s closure in the binary cache {settings.cache_url}, signed"
            + (", and its wheel on the package index" if graph[attr].is_python and settings.index_repository_url
               else "")
            + "; published only if it rebuilds bit for bit.",
        ))  # fmt: skip
        checks.append(AssetCheckSpec(REPRODUCIBLE, asset=target, description="Rebuilt by Nix, bit for bit identical."))
        if settings.cache_http_url:
            checks.append(AssetCheckSpec(SUBSTITUTES, asset=target, description=(
                "An empty store substitutes the closure from the cache with signatures required, building nothing.")))
        if settings.index_url and graph[attr].is_python and graph[attr].executables:
            checks.append(AssetCheckSpec(INSTALLS, asset=target, description=(
                "A fresh virtualenv installs it from the index (third-party dependencies from the usual index) "
                "and its executable answers --version.")))

    @multi_asset(name="nix_publish", specs=specs, check_specs=checks, can_subset=True)
    def _publish(context: AssetExecutionContext, nix: NixResource) -> Iterator[MaterializeResult | AssetCheckResult]:
        cli = nix.cli()
        current = nix.load_graph()  # now: what is published is what the expressions say now
        failures: dict[str, str] = {}
        for target in sorted(context.selected_asset_keys, key=lambda k: current.topological_order().index(attr_of[k])):
            attr = attr_of[target]
            try:
                yield from publish_one(context, cli, current, current[attr], target, settings)
            except NixBuilderError as error:
                failures[attr] = str(error)
                context.log.error(f"publishing {attr} failed: {error}")
        if failures:
            raise NixBuildError([], None, [], {f"{PUBLISHED}/{a}": why for a, why in failures.items()})

    return _publish


class PublishError(NixBuilderError):
    """One package could not be published; the message names the cause."""


def publish_one(
    context: AssetExecutionContext,
    cli: Any,
    graph: NixPackageGraph,
    package: NixPackage,
    target: AssetKey,
    settings: PublishSettings,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Gate, publish, record and verify one package (see the module docstring)."""
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == target}
    paths = list(package.outputs.values())
    if cli.invalid_paths(paths):
        raise PublishError(f"{package.attr} is not built yet: materialize {package.attr} first, then publish it.")
    repro = check_reproducible(cli, package)
    if not repro.identical and not settings.allow_nonreproducible:
        if REPRODUCIBLE in selected:
            yield _repro_check(repro, target)
        raise PublishError(
            f"{package.attr} does not rebuild bit for bit "
            f"({', '.join(repro.differing_files[:5]) or 'outputs differ'}): not published. "
            "Fix the expression, or set publish.allow_nonreproducible."
        )
    cache = publish_closure(cli, paths, settings.cache_url, settings.secret_key_file)
    index = None
    wheel = wheel_path(package)
    if wheel and settings.index_repository_url:
        password = _password(settings)
        index = upload_wheels([Path(wheel)], settings.index_repository_url, settings.index_username or "", password)
    document = provenance(
        cli, graph, package, key_name=cache.key_name, builder_host=socket.gethostname(),
        published_to={"cache": settings.cache_url, **({"index": settings.index_repository_url} if index else {})},
    )  # fmt: skip
    where = _provenance_path(settings.cache_url, package)
    if where is not None:
        write_provenance(document, where)
    metadata: dict[str, Any] = {
        "cache_url": MetadataValue.url(settings.cache_http_url) if settings.cache_http_url else settings.cache_url,
        "public_key": MetadataValue.text(cache.public_key),
        "paths_uploaded": MetadataValue.int(len(cache.uploaded)),
        "paths_already_present": MetadataValue.int(len(cache.already_present)),
        "nar_bytes_uploaded": MetadataValue.int(cache.nar_bytes_uploaded),
        "cache_seconds": MetadataValue.float(round(cache.seconds, 3)),
        "reproducible": MetadataValue.bool(repro.identical),
        "provenance": MetadataValue.json(document),
    }
    if where is not None:
        metadata["provenance_file"] = MetadataValue.path(str(where))
    if index is not None:
        metadata["index_uploaded"] = MetadataValue.json(list(index.uploaded))
        metadata["index_already_present"] = MetadataValue.json(list(index.already_present))
    yield MaterializeResult(asset_key=target, metadata=metadata)
    if REPRODUCIBLE in selected:
        yield _repro_check(repro, target)
    if SUBSTITUTES in selected and settings.cache_http_url:
        yield _substitution_check(cli, settings.cache_http_url, paths, target, cache.public_key)
    if INSTALLS in selected and wheel and settings.index_url and package.executables:
        yield _install_check(settings, graph, package, target)


def _password(settings: PublishSettings) -> str:
    name = settings.index_password_env
    if not name or name not in os.environ:
        raise PublishError(f"publish.index_password_env names {name!r}, which is not set: export it, then retry.")
    return os.environ[name]


def _provenance_path(cache_url: str, package: NixPackage) -> Path | None:
    if not cache_url.startswith("file://"):
        return None
    root = Path(cache_url.removeprefix("file://").split("?", 1)[0])
    return root / "provenance" / f"{package.attr}-{package.version}.json"


def _repro_check(repro: Any, target: AssetKey) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=REPRODUCIBLE, asset_key=target, passed=repro.identical, severity=AssetCheckSeverity.ERROR,
        description=None if repro.identical else "differs: " + ", ".join(repro.differing_files[:20]),
        metadata={"differing_files": MetadataValue.json(list(repro.differing_files)),
                  "seconds": MetadataValue.float(round(repro.seconds, 3)),
                  **({"diff": MetadataValue.md(f"```\n{repro.diff}\n```")} if repro.diff else {})},
    )  # fmt: skip


def _substitution_check(cli: Any, url: str, paths: list[str], target: AssetKey, key: str) -> AssetCheckResult:
    root = Path(tempfile.mkdtemp(prefix="dnb-substitute-"))
    try:
        result = verify_substitution(cli, url, key, paths, root / "store")
    except NixBuilderError as error:
        return AssetCheckResult(check_name=SUBSTITUTES, asset_key=target, passed=False, description=str(error))
    finally:
        _remove_store(root)
    return AssetCheckResult(
        check_name=SUBSTITUTES, asset_key=target, passed=result.built_nothing,
        metadata={"substituted": MetadataValue.int(len(result.substituted)),
                  "seconds": MetadataValue.float(round(result.seconds, 3))},
    )  # fmt: skip


def _remove_store(root: Path) -> None:
    """Delete a throwaway store: Nix makes its paths read-only, so give the owner write access first."""
    for directory, _, _ in os.walk(root):
        os.chmod(directory, 0o755)
    shutil.rmtree(root, ignore_errors=True)


def _install_check(
    settings: PublishSettings, graph: NixPackageGraph, package: NixPackage, target: AssetKey
) -> AssetCheckResult:
    """Our wheels of ``package`` and of the set's packages it needs, installed from the index alone."""
    ours = [graph[a] for a in [*graph.topological_order(graph.upstream(package.attr)), package.attr]]
    wheels = {p.pname or p.attr: Path(w) for p in ours if (w := wheel_path(p))}
    executable = (package.executables or ())[0]
    with tempfile.TemporaryDirectory(prefix="dnb-install-") as work:
        try:
            result = verify_install(str(settings.index_url), wheels, executable, package.version or "", Path(work))
        except NixBuilderError as error:
            return AssetCheckResult(check_name=INSTALLS, asset_key=target, passed=False, description=str(error))
    return AssetCheckResult(
        check_name=INSTALLS, asset_key=target, passed=True,
        metadata={"version_output": MetadataValue.text(result.version_output),
                  "files_checked": MetadataValue.int(result.files_checked),
                  "seconds": MetadataValue.float(round(result.seconds, 3))},
    )  # fmt: skip


__all__ = ["PublishSettings", "publish_assets", "published_key", "read_public_key"]
