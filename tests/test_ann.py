"""Index choice by collection size, search effort tuned to a recall target, the size model of each
index type, and the search benchmark that shows them side by side."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from index.ann import EXACT_UP_TO, choose_spec, nlist_for, recall_at_k, theoretical_bytes, training_sample, tune
from retrieval.bench.search_bench import clustered_vectors, numpy_search


@pytest.fixture(scope="module")
def data():
    vectors = clustered_vectors(20_400, 128, seed=3)
    base, queries = vectors[:20_000], vectors[20_000:]
    return base, queries[:200], queries[200:], numpy_search(base, queries[:200]), numpy_search(base, queries[200:])


def _build(spec: str, base: np.ndarray):
    index = faiss.index_factory(base.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(base[: min(len(base), training_sample(spec))])
    index.add_with_ids(base, np.arange(len(base), dtype=np.int64))
    return index


def test_small_collections_stay_exact_and_large_ones_get_an_inverted_file():
    assert choose_spec(EXACT_UP_TO, 512) == "IDMap2,Flat"
    assert choose_spec(1_000_000, 512) == "IDMap2,IVF4096,Flat"
    assert choose_spec(50_000_000, 512) == "IDMap2,IVF32768,Flat"
    # Too little memory for full-precision vectors: product quantisation, 64 bytes a vector.
    assert choose_spec(50_000_000, 512, memory_bytes=8 * 2**30) == "IDMap2,OPQ64,IVF32768,PQ64"
    for n in (EXACT_UP_TO + 1, 10**6, 10**8):
        assert nlist_for(n) & (nlist_for(n) - 1) == 0  # a power of two
        faiss.index_factory(512, choose_spec(n, 512, memory_bytes=2**30), faiss.METRIC_INNER_PRODUCT)  # valid


def test_tuning_finds_the_least_effort_that_reaches_the_recall_target(data):
    base, queries, tuning, truth, tuning_truth = data
    index = _build("IDMap2,IVF256,Flat", base)
    tuned = tune(index, "IDMap2,IVF256,Flat", tuning, tuning_truth, target=0.95)
    assert tuned.parameter == "nprobe" and tuned.recall >= 0.95 and tuned.value < 256
    assert recall_at_k(index.search(queries, 10)[1], truth) >= 0.93  # holds on queries it was not tuned on
    if tuned.value > 1:  # one step less effort misses the target: the least, not just enough
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", tuned.value // 2)
        assert recall_at_k(index.search(tuning, 10)[1], tuning_truth) < 0.95
    impossible = tune(index, "IDMap2,IVF256,Flat", tuning, tuning_truth, target=1.01)
    assert impossible.value == 256 and impossible.recall == pytest.approx(1.0)  # all lists: exact again
    graph = _build("IDMap2,HNSW16", base)
    assert tune(graph, "IDMap2,HNSW16", tuning, tuning_truth).recall >= 0.95


@pytest.mark.parametrize("spec", ["IDMap2,Flat", "IDMap2,IVF64,Flat", "IDMap2,HNSW16", "IDMap2,IVF64,PQ16"])
def test_each_index_costs_what_its_type_should_per_vector(data, spec):
    base = data[0]
    # What each added vector costs: codebooks and centroids are a fixed cost that a large
    # collection amortises (and the benchmark's per-vector figure includes).
    half, full = (len(faiss.serialize_index(_build(spec, base[:n]))) for n in (10_000, 20_000))
    assert (full - half) / 10_000 == pytest.approx(theoretical_bytes(spec, base.shape[1]), rel=0.10)


def test_recall_counts_the_true_neighbours_found():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(np.array([[3, 2, 1], [4, 9, 9]]), truth, k=3) == pytest.approx(4 / 6)


def test_the_search_benchmark_compares_methods_on_the_same_vectors(tmp_path):
    from retrieval.bench.search_bench import run_search_benchmark

    report = run_search_benchmark("ci", dim=64, seed=1, repeats=2, extra_specs=("IDMap2,HNSW16",), n=5000)
    methods = {m.method: m for m in report.methods}
    assert list(methods) == ["numpy brute force", "FAISS exact", "FAISS IVF", "FAISS --spec"]
    assert methods["FAISS exact"].recall_at_10 == 1.0 and methods["numpy brute force"].recall_at_10 == 1.0
    assert methods["FAISS IVF"].recall_at_10 >= 0.9 and methods["FAISS IVF"].tuned.startswith("nprobe=")
    assert all(len(m.p50_ms) == 2 and min(m.p50_ms) > 0 for m in report.methods)
    body = json.loads(report.to_json())
    assert {"machine", "cpu_count", "versions", "n", "dim", "repeats"} <= set(body)
    assert body["methods"][0]["speedup_vs_numpy_p50"] == pytest.approx(1.0)
    assert "FAISS IVF" in report.table() and "× numpy" in report.table()
