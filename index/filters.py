"""Search filters on item metadata: folder, file type and modified-date range.

A filter is applied inside the search, not to its results: the index is asked only about the
vectors that pass, so a filter that leaves ten items still returns the best k of those ten. Each
backend translates the one `SearchFilter` into its own terms (SQL for the SQLite store, a boolean
expression for Milvus); `matches` is the reference meaning they are tested against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from index.records import ItemRecord


@dataclass(frozen=True)
class SearchFilter:
    """Which items a search may return. Empty fields do not filter.

    Attributes:
        under: absolute folders (or files); an item passes if its path is one of them or inside one.
        formats: file types as sniffed at indexing ("jpeg", "png", "wav", ...).
        since_ns, until_ns: modified time (ns since the epoch) in [since_ns, until_ns).
    """

    under: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None

    @property
    def empty(self) -> bool:
        return not self.under and not self.formats and self.since_ns is None and self.until_ns is None

    def prefixes(self) -> list[tuple[str, str]]:
        """Each folder as (exact path, path + separator): "/a/b" must not match "/a/bc/x.jpg"."""
        pairs = []
        for root in self.under:
            root = root.rstrip(os.sep) or os.sep
            pairs.append((root, root if root.endswith(os.sep) else root + os.sep))
        return pairs

    def matches(self, item: ItemRecord) -> bool:
        if self.under and not any(item.path == exact or item.path.startswith(inside)
                                  for exact, inside in self.prefixes()):
            return False
        if self.formats and item.format not in self.formats:
            return False
        if self.since_ns is not None and item.mtime_ns < self.since_ns:
            return False
        return self.until_ns is None or item.mtime_ns < self.until_ns

    def sql(self, alias: str = "i") -> tuple[str, list]:
        """A WHERE clause over the items table (aliased `alias`) and its parameters; "1" when empty.

        Prefixes compare with substr, not LIKE, so '%' and '_' in folder names mean themselves.
        """
        clauses: list[str] = []
        params: list = []
        if self.under:
            parts = []
            for exact, inside in self.prefixes():
                parts.append(f"({alias}.path = ? OR substr({alias}.path, 1, ?) = ?)")
                params += [exact, len(inside), inside]
            clauses.append("(" + " OR ".join(parts) + ")")
        if self.formats:
            clauses.append(f"{alias}.format IN ({','.join('?' * len(self.formats))})")
            params += list(self.formats)
        if self.since_ns is not None:
            clauses.append(f"{alias}.mtime_ns >= ?")
            params.append(self.since_ns)
        if self.until_ns is not None:
            clauses.append(f"{alias}.mtime_ns < ?")
            params.append(self.until_ns)
        return (" AND ".join(clauses) or "1"), params
