"""``dg scaffold defs dagster_nix_builder.NixPackageSetComponent <path> --package-set <dir>`` (or ``--file <f>
--attribute <path>``, or ``--flake <dir or ref>``, with ``--select``/``--exclude`` globs): a ``defs.yaml`` that
loads as written, the source it was given (refused when it is not there) and the other attributes' defaults,
commented out, to edit in place."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dagster.components import Scaffolder, ScaffoldRequest
from pydantic import BaseModel, Field

from dagster_nix_builder.nix.errors import NixConfigError

# The defaults as comments, one per line (tests/test_own_project.py uncomments them and checks that they are the
# component's defaults). nix_args has none; its line is an example.
DEFAULTS = """\
  # The defaults; uncomment and edit. Any value may come from the environment: "{{ env.NAME }}".
  # scope: auto                      # --argstr scope of the set: auto | bootstrap | nixpkgs; null: none
  # nix_args: {salt: "1"}            # further --argstr <name> <value> (an example: none by default)
  # out_link_dir: .nix-results       # out-links result-<package>, GC roots (relative to the project)
  # executable: nix                  # the nix executable (on PATH or a path)
  # cores: null                      # --cores of nix build (null: Nix's own)
  # translation: {group_name: nix, key_prefix: [], code_versions: true, checks: true}
  # automation: true                 # eager automation condition and its sensor (stopped)
  # include_update: null             # Dagster's update job and upstream sensors: null = only for a set with
  #                                  # a dagster-src attribute (a Dagster source); true or false to force
  # history: null                    # versions as partitions, e.g. {partitions: releases, keep: 10}
"""


class NixPackageSetScaffoldParams(BaseModel):
    """What ``dg scaffold defs`` takes: one source (``--package-set``, ``--file`` or ``--flake``) and for a file
    or flake an ``--attribute`` path, and ``--select``/``--exclude`` globs (comma-separated)."""

    package_set: str | None = Field(
        default=None,
        description="A callPackage directory (its default.nix), relative to the project root; default nix.",
    )
    file: str | None = Field(default=None, description="A Nix file of the packages, relative to the project root.")
    flake: str | None = Field(default=None, description="A flake: its directory (relative) or a flake reference.")
    attribute: str | None = Field(default=None, description="Attribute path of the packages in the file or flake.")
    select: str | None = Field(default=None, description="Comma-separated globs of the attribute names to take.")
    exclude: str | None = Field(default=None, description="Comma-separated globs of attribute names to leave out.")


def render_defs_yaml(type_name: str, package_set: str | None = None, **source: str | list[str] | None) -> str:
    """The scaffolded ``defs.yaml``: the source given (``package_set``, or ``file``/``flake`` with ``attribute``,
    ``select`` and ``exclude``), then the defaults as comments."""
    lines = [f"  package_set: {package_set}"] if package_set else []
    lines += [f"  {key}: {json.dumps(value)}" for key, value in source.items() if value]
    return (
        f"# A Nix package set as Dagster assets; `dg utils inspect-component {type_name}` lists every attribute.\n"
        f"type: {type_name}\n"
        "attributes:\n" + "".join(line + "\n" for line in lines) + DEFAULTS
    )


def _missing(root: Path, params: NixPackageSetScaffoldParams) -> str | None:
    """Why the source the options name is not there (None: it is)."""
    given = [
        (k, v) for k, v in (("package-set", params.package_set), ("file", params.file), ("flake", params.flake)) if v
    ]
    if len(given) > 1:
        return f"give one of --package-set, --file and --flake, not {' and '.join('--' + k for k, _ in given)}"
    key, value = given[0] if given else ("package-set", "nix")
    if key == "flake" and re.match(r"[a-z][a-z0-9+]*:", value) and not value.startswith("path:"):
        return None  # a flake reference elsewhere: Nix says at the first load whether it is one
    path = (root / value.removeprefix("path:")).resolve()
    needed = {"package-set": path / "default.nix", "file": path, "flake": path / "flake.nix"}[key]
    if needed.is_file():
        return None
    what = {"package-set": "a Nix package set", "file": "a Nix file", "flake": "a flake"}[key]
    reason = (
        "no such directory"
        if key != "file" and not path.is_dir()
        else f"no {needed.name}"
        if key != "file"
        else "no such file"
    )
    return f"--{key} {value}: {path} is not {what} ({reason}); name it relative to the project root."


class NixPackageSetScaffolder(Scaffolder[NixPackageSetScaffoldParams]):
    """Writes ``<path>/defs.yaml`` of the component for the package set the options name."""

    @classmethod
    def get_scaffold_params(cls) -> type[NixPackageSetScaffoldParams]:
        return NixPackageSetScaffoldParams

    def scaffold(self, request: ScaffoldRequest[NixPackageSetScaffoldParams]) -> None:
        params = request.params
        problem = _missing(request.project_root or Path.cwd(), params)
        if problem is None and params.attribute and not (params.file or params.flake):
            problem = "--attribute applies to a --file or a --flake"
        if problem:
            # dg made the folder just before; leave nothing behind, so the command can simply be run again.
            if request.target_path.is_dir() and not any(request.target_path.iterdir()):
                request.target_path.rmdir()
            raise NixConfigError(problem)
        globs = {k: [g.strip() for g in v.split(",") if g.strip()] if v else None
                 for k, v in (("select", params.select), ("exclude", params.exclude))}  # fmt: skip
        text = render_defs_yaml(
            request.type_name, params.package_set or (None if params.file or params.flake else "nix"),
            file=params.file, flake=params.flake, attribute=params.attribute, **globs,
        )  # fmt: skip
        (request.target_path / "defs.yaml").write_text(text)
