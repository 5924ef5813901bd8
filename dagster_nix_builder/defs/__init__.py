"""The project's defs folder (``dg``): ``packages/defs.yaml`` configures the package set's component.

May import: every layer.
"""
