"""A FAISS inner-product index keyed by store ids (`IndexIDMap2`), with atomic, checksummed files.

Vectors are L2-normalised by every encoder, so inner product is cosine similarity. FAISS is
imported on first use so that `import index` stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.atomic import write_atomic

DEFAULT_SPEC = "IDMap2,Flat"


def _faiss():
    import faiss  # deferred: ~0.3 s and OpenMP start-up that CLI commands like `errors` never need

    return faiss


class VectorIndex:
    """Exact or approximate nearest-neighbour search over (id, vector) pairs of one modality."""

    def __init__(self, index, dim: int, spec: str) -> None:
        self._index = index
        self.dim = dim
        self.spec = spec

    @classmethod
    def create(cls, dim: int, spec: str = DEFAULT_SPEC) -> VectorIndex:
        """An empty index from a FAISS factory string; it must map ids (`IDMap2,...`)."""
        faiss = _faiss()
        if not spec.startswith("IDMap2,"):
            raise ValueError(f"index spec must start with 'IDMap2,' so ids are store ids; got {spec!r}")
        return cls(faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT), dim, spec)

    @classmethod
    def load(cls, path: Path, spec: str) -> VectorIndex:
        faiss = _faiss()
        index = faiss.read_index(str(path))
        return cls(index, index.d, spec)

    def save(self, path: Path) -> None:
        """Write the index atomically (temp file, fsync, rename).

        The bytes stream through a Python file: FAISS's own file writer reports a full disk as a
        RuntimeError, or for small indexes not at all, whereas Python raises OSError(ENOSPC).
        """
        faiss = _faiss()

        def write(temp: Path) -> None:
            with open(temp, "wb") as handle:
                writer = faiss.PyCallbackIOWriter(handle.write)
                faiss.write_index(self._index, writer)
                del writer  # flushes FAISS's buffer into `handle` before it closes

        write_atomic(Path(path), write)

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids held, as int64 (n,)."""
        return _faiss().vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (n, dim) float32 under ids (n,) int64."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        if not self._index.is_trained:
            self._index.train(vectors)
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: list[int] | np.ndarray) -> int:
        """Remove ids that are present; returns how many were removed."""
        if len(ids) == 0:
            return 0
        selector = _faiss().IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        return int(self._index.remove_ids(selector))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: scores and ids of shape (m, min(k, count)); an empty index gives
        one column of -inf and -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (m, {self.dim}), got {queries.shape}")
        k = max(1, min(k, self.count)) if self.count else 1
        if self.count == 0:
            m = len(queries)
            return np.full((m, 1), -np.inf, dtype=np.float32), np.full((m, 1), -1, dtype=np.int64)
        return self._index.search(queries, k)
