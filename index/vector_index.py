"""A FAISS inner-product index keyed by store ids (`IndexIDMap2`), with atomic, checksummed files.

Vectors are L2-normalised by every encoder, so inner product is cosine similarity. FAISS is
imported on first use so that `import index` stays cheap.

An approximate index (IVF, HNSW) carries its tuned search effort (`nprobe=8`), set again on load.
A filtered search passes the allowed ids to FAISS as a selector, so the index only ever considers
vectors that pass; an inverted file whose usual lists hold fewer than k of them is searched again
with more lists, up to all of them, so a selective filter still returns k results when k exist.
On a CUDA machine an exact (`Flat`) index is mirrored on the GPU (`index.gpu_flat`) for searching.
"""

from __future__ import annotations

import math
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
        self.search_parameter = ""  # "nprobe=8" / "efSearch=64" once tuned; "" for exact indexes
        self._mirror = None  # a TorchFlatIndex on the GPU, when one is attached

    @classmethod
    def create(cls, dim: int, spec: str = DEFAULT_SPEC) -> VectorIndex:
        """An empty index from a FAISS factory string; it must map ids (`IDMap2,...`)."""
        faiss = _faiss()
        if not spec.startswith("IDMap2,"):
            raise ValueError(f"index spec must start with 'IDMap2,' so ids are store ids; got {spec!r}")
        return cls(faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT), dim, spec)

    @classmethod
    def build(cls, dim: int, spec: str, training: np.ndarray | None = None) -> VectorIndex:
        """An empty index, trained on `training` (n, dim) when its spec needs training (IVF, PQ)."""
        index = cls.create(dim, spec)
        if not index._index.is_trained:
            if training is None or len(training) == 0:
                raise ValueError(f"{spec} needs training vectors")
            index._index.train(np.ascontiguousarray(training, dtype=np.float32))
        return index

    @classmethod
    def load(cls, path: Path, spec: str, search_parameter: str = "") -> VectorIndex:
        raw = _faiss().read_index(str(path))
        index = cls(raw, raw.d, spec)
        if search_parameter:
            index.set_search_parameter(search_parameter)
        return index

    def set_search_parameter(self, setting: str) -> None:
        """Apply "name=value" (e.g. "nprobe=8") to the index."""
        from index.ann import set_parameter

        name, _, value = setting.partition("=")
        set_parameter(self._index, name, int(value))
        self.search_parameter = setting

    @property
    def exact(self) -> bool:
        return self.spec.split(",")[-1] == "Flat" and "IVF" not in self.spec

    @property
    def raw(self):
        """The FAISS index itself (for tuning and benchmarks)."""
        return self._index

    def attach_gpu(self, device: str = "cuda", dtype: str = "float32") -> bool:
        """Mirror an exact index on a GPU for searching; False (nothing attached) for other specs."""
        from index.gpu_flat import TorchFlatIndex

        if not self.exact:
            return False
        mirror = TorchFlatIndex(self.dim, device, dtype)
        flat = _faiss().downcast_index(self._index.index)
        vectors = _faiss().rev_swig_ptr(flat.get_xb(), self.count * self.dim).reshape(self.count, self.dim)
        mirror.add(self.ids(), vectors)
        self._mirror = mirror
        return True

    @property
    def device(self) -> str:
        return str(self._mirror.device) if self._mirror is not None else "cpu"

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
        if self._mirror is not None:
            self._mirror.add(ids, vectors)

    def remove(self, ids: list[int] | np.ndarray) -> int:
        """Remove ids that are present; returns how many were removed."""
        if len(ids) == 0:
            return 0
        selector = _faiss().IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        removed = int(self._index.remove_ids(selector))
        if self._mirror is not None:
            self._mirror.remove(ids)
        return removed

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: scores and ids of shape (m, min(k, count)); an empty index gives
        one column of -inf and -1.

        Args:
            allowed: int64 ids the search may return (a filter); None for all. Fewer than k
                allowed ids give -inf/-1 in the missing places.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (m, {self.dim}), got {queries.shape}")
        k = max(1, min(k, self.count)) if self.count else 1
        m = len(queries)
        if self.count == 0 or (allowed is not None and len(allowed) == 0):
            return np.full((m, 1), -np.inf, dtype=np.float32), np.full((m, 1), -1, dtype=np.int64)
        mirror = self._mirror
        if mirror is not None:
            return mirror.search(queries, k, allowed)
        if allowed is None:
            return self._index.search(queries, k)
        return self._filtered_search(queries, k, np.ascontiguousarray(allowed, dtype=np.int64))

    def _filtered_search(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        selector = faiss.IDSelectorBatch(allowed)
        wanted = min(k, len(allowed))
        ivf = faiss.try_extract_index_ivf(self._index) if "IVF" in self.spec else None
        if ivf is None:
            params = faiss.SearchParameters(sel=selector)
            if "HNSW" in self.spec:  # a graph walk ignores its effort setting unless passed again
                params = faiss.SearchParametersHNSW(sel=selector,
                                                   efSearch=faiss.downcast_index(self._index.index).hnsw.efSearch)
            scores, ids = self._index.search(queries, k, params=params)
            if "HNSW" in self.spec and (ids[:, :wanted] < 0).any():
                return self._exact_subset(queries, k, allowed)  # the graph lost its way among few allowed
            return scores, ids
        # The nearest allowed vectors lie further out when few pass: probe as many more lists as
        # the filter is selective, so about as many allowed candidates are scanned as unfiltered.
        share = len(allowed) / max(1, self.count)
        nprobe = min(ivf.nlist, math.ceil(ivf.nprobe / max(share, 1e-9)))
        while True:
            # SearchParameters replace the index's own settings, so the tuned nprobe is passed explicitly.
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            scores, ids = self._index.search(queries, k, params=params)
            if not (ids[:, :wanted] < 0).any() or nprobe >= ivf.nlist:
                return scores, ids
            nprobe = min(ivf.nlist, nprobe * 4)

    def _exact_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the allowed ids, from their stored vectors (a selective filter)."""
        present = allowed[np.isin(allowed, self.ids())]
        vectors = np.stack([self._index.reconstruct(int(i)) for i in present]) if len(present) else None
        m = len(queries)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        if vectors is None:
            return scores, ids
        all_scores = queries @ vectors.T  # (m, allowed)
        top = min(k, len(present))
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :top]
        scores[:, :top] = np.take_along_axis(all_scores, order, axis=1)
        ids[:, :top] = present[order]
        return scores, ids
