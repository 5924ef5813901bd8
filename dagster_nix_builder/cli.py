"""``dagster-nix-builder``: Dagster's own CLI, with ``DAGSTER_HOME`` defaulting to the project's instance.

Dagster's CLI picks its instance before it loads any code location: without ``DAGSTER_HOME``,
``dagster asset materialize`` records its run in a temporary instance deleted when it exits, and ``dagster dev``
shows nothing of it. This entry point sets ``DAGSTER_HOME`` to ``<repo>/.dagster_home`` (SQLite; created if
missing) unless it is set, then hands every argument to Dagster's CLI unchanged::

    .venv/bin/dagster-nix-builder asset materialize -m dagster_nix_builder.definitions --select '*'
    .venv/bin/dagster-nix-builder dev -w workspace.yaml

``python -m dagster_nix_builder ...`` is the same.
"""

from __future__ import annotations

import os
from pathlib import Path

# Not imported from .definitions: that module evaluates the package set with Nix when imported.
DEFAULT_DAGSTER_HOME = Path(__file__).resolve().parent.parent / ".dagster_home"


def main() -> None:
    """Run Dagster's CLI with this process's arguments."""
    home = os.environ.get("DAGSTER_HOME") or str(DEFAULT_DAGSTER_HOME)
    os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)

    from dagster._cli import main as dagster_main  # what Dagster's own `dagster` script calls

    dagster_main()


if __name__ == "__main__":
    main()
