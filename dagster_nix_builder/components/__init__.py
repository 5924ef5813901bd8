"""The assembly: ``NixPackageSetComponent``, a package set configured in ``defs.yaml``, made of the assets,
checks, publications, update job and sensors of the layers below.

May import: nix, adapters, publish, upstream.
"""
