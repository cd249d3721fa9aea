"""A user's `--index-spec`: checked by FAISS when given, then remembered in the store so every later
run of that collection builds the same kind of index (None: the kind is chosen by size)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from index.errors import IndexSpecError

if TYPE_CHECKING:
    from index.store import Store

INDEX_SPEC_KEY = "index_spec"  # a user's --index-spec, kept for every later run; absent: chosen by size


def normalise_spec(spec: str, dim: int) -> str:
    """A user's factory string as stored: prefixed with IDMap2 (hits are keyed by store ids) and
    checked by FAISS, so a typo fails at once rather than at the first save.

    Raises:
        IndexSpecError: FAISS cannot build it.
    """
    import faiss

    spec = spec.strip()
    if not spec.startswith("IDMap2,"):
        spec = "IDMap2," + spec
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexSpecError(f"--index-spec {spec!r} is not a FAISS factory string this FAISS can build: "
                         f"{str(error).splitlines()[-1][:200]}") from None
    return spec


def remember_spec(store: Store, requested: str | None, dim: int) -> str | None:
    """The spec a writer builds with: `requested` (remembered in the store), "auto" (forgets the
    remembered one: chosen by size, returns None), or None (whatever the store remembers)."""
    if requested is None:
        return store.get_meta(INDEX_SPEC_KEY)
    if requested == "auto":
        if store.get_meta(INDEX_SPEC_KEY) is not None:
            store.set_meta({INDEX_SPEC_KEY: ""})
        return None
    spec = normalise_spec(requested, dim)
    if store.get_meta(INDEX_SPEC_KEY) != spec:
        store.set_meta({INDEX_SPEC_KEY: spec})
    return spec
