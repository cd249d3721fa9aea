"""The GPU mirror of exact indexes answers exactly as FAISS does: same ids, same scores to rounding,
filters included. It runs on the CPU here and on CUDA too when the machine has a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from index.gpu_flat import TorchFlatIndex, cuda_available
from index.vector_index import VectorIndex

DEVICES = ["cpu"] + (["cuda"] if cuda_available() else [])


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("device", DEVICES)
def test_mirrored_exact_index_gives_faiss_answers_through_adds_removes_and_filters(device):
    vectors, queries = _unit(3000, 48, 0), _unit(40, 48, 1)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    plain, mirrored = VectorIndex.create(48), VectorIndex.create(48)
    for index in (plain, mirrored):
        index.add(ids[:2000], vectors[:2000])
    mirrored.attach_gpu(device)
    assert mirrored.device.startswith(device)
    for index in (plain, mirrored):  # changes after attaching reach the mirror too
        index.add(ids[2000:], vectors[2000:])
        index.remove(ids[::3])
    allowed = ids[1::5]
    for kwargs in ({}, {"allowed": allowed}):
        want_scores, want_ids = plain.search(queries, 10, **kwargs)
        got_scores, got_ids = mirrored.search(queries, 10, **kwargs)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert not np.isin(mirrored.search(queries, 10)[1], ids[::3]).any()  # removed ids never come back


@pytest.mark.parametrize("device", DEVICES)
def test_a_filter_with_fewer_survivors_than_k_returns_exactly_those(device):
    index = TorchFlatIndex(16, device)
    vectors = _unit(500, 16, 2)
    index.add(np.arange(500), vectors)
    scores, ids = index.search(vectors[:2], 10, allowed=np.array([4, 9, 11]))
    assert sorted(ids[0][:3].tolist()) == [4, 9, 11] and (ids[:, 3:] == -1).all()
    assert np.isneginf(scores[:, 3:]).all()


def test_half_precision_keeps_nearly_all_true_neighbours():
    vectors, queries = _unit(5000, 64, 3), _unit(50, 64, 4)
    full, half = TorchFlatIndex(64, "cpu", "float32"), TorchFlatIndex(64, "cpu", "float16")
    for index in (full, half):
        index.add(np.arange(5000), vectors)
    truth, found = full.search(queries, 10)[1], half.search(queries, 10)[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert overlap >= 0.97 and half.bytes_per_vector == full.bytes_per_vector // 2


def test_searches_from_many_threads_while_another_adds_see_whole_batches():
    index = TorchFlatIndex(8, "cpu")
    index.add(np.arange(100), _unit(100, 8, 5))
    batch = _unit(100, 8, 6)
    seen, errors = [], []

    def search() -> None:
        try:
            for _ in range(50):
                seen.append(index.count)
                ids = index.search(batch[:1], 5)[1]
                assert (ids >= 0).all() and (ids < 100 + 20 * 100).all()
        except Exception as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for step in range(20):
        index.add(np.arange(100 + step * 100, 200 + step * 100), batch)
    for thread in threads:
        thread.join()
    assert not errors and index.count == 2100 and all(count % 100 == 0 for count in seen)


def test_filters_find_their_rows_whether_or_not_ids_arrived_in_order():
    vectors = _unit(400, 8, 7)
    in_order, shuffled = TorchFlatIndex(8, "cpu"), TorchFlatIndex(8, "cpu")
    ids = np.arange(400, dtype=np.int64) * 3
    in_order.add(ids, vectors)
    order = np.random.default_rng(8).permutation(400)
    shuffled.add(ids[order], vectors[order])
    in_order.remove(ids[::7])
    shuffled.remove(ids[::7])
    allowed = np.array([0, 1, 2, 3, 9, 30, 31, 600, 1194, 1197, 5000])  # absent, removed, last, past the end
    for index in (in_order, shuffled):
        found = index.search(vectors[:3], 10, allowed=allowed)[1]
        assert set(found[found >= 0].tolist()) == {3, 9, 30, 600, 1194}
