"""Encoders, indexing and search: the engine of xmodal.

Importing this package loads no weights and no torch; `build_engine(settings)` is the one place
where encoders, the collection and (later) the generator are wired together.
"""
