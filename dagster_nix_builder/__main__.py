"""``python -m dagster_nix_builder``: Dagster's CLI with the project's ``DAGSTER_HOME`` (see :mod:`.cli`)."""

from .cli import main

main()
