"""Flox: the same package expressions built with ``flox build`` behind the build protocol, ``FloxResource``
(a drop-in for ``NixResource``) and the command lines and preconditions of ``flox publish``.

May import: nix, adapters.
"""
