"""The update of ``dagster-src``: ``workflow`` runs its steps (resolve, hash, lock, rebuild and check, commit)
over a journal that restores every edited file byte for byte; ``job`` is the Dagster job that starts it.

Part of the upstream layer: its rule is ``upstream``'s.
"""
