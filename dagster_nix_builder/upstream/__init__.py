"""Following upstream: the pin file (``pins``), what upstream has that is new (``lookup``: git refs and the
package index), the update (``update/``: its steps, the job) and the sensors that start it.

May import: nix.
"""
