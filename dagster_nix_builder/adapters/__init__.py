"""The Dagster adapters: the Nix layer seen as Dagster assets, checks and a resource.

The translator (packages to asset specs), the one ``stream()`` that turns outcomes into Dagster results,
``NixResource`` and ``nix_assets``. Nothing here runs Nix except through the Nix layer.

May import: nix.
"""
