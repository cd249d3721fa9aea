"""Exact inner-product search on a GPU with torch: the mirror a `Flat` index gets on a CUDA machine.

FAISS's own GPU indexes need a faiss-gpu build matching the machine's CUDA, which pip cannot always
provide (there is no faiss-gpu wheel for CUDA 13). Exact search is one matrix product and a top-k,
which torch does at memory bandwidth, so a `Flat` index is mirrored here whenever torch sees a GPU
and FAISS does not. The CPU FAISS index stays the one that is saved: files written on a GPU machine
load anywhere.

The same class runs on `device="cpu"`, which is how the tests check that its answers equal FAISS's.
Calls are serialised by a lock: one GPU index is never used by two threads at once (CUDA streams
would interleave the allocations of a growing buffer with a search reading it).
"""

from __future__ import annotations

import threading

import numpy as np


def _torch():
    import torch  # only ever imported by a GPU mirror: the index layer otherwise knows no torch

    return torch


def cuda_available() -> bool:
    """True when torch is loaded and sees a CUDA device.

    Only asks a torch that is already imported: every command that searches or indexes has loaded
    one for its encoder, and commands that have not (`xmodal info`, `errors`) must not pay the ~3 s
    of importing it just to learn there is no GPU to mirror an index on.
    """
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_available())


class TorchFlatIndex:
    """(id, vector) pairs in one device buffer; exact top-k by inner product.

    Args:
        dim: vector width.
        device: "cuda", "cuda:1", or "cpu" (tests).
        dtype: "float32" (scores equal FAISS's to rounding) or "float16" (half the memory and
            twice the speed; scores within ~1e-3).
    """

    def __init__(self, dim: int, device: str = "cuda", dtype: str = "float32") -> None:
        torch = _torch()
        self.dim = dim
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self._vectors = torch.empty((1024, dim), dtype=self.dtype, device=self.device)
        self._ids = np.empty(0, dtype=np.int64)
        self._sorted = True  # _ids ascending (removals keep the order)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._ids)

    @property
    def bytes_per_vector(self) -> int:
        return self.dim * self._vectors.element_size()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        torch = _torch()
        if len(ids) == 0:
            return
        if isinstance(vectors, torch.Tensor):  # already on a device (benchmarks build 10M vectors there)
            block = vectors.to(self.device, self.dtype)
        else:
            block = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device, self.dtype)
        with self._lock:
            n = len(self._ids)
            need = n + len(ids)
            if need > len(self._vectors):  # grow by doubling: adds stay amortised O(1) per vector
                grown = torch.empty((max(need, 2 * len(self._vectors)), self.dim), dtype=self.dtype,
                                    device=self.device)
                grown[:n] = self._vectors[:n]
                self._vectors = grown
            self._vectors[n:need] = block
            new = np.asarray(ids, dtype=np.int64)
            # Store ids arrive in increasing order: kept sorted, a filter finds its rows by bisection.
            self._sorted = self._sorted and bool(np.all(np.diff(new) > 0)) and (n == 0 or new[0] > self._ids[-1])
            self._ids = np.concatenate([self._ids, new])

    def remove(self, ids) -> int:
        torch = _torch()
        if len(ids) == 0:
            return 0
        with self._lock:
            keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
            removed = int((~keep).sum())
            if removed:
                rows = torch.from_numpy(np.flatnonzero(keep)).to(self.device)
                kept = len(rows)
                self._vectors[:kept] = self._vectors[rows]  # index_select copies first: no overlap hazard
                self._ids = self._ids[keep]
            return removed

    def _mask(self, allowed: np.ndarray):
        """(n,) bool on the device: which rows hold an allowed id. O(allowed · log n) while the ids
        are sorted, instead of a pass over all n (10M ids take ~1 s to `isin`)."""
        torch = _torch()
        n = len(self._ids)
        if self._sorted:
            allowed = np.asarray(allowed, dtype=np.int64)
            rows = np.searchsorted(self._ids, allowed)
            inside = rows < n
            rows, allowed = rows[inside], allowed[inside]
            rows = rows[self._ids[rows] == allowed]  # an allowed id this index does not hold finds a neighbour
            mask = torch.zeros(n, dtype=torch.bool, device=self.device)
            mask[torch.from_numpy(rows).to(self.device)] = True
            return mask
        return torch.from_numpy(np.isin(self._ids, allowed)).to(self.device)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores (m, k) float32 and ids (m, k) int64, best first; -inf/-1 where fewer than k pass.

        `allowed` (sorted int64 ids) restricts the search to those ids; others score -inf.
        """
        torch = _torch()
        m = len(queries)
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
            q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, self.dtype)
            scores = q @ self._vectors[:n].T  # (m, n)
            if allowed is not None:
                scores = scores.masked_fill(~self._mask(allowed), float("-inf"))
            top = min(k, n)
            values, rows = torch.topk(scores, top, dim=1)  # sorted, best first
            values = values.float().cpu().numpy()
            rows = rows.cpu().numpy()
            ids = self._ids[rows]
        ids[~np.isfinite(values)] = -1
        if top < k:
            values = np.pad(values, ((0, 0), (0, k - top)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - top)), constant_values=-1)
        return values.astype(np.float32), ids
