"""`xmodal bench search`: vector search speed, accuracy and memory, side by side in one run.

On one set of unit vectors (dim 512 by default) and held-out queries from the same distribution:

  numpy brute force   one matrix-vector product and a partial sort per query (what rclip does)
  FAISS exact         `IDMap2,Flat`, the index small collections get
  FAISS chosen        the spec `index.ann.choose_spec` picks for this many vectors (exact up to
                      200k), with its search effort tuned to recall@10 >= 0.95 on separate queries
  FAISS IVF           the inverted file it picks past 200k, measured at any size, tuned the same way
  (more with --spec)  any factory string, tuned the same way

Per method: build seconds, bytes per vector (the serialised index) beside the spec's theoretical
size, recall@10 against exact, single-query p50/p99 and batched queries/s, each the median of
`repeats` timed passes after a warm-up pass; and each method's p50 speed-up over numpy.

The vectors are synthetic: clustered on the sphere, each cluster spread over a few dozen
directions, which is how real embedding collections look (many near-duplicates, low intrinsic
dimension). Real 512-d embeddings need a pretrained CLIP, which is not available offline; the
starter's are 128-d.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from retrieval.bench.machine import cpu_name, versions

SIZES = {  # vectors, timed single queries for the scan-everything methods, and for the rest
    "ci": {"n": 100_000, "scan_queries": 50, "queries": 200},
    "full": {"n": 1_000_000, "scan_queries": 20, "queries": 500},
}
BATCH = 1000  # queries per batched search
K = 10


def clustered_vectors(n: int, dim: int, seed: int, per_cluster: int = 1000, spread: int = 64,
                      noise: float = 1.0) -> np.ndarray:
    """(n, dim) float32 unit vectors shaped like an embedding collection: a direction all share (as
    CLIP's do), topics of about `per_cluster` items around random centres, and within a topic
    variation confined to its own `spread`-dimensional subspace, `noise` times the centre's length.
    A query's nearest neighbour comes out at cosine ~0.73, its tenth at ~0.68, strangers at ~0.06;
    a topic spans several inverted lists, so an IVF index has to search several (an easier mix,
    100 items a topic, let one list in 4096 find 0.999 of the neighbours at 1M: too kind)."""
    rng = np.random.default_rng(seed)
    clusters = max(16, n // per_cluster)
    shared = rng.standard_normal(dim).astype(np.float32)
    shared *= 0.35 / np.linalg.norm(shared)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 20_000
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        members = rng.integers(0, clusters, stop - start)
        # Each cluster's subspace is drawn from its own seed, so chunks agree without storing all of them.
        block = np.empty((stop - start, dim), dtype=np.float32)
        for cluster in np.unique(members):
            rows = np.flatnonzero(members == cluster)
            basis = np.random.default_rng([seed, int(cluster)]).standard_normal((spread, dim)).astype(np.float32)
            basis /= np.linalg.norm(basis, axis=1, keepdims=True)
            weights = rng.standard_normal((len(rows), spread)).astype(np.float32) * (noise / np.sqrt(spread))
            block[rows] = shared + centres[cluster] + weights @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


@dataclass
class MethodFigures:
    method: str
    spec: str
    build_seconds: float
    bytes_per_vector: float
    theoretical_bytes: float
    recall_at_10: float
    tuned: str  # "nprobe=16", or "" for exact methods
    p50_ms: list[float] = field(default_factory=list)  # one per repeat
    p99_ms: list[float] = field(default_factory=list)
    batch_qps: list[float] = field(default_factory=list)

    def summary(self, numpy_p50: float | None) -> dict:
        p50 = statistics.median(self.p50_ms)
        return {**{k: v for k, v in asdict(self).items() if k not in ("p50_ms", "p99_ms", "batch_qps")},
                "p50_ms": p50, "p99_ms": statistics.median(self.p99_ms),
                "batch_qps": statistics.median(self.batch_qps),
                "speedup_vs_numpy_p50": (numpy_p50 / p50) if numpy_p50 else None,
                "repeats": {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "batch_qps": self.batch_qps}}


@dataclass
class SearchBenchReport:
    size: str
    n: int
    dim: int
    k: int
    repeats: int
    machine: str
    cpu_count: int
    faiss_threads: int
    versions: dict[str, str]
    methods: list[MethodFigures] = field(default_factory=list)

    def numpy_p50(self) -> float | None:
        first = next((m for m in self.methods if m.method == "numpy brute force"), None)
        return statistics.median(first.p50_ms) if first else None

    def table(self) -> str:
        lines = [f"{self.n:,} vectors × {self.dim}, k={self.k}, medians of {self.repeats} repeats; {self.machine}, "
                 f"{self.cpu_count} cores, {self.faiss_threads} FAISS threads",
                 f"{'method':<20} {'spec':<22} {'tuned':<11} {'build s':>7} {'B/vector':>9} {'(theory)':>8} "
                 f"{'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10} {'× numpy':>8}"]
        base = self.numpy_p50()
        for m in self.methods:
            s = m.summary(base)
            lines.append(f"{m.method:<20} {m.spec:<22} {m.tuned:<11} {m.build_seconds:>7.1f} "
                         f"{m.bytes_per_vector:>9.0f} {m.theoretical_bytes:>8.0f} {m.recall_at_10:>9.3f} "
                         f"{s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['batch_qps']:>10.0f} "
                         f"{s['speedup_vs_numpy_p50']:>7.1f}×")
        return "\n".join(lines)

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "methods"}
        body["methods"] = [m.summary(self.numpy_p50()) for m in self.methods]
        return json.dumps(body, indent=2) + "\n"


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    millis = np.asarray(seconds) * 1000
    return float(np.percentile(millis, 50)), float(np.percentile(millis, 99))


def time_singles(search_one, queries: np.ndarray) -> tuple[float, float]:
    """Single-query p50 and p99 in ms over `queries`, one search each."""
    times = []
    for query in queries:
        started = time.perf_counter()
        search_one(query[None])
        times.append(time.perf_counter() - started)
    return _percentiles(times)


def _time_batches(search_many, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(queries), BATCH):
        search_many(queries[start : start + BATCH])
    return len(queries) / (time.perf_counter() - started)


def numpy_search(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k ids by inner product, the plain numpy way: (m, k) int64, best first."""
    out = []
    for start in range(0, len(queries), 256):  # bounds the (m, n) score matrix at a million vectors
        scores = queries[start : start + 256] @ base.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, axis=1).astype(np.int64))
    return np.concatenate(out)


