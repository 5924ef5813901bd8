"""``FloxResource``: the Nix resource with a Flox backend (see :mod:`dagster_nix_builder.flox.build` for Flox itself).

The assets of :func:`dagster_nix_builder.nix_assets` call ``nix.stream(context)`` on the resource bound to
``nix``; :class:`FloxResource` overrides it (and ``build``), so switching backend is a resource swap::

    Definitions(assets=[nix_assets(graph)], resources={"nix": FloxResource(nix_dir="nix")})

The package graph still comes from Nix (Flox ships Nix). Results are the Nix backend's: one materialization
per package with the same metadata (store paths from Flox's out-links), the same checks (the tests are Nix
derivations, built by Nix after Flox) and the same ``result-<attr>`` GC roots in ``out_link_dir``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from dagster import AssetExecutionContext
from pydantic import Field, field_validator

from dagster_nix_builder.adapters.history import recorded_builds
from dagster_nix_builder.adapters.resource import NixResource
from dagster_nix_builder.adapters.results import Result, nix_builds, selected_targets, stream
from dagster_nix_builder.flox.build import (
    FLOX_NOT_INSTALLED,
    FloxBuild,
    FloxLayout,
    FloxNotFoundError,
    FloxPackageError,
    flox_build_command,
    flox_init_command,
    prepare_layout,
    validate_package_names,
)
from dagster_nix_builder.nix.build import NixBuild
from dagster_nix_builder.nix.outcomes import Build, Outcome, Target
from dagster_nix_builder.nix.progress import Progress


class FloxResource(NixResource):
    """The Nix resource with a Flox backend: packages are built by ``flox build`` instead of ``nix build``.

    Everything else (the package graph, store queries, out-link roots, the tests of ``passthru.tests``)
    still uses Nix, which Flox installs alongside itself.
    """

    flox_executable: str = Field(
        default="flox", description="The `flox` executable (name on PATH or absolute path)."
    )
    project_dir: str = Field(
        default=".nix-results/flox",
        description="Directory laid out for Flox (`.flox/pkgs/<attr>.nix`, its own git repository); "
        "`flox build` leaves its `result-<attr>` links here.",
    )
    environment_name: str = Field(default="dagster-nix-builder", description="Name given to `flox init`.")

    @field_validator("flox_executable")
    @classmethod
    def _flox_exists(cls, value: str) -> str:
        if hasattr(value, "env_var_name"):  # an EnvVar: checked when resolved, by flox_path
            return value
        if shutil.which(value) is None:
            raise FloxNotFoundError(value)
        return value

    @property
    def flox_path(self) -> str:
        """Absolute path of ``flox``; raises :class:`FloxNotFoundError`."""
        exe = str(self.resolved("flox_executable"))
        found = shutil.which(exe)
        if found is None:
            raise FloxNotFoundError(exe)
        return found

    def prepare(self) -> FloxLayout:
        """Create the Flox environment if needed (``flox init``) and lay the expressions out in it."""
        project = Path(str(self.resolved("project_dir"))).resolve()
        project.mkdir(parents=True, exist_ok=True)
        if not (project / ".flox" / "env.json").exists():
            self.cli().run(flox_init_command(self.flox_path, project, str(self.resolved("environment_name"))))
        return prepare_layout(str(self.resolved("nix_dir")), project)

    def build(self, attrs: Sequence[str], tests: Mapping[str, Sequence[str]] | None = None) -> Build:
        """Start one ``flox build`` of ``attrs`` (or, for ``tests`` alone, the ``nix build`` of them)."""
        cli = self.cli()
        graph = self.load_graph()
        if tests and not attrs:
            return NixBuild(cli, graph, [Target(a, t) for a, names in tests.items() for t in names]).start()
        if tests:
            raise FloxPackageError("Flox builds packages; build their tests separately (tests= alone).")
        return FloxBuild(cli, graph, attrs, self.prepare(), self.flox_path).start()

    def stream(self, context: AssetExecutionContext) -> Iterator[Result]:
        """``flox build`` of the selected packages, then ``nix build`` of the selected tests; the same
        results as the Nix backend's (packages reported when Flox exits)."""
        cli = self.cli()
        graph = self.load_graph()
        targets, keys = selected_targets(context, graph)
        attrs = [t.attr for t in targets if t.test is None]
        tests = [t for t in targets if t.test is not None]
        flox = FloxBuild(cli, graph, attrs, self.prepare(), self.flox_path, log=context.log.info) if attrs else None
        builds: list[FloxBuild | NixBuild] = [flox] if flox else []

        def outcomes() -> Iterator[Outcome]:
            if flox is not None:
                yield from flox.outcomes()
            # The tests after Flox, by Nix, as the Nix backend builds them (a check run alone is rebuilt).
            for build in nix_builds(cli, graph, tests, context.log.info):
                builds.append(build)
                yield from build.outcomes()

        try:
            progress = Progress(targets, recorded_builds(context.instance, targets, keys), jobs=cli.max_jobs)
            yield from stream(cli, graph, targets, keys, outcomes(), context.log.info, [flox.command] if flox else [],
                              progress)
        finally:
            for build in builds:
                build.terminate()


__all__ = [
    "FLOX_NOT_INSTALLED",
    "FloxBuild",
    "FloxLayout",
    "FloxNotFoundError",
    "FloxPackageError",
    "FloxResource",
    "flox_build_command",
    "flox_init_command",
    "prepare_layout",
    "validate_package_names",
]
