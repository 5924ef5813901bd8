"""The update job: move `dagster-src` to a rev (git mode) or a release (release mode), started by the
sensors or by hand from the UI or the CLI.

By hand (`source: git` alone pins the head of the followed branch, from release mode or `rev: null`)::

    printf 'ops:\\n  update_pins:\\n    config:\\n      source: git\\n' > update.yaml
    dagster job execute -m dagster_nix_builder.definitions -j update_dagster_src -c update.yaml
"""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at decoration time.
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    Config,
    ConfigurableResource,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    job,
    op,
)
from pydantic import Field

from dagster_nix_builder.upstream.update.bisect_job import bisect_failed_update
from dagster_nix_builder.upstream.update.workflow import (
    DEFAULT_NIX_CONFIG,
    UpdateError,
    UpdateResult,
    UpdateSettings,
    update,
)

UPDATE_OP_NAME = "update_pins"
UPDATE_JOB_NAME = "update_dagster_src"
REPO_ROOT = Path(__file__).resolve().parent.parent


class UpdateConfig(Config):
    """Run config of the update: `source`, and/or one of `rev` and `version`."""

    source: str | None = Field(
        default=None,
        description="`git` or `release`: update that source and select it in nix/pins.json. Without rev or "
        "version: the head of the followed branch (git) or the newest complete release. Omitted: rev means "
        "git, version means release, and the selected source stays as it is.",
    )
    rev: str | None = Field(default=None, description="Git mode: the commit to pin (40 hex digits).")
    version: str | None = Field(
        default=None,
        description="Release mode: the Dagster version; the sdist of every distribution the package set "
        "declares is pinned at the version its declaration derives (e.g. 0.29.27 of a library at 1.13.27).",
    )
    url: str | None = Field(
        default=None, description="Git mode: the repository to follow, written into git.url (default: kept)."
    )
    branch: str | None = Field(
        default=None, description="Git mode: the branch to follow, written into git.branch (default: kept)."
    )
    bisect: bool = Field(
        default=True,
        description="Git mode: when the update fails at its build or check step, bisect the commits between "
        "the pin before and the failing rev (a real build per step, at most ⌈log2 n⌉ + 1) and name the first "
        "bad commit, the package and check failing there, in the failure.",
    )


class PinUpdater(ConfigurableResource):
    """Edits `nix/pins.json` of a git checkout through the update workflow
    (`dagster_nix_builder.upstream.update.workflow`)."""

    repo_dir: str = Field(
        default=str(REPO_ROOT), description="The git checkout holding nix/ (commits are made there)."
    )
    nix_dir: str = Field(default="nix", description="The package set directory, relative to repo_dir.")
    scope: str | None = Field(
        default="bootstrap", description="`--argstr scope` of the package set; None to leave it out."
    )
    nix_executable: str = Field(default="nix", description="The `nix` command.")
    nix_config: str = Field(default=DEFAULT_NIX_CONFIG, description="Put in NIX_CONFIG of every Nix call.")
    pip_args: list[str] = Field(
        default_factory=list,
        description="Extra pip arguments of the release lookup, e.g. ['--no-index', '--find-links', DIR].",
    )
    run_version_checks: bool = Field(
        default=True,
        description="Run `--version` of each `bin/*` of a rebuilt package without `passthru.tests` (the "
        "tests of the others are built, as a materialization's checks are) before committing.",
    )
    timeout_seconds: float = Field(default=3600, description="Limit of each Nix command.")
    bisect_cache_file: str | None = Field(
        default=None,
        description="The JSON file of what bisect steps found (each rev's source hash, failures by derivation); "
        "default: nix-bisect-steps.json in the Dagster instance's directory.",
    )

    def settings(self, checks: Sequence[Callable[[Any], None]] = ()) -> UpdateSettings:
        """The workflow settings this resource stands for."""
        return UpdateSettings(
            repo_dir=Path(self.repo_dir),
            nix_dir=self.nix_dir,
            nix_args={"scope": self.scope} if self.scope else {},
            nix_executable=self.nix_executable,
            nix_config=self.nix_config,
            pip_args=tuple(self.pip_args),
            run_version_checks=self.run_version_checks,
            checks=tuple(checks),
            timeout_seconds=self.timeout_seconds,
        )

    def pins_path(self) -> Path:
        """The pin file."""
        return Path(self.repo_dir) / self.nix_dir / "pins.json"


