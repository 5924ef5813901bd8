"""Publishing what was built: the reproducibility gate, the signed binary cache, the package index upload,
the provenance document, and the ``published/<package>`` assets that run them in that order.

Every module but ``assets`` is free of Dagster.

May import: nix, adapters.
"""
