"""``dg scaffold defs dagster_nix_builder.NixPackageSetComponent <path> --package-set <dir>``: a ``defs.yaml``
that loads as written — the package-set directory it was given (refused when that has no ``default.nix``) and
the other attributes' defaults, commented out, to edit in place."""

from __future__ import annotations

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
"""


class NixPackageSetScaffoldParams(BaseModel):
    """What ``dg scaffold defs`` takes (``--package-set``)."""

    package_set: str = Field(
        default="nix", description="The package-set directory (its default.nix), relative to the project root."
    )


def render_defs_yaml(type_name: str, package_set: str) -> str:
    """The scaffolded ``defs.yaml``."""
    return (
        f"# A Nix package set as Dagster assets; `dg utils inspect-component {type_name}` lists every attribute.\n"
        f"type: {type_name}\n"
        "attributes:\n"
        f"  package_set: {package_set}\n" + DEFAULTS
    )


class NixPackageSetScaffolder(Scaffolder[NixPackageSetScaffoldParams]):
    """Writes ``<path>/defs.yaml`` of the component for the package set ``--package-set`` names."""

    @classmethod
    def get_scaffold_params(cls) -> type[NixPackageSetScaffoldParams]:
        return NixPackageSetScaffoldParams

    def scaffold(self, request: ScaffoldRequest[NixPackageSetScaffoldParams]) -> None:
        package_set = request.params.package_set
        package_dir = (request.project_root or Path.cwd()) / package_set
        if not (package_dir / "default.nix").is_file():
            # dg made the folder just before; leave nothing behind, so the command can simply be run again.
            if request.target_path.is_dir() and not any(request.target_path.iterdir()):
                request.target_path.rmdir()
            what = "no such directory" if not package_dir.is_dir() else "it has no default.nix"
            raise NixConfigError(
                f"--package-set {package_set}: {package_dir.resolve()} is not a Nix package set ({what}); "
                "name the directory of its default.nix, relative to the project root."
            )
        (request.target_path / "defs.yaml").write_text(render_defs_yaml(request.type_name, package_set))
