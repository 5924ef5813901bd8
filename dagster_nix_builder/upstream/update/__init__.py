"""The update of ``dagster-src``: ``workflow`` runs its steps (resolve, hash, lock, rebuild and check, commit)
over a journal that restores every edited file byte for byte; ``job`` is the Dagster job that starts it.
``bisect`` (the search), ``probe`` (one real build of a rev, cached by store path) and ``bisect_job`` find the
first bad commit when a git-mode update fails.

Part of the upstream layer: its rule is ``upstream``'s.
"""
