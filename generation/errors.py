"""Typed errors of the generation layer; `cli/` and `api/` translate them at the edge."""

from __future__ import annotations


class GeneratorLoadError(RuntimeError):
    """A generator directory that cannot be loaded: missing, damaged, or holding a refused format."""