def run_search_benchmark(size: str = "ci", dim: int = 512, seed: int = 0, repeats: int = 5,
                         extra_specs: tuple[str, ...] = (), n: int | None = None,
                         progress=None) -> SearchBenchReport:
    """Measure numpy, exact FAISS, the chosen spec and any `extra_specs` on the same vectors."""
    import faiss

    from index.ann import choose_spec, nlist_for, recall_at_k, theoretical_bytes, training_sample, tune

    say = progress or (lambda text: None)
    plan = SIZES[size]
    n = n or plan["n"]
    queries_n = plan["queries"]
    say(f"generating {n:,} + {2 * queries_n} vectors of dim {dim}")
    everything = clustered_vectors(n + 2 * queries_n, dim, seed)
    base, queries, tuning = everything[:n], everything[n : n + queries_n], everything[n + queries_n :]
    ids = np.arange(n, dtype=np.int64)
    report = SearchBenchReport(size, n, dim, K, repeats, cpu_name(), os.cpu_count() or 1, faiss.omp_get_max_threads(),
                               versions(np, faiss))

    say("exact answers (numpy) for the queries and the tuning queries")
    truth = numpy_search(base, queries)
    tuning_truth = numpy_search(base, tuning)
    scan = queries[: plan["scan_queries"]]

    numpy_figures = MethodFigures("numpy brute force", "-", 0.0, 4.0 * dim, 4.0 * dim, recall_at_k(truth, truth), "")
    _measure(numpy_figures, lambda q: numpy_search(base, q), scan, queries[:BATCH], repeats, say)
    report.methods.append(numpy_figures)

    specs = [("FAISS exact", "IDMap2,Flat"), ("FAISS chosen", choose_spec(n, dim)),
             ("FAISS IVF", f"IDMap2,IVF{nlist_for(n)},Flat")]
    specs += [("FAISS --spec", spec) for spec in extra_specs]
    seen = set()
    for method, spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        say(f"building {spec}")
        started = time.perf_counter()
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:  # k-means on a sample: 40 points per list is what FAISS asks for
            sample = base[np.random.default_rng(seed).choice(n, min(n, training_sample(spec)), replace=False)]
            index.train(sample)
        index.add_with_ids(base, ids)
        built = time.perf_counter() - started
        size_bytes = len(faiss.serialize_index(index))
        tuning_result = tune(index, spec, tuning, tuning_truth, K)
        recall = recall_at_k(index.search(queries, K)[1], truth)
        tuned = f"{tuning_result.parameter}={tuning_result.value}" if tuning_result.parameter else ""
        figures = MethodFigures(method, spec.removeprefix("IDMap2,"), built, size_bytes / n,
                                theoretical_bytes(spec, dim), recall, tuned)
        exact = tuning_result.parameter is None
        _measure(figures, lambda q, index=index: index.search(q, K), scan if exact else queries, queries[:BATCH],
                 repeats, say)
        report.methods.append(figures)
        del index
    return report


def _measure(figures: MethodFigures, search, singles: np.ndarray, batch: np.ndarray, repeats: int, say) -> None:
    say(f"timing {figures.method} ({figures.spec})")
    search(singles[:5])  # warm-up: page in the data, start the thread pool
    time_singles(search, singles[:5])
    for _ in range(repeats):
        p50, p99 = time_singles(search, singles)
        figures.p50_ms.append(p50)
        figures.p99_ms.append(p99)
        figures.batch_qps.append(_time_batches(search, batch))
