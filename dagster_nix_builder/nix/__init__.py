"""The Nix layer: everything that runs, reads or reasons about Nix, with no Dagster import.

Processes that die with us, errors, Nix's log format and printed output, the settings passed per invocation,
the one wrapper of the Nix command line (``cli``), the package graph asked of Nix (and the ``graph.nix`` it
evaluates), one running build and its outcomes, the order they are reported in, and the comparison of the
wheels against nixpkgs' versions (with ``nixpkgs_versions.nix``). Usable without Dagster.

May import: nothing else of this package.
"""
