"""Which FAISS index a collection gets, and how hard its search must look to stay accurate.

Exact search (`Flat`) reads every vector per query: fine up to a few hundred thousand vectors,
too slow beyond (about 2 GB per query at a million 512-d vectors). Past that an inverted file
(`IVF`) scans only the lists nearest to the query; when memory is short, product quantisation
(`OPQ..,IVF..,PQ..`) stores each vector in a few dozen bytes. How many lists to scan (`nprobe`)
or how wide to search a graph (`efSearch`) is tuned at build time, against exact search on
held-out queries, to the smallest value that reaches the recall target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EXACT_UP_TO = 200_000  # vectors; beyond this the default becomes an inverted file
RECALL_TARGET = 0.95  # recall@10 against exact search, on held-out queries
ID_BYTES = 8  # int64 ids: FAISS's IVF lists and IndexIDMap2 each keep one per vector


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: about 4·√n (FAISS's guidance), a power of two in [64, 65536]."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(65_536, max(64, 2 ** round(math.log2(target)))))


def inverted_lists(spec: str) -> int | None:
    """The list count of a spec's inverted file ("IDMap2,IVF4096,Flat" -> 4096); None without one."""
    found = [int(part[3:]) for part in spec.split(",") if part.startswith("IVF")]
    return found[0] if found else None


def training_sample(spec: str) -> int:
    """Vectors to train a spec's quantisers on: 40 per inverted list (FAISS warns below 39), and
    at least 10,000 for PQ codebooks; 0 for specs that need no training."""
    lists = inverted_lists(spec)
    if lists:
        return max(40 * lists, 10_000)
    return 10_000 if "PQ" in spec else 0


def min_training(spec: str) -> int:
    """Fewest vectors a spec can be trained on: one per inverted list (FAISS refuses fewer), 256
    for 8-bit PQ codebooks."""
    return max(inverted_lists(spec) or 0, 256 if "PQ" in spec else 0)


def choose_spec(n: int, dim: int, memory_bytes: int | None = None) -> str:
    """The factory string for n vectors of `dim`: exact while small, IVF-Flat beyond, and OPQ+IVF-PQ
    when the full-precision vectors would not fit in `memory_bytes`."""
    if n <= EXACT_UP_TO:
        return "IDMap2,Flat"
    nlist = nlist_for(n)
    if memory_bytes is not None and n * (4 * dim + 2 * ID_BYTES) > memory_bytes:
        m = max(8, min(64, dim // 8))  # bytes per vector; dim must divide by m
        while dim % m:
            m -= 1
        return f"IDMap2,OPQ{m},IVF{nlist},PQ{m}"
    return f"IDMap2,IVF{nlist},Flat"


GPU_EXACT_UP_TO = 20_000_000  # a GPU reads 10M x 512 fp32 vectors in ~10 ms: exact stays the default


def next_spec(n: int, dim: int, current: str | None, gpu: bool = False, memory_bytes: int | None = None) -> str:
    """The spec an index should move to at n vectors, given the one it has (None: a new index).

    Hysteresis keeps a collection that hovers near a boundary from being rebuilt back and forth:
    an inverted file returns to exact only below half the limit, and its list count changes only
    when the ideal one has doubled or fallen to a quarter (the collection grew 4x or shrank 16x).
    """
    if gpu and current in (None, "IDMap2,Flat") and n <= GPU_EXACT_UP_TO:
        return "IDMap2,Flat"
    wanted = choose_spec(n, dim, memory_bytes)
    if current is None or current == wanted:
        return wanted
    current_lists, wanted_lists = inverted_lists(current), inverted_lists(wanted)
    if current_lists is None or wanted_lists is None:  # exact <-> inverted file
        if current_lists is not None and n >= EXACT_UP_TO // 2:
            return current
        return wanted
    if wanted.replace(f"IVF{wanted_lists}", "") != current.replace(f"IVF{current_lists}", ""):
        return wanted  # another kind of code (Flat <-> PQ): memory demands it
    ratio = wanted_lists / current_lists
    return wanted if ratio >= 2 or ratio <= 0.25 else current


def exact_neighbours(chunks, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (m, k) by inner product over (ids, vectors) chunks, best first, keeping only
    a running top-k: the collection never has to be in memory at once."""
    m = len(queries)
    best_scores = np.full((m, k), -np.inf, dtype=np.float32)
    best_ids = np.full((m, k), -1, dtype=np.int64)
    for ids, vectors in chunks:
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)  # (m, k + chunk)
        candidates = np.concatenate([best_ids, np.broadcast_to(ids, (m, len(ids)))], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_ids = np.take_along_axis(candidates, top, axis=1)
    return best_ids


def theoretical_bytes(spec: str, dim: int) -> int:
    """What one vector should cost in an index of this spec: its code plus its ids."""
    parts = spec.split(",")
    ids = ID_BYTES if parts[0] == "IDMap2" else 0
    body = [p for p in parts if p != "IDMap2" and not p.startswith("OPQ")]
    kind = body[-1]
    if kind == "Flat":
        code = 4 * dim
    elif kind.startswith("PQ"):
        code = int(kind[2:].split("x")[0])  # PQm: m bytes (8-bit codes)
    elif kind.startswith("HNSW"):
        m = int(kind[4:] or 32)
        return ids + 4 * dim + 2 * m * 4  # vectors + level-0 links (2M int32); upper levels are few
    else:
        raise ValueError(f"no size model for {spec!r}")
    if any(p.startswith("IVF") for p in body):
        ids += ID_BYTES  # an inverted list stores each vector's id beside its code
    return ids + code


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Share of the true top-k ids (rows of `truth`) found among the top-k of `found`."""
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


@dataclass(frozen=True)
class Tuning:
    parameter: str | None  # "nprobe", "efSearch", or None for an exact index
    value: int | None
    recall: float  # recall@k at that value, on the tuning queries


def search_parameter(spec: str) -> tuple[str, list[int]] | None:
    """The knob of an approximate spec and the values to try, cheapest first."""
    nlist = inverted_lists(spec)
    if nlist:
        return "nprobe", [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
                          if v <= nlist] or [nlist]
    if "HNSW" in spec:
        return "efSearch", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    return None


def set_parameter(index, parameter: str, value: int) -> None:
    import faiss

    faiss.ParameterSpace().set_index_parameter(index, parameter, value)


def tune(index, spec: str, queries: np.ndarray, truth: np.ndarray, k: int = 10,
         target: float = RECALL_TARGET, exclude_self: bool = False) -> Tuning:
    """Set the smallest search effort whose recall@k against `truth` reaches `target` (the largest
    tried if none does) and say what it reached. `index` is a raw FAISS index built from `spec`.

    Args:
        exclude_self: the queries are vectors of the index and `truth` has k+1 columns, the first
            being each query's own id; that id is left out of both sides.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if exclude_self:
        own = truth[:, :1]
        truth = truth[:, 1 : k + 1]

    def search() -> np.ndarray:
        if not exclude_self:
            return index.search(queries, k)[1]
        found = index.search(queries, k + 1)[1]
        return np.array([[i for i in row if i != self_id][:k] for row, self_id in zip(found, own[:, 0], strict=True)])

    knob = search_parameter(spec)
    if knob is None:
        return Tuning(None, None, recall_at_k(search(), truth, k))
    name, values = knob
    recall = 0.0
    for value in values:
        set_parameter(index, name, value)
        recall = recall_at_k(search(), truth, k)
        if recall >= target:
            return Tuning(name, value, recall)
    return Tuning(name, values[-1], recall)
