"""The folders (or files) ever indexed into a collection, remembered in its store: the service serves
files only from inside one of them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from index.store import Store

ROOTS_KEY = "roots"


def indexed_roots(store: Store) -> list[str] | None:
    """The absolute folders (or files) ever indexed into this store; None for a store from before
    roots were recorded."""
    value = store.get_meta(ROOTS_KEY)
    return json.loads(value) if value else None


def record_roots(store: Store, roots: list[str]) -> None:
    """Remember indexed roots: files are only ever served from inside one of them."""
    known = set(indexed_roots(store) or [])
    if not set(roots) <= known:
        store.set_meta({ROOTS_KEY: json.dumps(sorted(known | set(roots)))})
