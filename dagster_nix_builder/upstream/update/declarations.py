"""What the package set says it is, asked of Nix: each package's `dagster-src.package { ... }` declaration
(its file, monorepo path, distribution and version scheme) and the version that scheme gives at a pinned
Dagster version. Nothing here knows a package by name or how a version scheme works: Nix evaluates
`dagster-src.declarations` with the candidate pins (`--arg pins`), one evaluation for several candidates.

Also the release's check against the package index: every declared distribution must have an sdist of
its derived version; when one does not, the message names the declaring file and what to do.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagster_nix_builder.nix.cli import NixCli
from dagster_nix_builder.nix.errors import NixCommandError
from dagster_nix_builder.upstream.pins import FAKE_HASH, Pins
from dagster_nix_builder.upstream.update.model import UpdateError, UpdateSettings, UpdateStep
from dagster_nix_builder.upstream.update.nix import nix_cli, pins_nix_expression


@dataclass(frozen=True)
class Declaration:
    """One package's declaration, at one set of pins.

    Attributes:
        attr: The package's attribute (its file's name, the asset key).
        file: The file that declares it, e.g. `nix/packages/dagster-postgres.nix`.
        path: Its directory in Dagster's monorepo.
        distribution: Its name on the package index (normalized).
        version_scheme: How its version follows Dagster's (`dagster`, `library`, ...).
        version: Its version at these pins (None: its scheme gives none at this Dagster version).
        alternatives: scheme -> the version that scheme would give at these pins (None: it gives none).
        problem: Why the declaration is unusable (dagster-src.package's own message, naming the file), or None.
    """

    attr: str
    file: str
    path: str
    distribution: str
    version_scheme: str
    version: str | None
    alternatives: Mapping[str, str | None] = field(default_factory=dict)
    problem: str | None = None


Declarations = dict[str, Declaration]
"""attr -> declaration."""


def _expression(cli: NixCli, source_attr: str, pins: Sequence[Pins]) -> str:
    """A function of the package set's arguments: for each pins, the declarations with the version every
    scheme of `dagster-src.versionSchemes` gives at those pins."""
    directory = json.dumps(cli.package_dir)
    candidates = " ".join(f"({pins_nix_expression(p)})" for p in pins)
    return f"""{{ ... }}@args:
let
  inherit (builtins) attrValues getAttr listToAttrs mapAttrs tryEval;
  at = pins:
    let
      set = import (/. + {directory}) (args // {{ inherit pins; }});
      found = tryEval (getAttr {json.dumps(source_attr)} set);
      src = if set ? {json.dumps(source_attr)} && found.success then found.value else {{ }};
      declared = src.declarations or {{ }};
      # The schemes dagster-src knows (a tree that exports none: the ones the set uses).
      used = map (d: d.versionScheme) (attrValues declared);
      schemes = src.versionSchemes or (builtins.attrNames (listToAttrs (map (s: {{ name = s; value = null; }}) used)));
      # The version a scheme gives this package at these pins, as dagster-src.package derives it (null:
      # that scheme gives none here, e.g. "library" of a Dagster that is not 1.x).
      versionIn = d: scheme:
        let
          again = (src.package {{ inherit (d) path distribution; versionScheme = scheme; }}).dagsterPackage;
          r = tryEval (if (again.problem or null) == null then again.version else null);
        in if r.success then r.value else null;
    in mapAttrs (attr: d: {{
      inherit (d) file path distribution versionScheme;
      problem = d.problem or null;
      version = if (d.problem or null) == null then d.version else null;
      # A tree that declares but cannot derive (no `package`): no alternatives to offer.
      alternatives = if !(src ? package) then {{ }}
        else listToAttrs (map (s: {{ name = s; value = versionIn d s; }}) schemes);
    }}) declared;
in map at [ {candidates} ]
"""


def read_declarations(
    settings: UpdateSettings, repo_dir: Path, mode: str, candidates: Sequence[Pins], step: UpdateStep
) -> list[Declarations]:
    """The set's declarations at each of `candidates` (one `nix-instantiate --eval` for all).

    Raises:
        UpdateError: At `step`, if the package set does not evaluate (Nix's messages attached).
    """
    if not candidates:
        return []
    cli = nix_cli(settings, repo_dir, mode)
    command = cli.instantiate_command(
        "--eval", "--strict", "--json", *cli.argstrs(), "--expr", _expression(cli, settings.source_attr, candidates)
    )
    try:
        proc = cli.run(command)
    except NixCommandError as e:
        raise UpdateError(step, "evaluating the package set's declarations (dagster-src.package) failed",
                          e.messages) from e  # fmt: skip
    out: list[Declarations] = []
    for document in json.loads(proc.stdout):
        out.append({
            attr: Declaration(
                attr=attr, file=str(d["file"]), path=str(d["path"]), distribution=str(d["distribution"]),
                version_scheme=str(d["versionScheme"]), version=None if d["version"] is None else str(d["version"]),
                alternatives={str(k): (None if v is None else str(v)) for k, v in d["alternatives"].items()},
                problem=None if d["problem"] is None else str(d["problem"]),
            )
            for attr, d in document.items()
        })  # fmt: skip
    return out


def sdist_drv_paths(settings: UpdateSettings, repo_dir: Path, pins: Pins) -> dict[str, str]:
    """distribution -> the derivation of its sdist (`dagster-src.sdists`) at `pins`: how a hash mismatch
    Nix reports is told to belong to a distribution, whatever the fetcher names its file."""
    cli = nix_cli(settings, repo_dir, "release", pins)
    attr = json.dumps(settings.source_attr)
    expression = (
        f"{{ ... }}@args: builtins.mapAttrs (_: s: s.drvPath) "
        f"((builtins.getAttr {attr} (import (/. + {json.dumps(cli.package_dir)}) (args // {{ pins = "
        f"{pins_nix_expression(pins)}; }}))).sdists or {{ }})"
    )
    try:
        proc = cli.run(cli.instantiate_command("--eval", "--strict", "--json", *cli.argstrs(), "--expr", expression))
    except NixCommandError as e:
        raise UpdateError(UpdateStep.HASH, "evaluating dagster-src.sdists failed", e.messages) from e
    return {str(k): str(v) for k, v in json.loads(proc.stdout).items()}


def with_fake_hashes(pins: Pins, declarations: Declarations) -> Pins:
    """The candidate with a fake hash for every declared distribution (and no other)."""
    return pins.with_release(hashes=dict.fromkeys(sorted(d.distribution for d in declarations.values()), FAKE_HASH))


def distributions(declarations: Declarations) -> list[str]:
    """The declared distributions, each once, sorted."""
    return sorted({d.distribution for d in declarations.values()})


def names_to_ask(declarations: Declarations) -> list[str]:
    """What to look up on the index: the distributions, and each package's attribute and directory name
    (what a mistyped distribution most likely meant), each once."""
    names = distributions(declarations)
    for d in declarations.values():
        names += [d.attr, Path(d.path).name]
    return list(dict.fromkeys(n.lower().replace("_", "-").replace(".", "-") for n in names if n))


def _listed(versions: Sequence[str], limit: int = 5) -> str:
    return ", ".join(versions[:limit]) + (", ..." if len(versions) > limit else "")


def release_problems(declarations: Declarations, found: Mapping[str, Sequence[str]]) -> list[str]:
    """Why the release the declarations are at is not complete on the index (empty: it is).

    Args:
        declarations: The set's declarations at the candidate Dagster version.
        found: name -> the sdist versions the index has (newest first), for `names_to_ask(declarations)`.
    """
    problems = []
    for d in sorted(declarations.values(), key=lambda d: d.file):
        versions = list(found.get(d.distribution, []))
        if d.problem is not None:
            problems.append(d.problem)
            continue
        if d.version is None:
            problems.append(f"{d.file}: versionScheme {json.dumps(d.version_scheme)} gives {d.distribution} no "
                            "version at this Dagster version (nix-instantiate --eval says why): fix the file's "
                            "versionScheme")  # fmt: skip
            continue
        if d.version in versions:
            continue
        if versions:
            others = [s for s, v in d.alternatives.items() if s != d.version_scheme and v is not None and v in versions]
            hint = (f"is its versionScheme {json.dumps(others[0])}?" if others
                    else "is its versionScheme right, or is the release not published yet?")  # fmt: skip
            problems.append(f"{d.file}: {d.distribution} has no {d.version}; it has {_listed(versions)}: {hint}")
            continue
        # Names the index has, other than distributions another package already declares (taken).
        taken = {o.distribution for o in declarations.values() if o.attr != d.attr}
        known = [n for n, vs in found.items() if vs and n != d.distribution and n not in taken]
        close = difflib.get_close_matches(d.distribution, known, n=1, cutoff=0.6)
        if close:
            hint = (f"the closest distribution is {close[0]!r} (the index has {_listed(list(found[close[0]]), 3)}): "
                    f"fix the file's distribution")  # fmt: skip
        else:
            hint = "check the file's distribution (its name on the package index)"
        problems.append(f"{d.file}: the package index has no distribution {d.distribution!r} (no sdist at any "
                        f"version); {hint}")  # fmt: skip
    return problems


__all__ = [
    "Declaration",
    "Declarations",
    "distributions",
    "names_to_ask",
    "read_declarations",
    "release_problems",
    "sdist_drv_paths",
    "with_fake_hashes",
]