def build_update_job(
    *,
    name: str = UPDATE_JOB_NAME,
    key_prefix: Sequence[str] = (),
    report_materializations: bool = True,
    checks: Sequence[Callable[[Any], None]] = (),
    resource_defs: Mapping[str, Any] | None = None,
) -> JobDefinition:
    """The update job: one op running the whole update workflow.

    Args:
        name: Job name.
        key_prefix: Prefix of the package asset keys (as the translator's `key_prefix`).
        report_materializations: After a commit, report a materialization of every package the update
            rebuilt (the source and everything downstream), with its store paths, so the asset graph
            shows them at the new pin.
        checks: Extra checks run before committing, called with attribute -> out paths; raise to fail.
        resource_defs: Resources bound to the job, e.g. its `pin_updater`. A sensor targeting a job whose
            resources come from its `Definitions` is copied by Dagster with `owners=[]`, a beta parameter:
            a bound job is left alone, and nothing warns.

    Returns:
        A job needing the `pin_updater` resource (a `PinUpdater`), unless `resource_defs` has it.
    """

    @op(
        name=UPDATE_OP_NAME,
        description="Pin dagster-src to a new rev or release, rebuild it and everything downstream, "
        "check, commit; on failure restore the files byte for byte.",
        required_resource_keys={"pin_updater"},
        tags={"kind": "nix"},
    )
    def update_op(context: OpExecutionContext, config: UpdateConfig) -> Iterator[Any]:
        updater: PinUpdater = context.resources.pin_updater
        settings = updater.settings(checks)
        try:
            result = update(
                settings,
                rev=config.rev,
                version=config.version,
                source=config.source,
                url=config.url,
                branch=config.branch,
                log=context.log.info,
            )
        except UpdateError as e:
            found = {}
            if config.bisect:  # names the first bad commit in `e` (its notes) and in the metadata
                found = bisect_failed_update(
                    context, settings, updater.pins_path(), e, url=config.url, branch=config.branch,
                    cache_file=updater.bisect_cache_file,
                )  # fmt: skip
            raise Failure(
                description=str(e),
                metadata={
                    "step": e.step.value,
                    "reason": e.reason,
                    "restored": MetadataValue.json(e.restored),
                    "messages": MetadataValue.md("```\n" + "\n".join(e.messages[-60:]) + "\n```"),
                    **found,
                },
            ) from e
        except ValueError as e:
            raise Failure(description=str(e)) from e
        if result.commit and report_materializations:
            for attr, outs in result.built.items():
                yield AssetMaterialization(
                    asset_key=AssetKey([*key_prefix, attr]),
                    description=f"rebuilt by the update {result.old} -> {result.new}",
                    metadata={
                        "nix/attr": attr,
                        "nix/store_paths": MetadataValue.json(list(outs)),
                        "update/commit": result.commit,
                    },
                )
        yield Output(_summary(result), metadata=_metadata(result))

    @job(
        name=name,
        description="Update dagster-src (rev or release), rebuild downstream, check, commit.",
        resource_defs=dict(resource_defs or {}),
    )
    def update_job() -> None:
        update_op()

    return update_job


def _summary(result: UpdateResult) -> dict[str, Any]:
    return {
        "mode": result.mode,
        "old": result.old,
        "new": result.new,
        "commit": result.commit,
        "changed_files": list(result.changed_files),
        "hashes": dict(result.hashes),
        "version": result.version,
        "built": {k: list(v) for k, v in result.built.items()},
    }


def _metadata(result: UpdateResult) -> dict[str, Any]:
    return {
        "old": result.old,
        "new": result.new,
        "commit": result.commit or "(none: already pinned)",
        "changed_files": MetadataValue.json(list(result.changed_files)),
        "hashes": MetadataValue.json(dict(result.hashes)),
        "version": result.version or "",
        "rebuilt": MetadataValue.json(sorted(result.built)),
        "checks": MetadataValue.json(list(result.checks)),
    }


def update_run_config(*, rev: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Run config of the update job for a rev or a version."""
    config = {"rev": rev} if rev is not None else {"version": version}
    return {"ops": {UPDATE_OP_NAME: {"config": config}}}


update_job = build_update_job()
"""The update job with default settings (asset keys = attribute names)."""
