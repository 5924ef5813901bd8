"""Which source a ``defs.yaml`` names, checked before anything runs: exactly one of ``package_set`` (a
callPackage directory, the default ``nix``), ``file`` (a Nix file; ``attribute`` and ``args`` apply to it) and
``flake`` (``attribute`` applies to it, default ``packages.<system>``); a name that cannot be an attribute or a
bad glob is refused too, by :class:`~dagster_nix_builder.nix.package_source.PackageSource` at evaluation."""

from __future__ import annotations

from collections.abc import Mapping


def source_errors(
    package_set: str | None, file: str | None, flake: str | None, attribute: str | None, args: Mapping | None
) -> list[tuple[str, str]]:
    """The problems of a source's attributes as ``(key, message)``, the first to report first."""
    given = [key for key, value in (("package_set", package_set), ("file", file), ("flake", flake)) if value]
    if len(given) > 1:
        return [(given[1], f"give one of package_set, file and flake, not {' and '.join(given)}.")]
    kind = given[0] if given else "package_set"
    problems = []
    if attribute and kind == "package_set":
        problems.append(
            ("attribute", "applies to a file or a flake; a package_set directory's packages are its top level.")
        )
    if args and kind != "file":
        what = "a flake takes no arguments" if kind == "flake" else "a package_set directory takes nix_args"
        problems.append(("args", f"applies to a file only: {what}."))
    return problems
