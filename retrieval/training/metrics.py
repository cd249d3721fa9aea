"""Concept-level retrieval ranks: a hit is any gallery item showing the query's concept."""

from __future__ import annotations

import numpy as np


def concept_ranks(queries: np.ndarray, gallery: np.ndarray, query_concepts: np.ndarray,
                  gallery_concepts: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """1-based rank of the first correct gallery item for each query; 0 where none exists.

    queries (Q, D) and gallery (G, D) are normalised; concepts are integer ids.
    """
    ranks = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ gallery.T  # (q, G)
        correct = query_concepts[start : start + chunk, None] == gallery_concepts[None, :]  # (q, G)
        best = np.where(correct, sims, -np.inf).max(axis=1)  # (q,) score of the best correct item
        # Ties count against the query: an item scoring the same as the answer is not beaten by it.
        beaten_by = ((sims >= best[:, None]) & ~correct).sum(axis=1)
        ranks[start : start + chunk] = np.where(np.isfinite(best), beaten_by + 1, 0)
    return ranks


def summarise(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and median rank over queries that have at least one correct gallery item."""
    valid = ranks[ranks > 0]
    if len(valid) == 0:
        return {**{f"R@{k}": float("nan") for k in ks}, "median_rank": float("nan"), "queries": 0}
    return {**{f"R@{k}": float(np.mean(valid <= k)) for k in ks}, "median_rank": float(np.median(valid)),
            "queries": int(len(valid))}
