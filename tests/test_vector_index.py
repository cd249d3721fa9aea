"""The FAISS index keyed by store ids, checked against exact numpy search, and the atomic writes
that every index and manifest file goes through."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from index import atomic
from index.atomic import write_atomic, write_bytes_atomic
from index.errors import StorageFullError
from index.vector_index import VectorIndex
from tests.helpers.index_data import brute_force, unit_vectors

DIM = 16


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def filled(rng):
    """An index of 300 unit vectors under sparse, large, shuffled ids (like store ids after deletions)."""
    vectors = unit_vectors(rng, 300, DIM)
    ids = rng.choice(10**9, size=300, replace=False).astype(np.int64)
    index = VectorIndex.create(DIM)
    index.add(ids, vectors)
    return index, ids, vectors


def assert_matches_brute_force(index, ids, vectors, queries, k):
    scores, found = index.search(queries, k)
    expected_scores, expected_ids = brute_force(vectors, ids, queries, k)
    assert found.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 10, 300])
def test_search_equals_exact_brute_force(filled, rng, k):
    index, ids, vectors = filled
    queries = unit_vectors(rng, 9, DIM)
    assert_matches_brute_force(index, ids, vectors, queries, k)


def test_a_stored_vector_finds_itself_first_with_cosine_one(filled):
    index, ids, vectors = filled
    scores, found = index.search(vectors[:5], 1)
    np.testing.assert_array_equal(found[:, 0], ids[:5])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_removed_ids_never_come_back_from_search(filled, rng):
    index, ids, vectors = filled
    removed = rng.choice(ids, size=120, replace=False)
    assert index.remove(removed) == 120
    assert index.remove(removed[:10].tolist()) == 0  # already gone: nothing else is touched
    assert index.remove([]) == 0
    assert index.count == 180
    keep = ~np.isin(ids, removed)
    assert set(index.ids().tolist()) == set(ids[keep].tolist())

    queries = np.concatenate([vectors[np.isin(ids, removed)][:5], unit_vectors(rng, 5, DIM)])  # (10, DIM)
    _, found = index.search(queries, 300)
    assert not np.isin(found, removed).any()
    assert_matches_brute_force(index, ids[keep], vectors[keep], queries, 20)


def test_k_beyond_the_count_returns_every_vector_once_without_padding(rng):
    index = VectorIndex.create(DIM)
    vectors = unit_vectors(rng, 4, DIM)
    index.add(np.array([11, 22, 33, 44]), vectors)
    queries = unit_vectors(rng, 3, DIM)
    scores, found = index.search(queries, 50)
    # Clamped to the count: every row holds each id exactly once, best first, no -1 to filter.
    assert found.shape == scores.shape == (3, 4)
    assert all(sorted(row) == [11, 22, 33, 44] for row in found.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()
    assert_matches_brute_force(index, np.array([11, 22, 33, 44]), vectors, queries, 4)


def test_an_empty_index_answers_with_padding_that_callers_filter(rng):
    index = VectorIndex.create(DIM)
    queries = unit_vectors(rng, 2, DIM)
    scores, found = index.search(queries, 10)
    assert found.shape == (2, 1) and (found == -1).all() and np.isneginf(scores).all()

    index.add(np.array([5]), unit_vectors(rng, 1, DIM))
    index.remove([5])  # emptied again by deletions
    scores, found = index.search(queries, 10)
    assert (found == -1).all() and found[found >= 0].size == 0


def test_save_and_load_give_the_same_index(filled, rng, tmp_path):
    index, ids, _ = filled
    index.remove(ids[:50])
    path = tmp_path / "image.000001.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, index.spec)

    assert (loaded.count, loaded.dim, loaded.spec) == (250, DIM, "IDMap2,Flat")
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.sort(ids[50:]))
    queries = unit_vectors(rng, 6, DIM)
    for got, expected in zip(loaded.search(queries, 25), index.search(queries, 25), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind

    index.add(np.array([7]), unit_vectors(rng, 1, DIM))
    index.save(path)  # saving over an existing file replaces it
    assert VectorIndex.load(path, index.spec).count == 251


def test_wrong_shapes_and_specs_are_refused(rng):
    index = VectorIndex.create(DIM)
    with pytest.raises(ValueError, match=rf"\(2, {DIM}\)"):
        index.add(np.array([1, 2]), unit_vectors(rng, 2, DIM + 1))
    with pytest.raises(ValueError):
        index.add(np.array([1, 2, 3]), unit_vectors(rng, 2, DIM))
    with pytest.raises(ValueError):
        index.add(np.array([1]), unit_vectors(rng, 1, DIM)[0])  # (dim,) instead of (1, dim)
    index.add(np.array([1]), unit_vectors(rng, 1, DIM))
    with pytest.raises(ValueError, match=rf"\(m, {DIM}\)"):
        index.search(unit_vectors(rng, 1, DIM)[0], 1)  # (dim,) instead of (1, dim)
    with pytest.raises(ValueError, match=rf"\(m, {DIM}\)"):
        index.search(unit_vectors(rng, 3, DIM - 1), 1)
    with pytest.raises(ValueError, match="IDMap2"):
        VectorIndex.create(DIM, "Flat")
    assert index.count == 1  # refused input changed nothing


def test_adding_nothing_is_a_no_op():
    index = VectorIndex.create(DIM)
    index.add(np.empty(0, dtype=np.int64), np.empty((0, DIM), dtype=np.float32))
    assert index.count == 0


# ---------------------------------------------------------------- atomic writes


def only_file(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_leaves_the_old_file_intact_and_no_temp_file(tmp_path, code):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"the previous generation")

    def write(temp: Path) -> None:
        temp.write_bytes(b"half of the new gene")  # some bytes made it before the disk filled up
        raise OSError(code, "No space left on device")

    with pytest.raises(StorageFullError, match="manifest.json"):
        write_atomic(target, write)
    assert target.read_bytes() == b"the previous generation"
    assert only_file(tmp_path) == ["manifest.json"]


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "denied"), KeyboardInterrupt()])
def test_other_failures_propagate_unchanged_and_clean_up(tmp_path, error):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    def write(temp: Path) -> None:
        temp.write_bytes(b"new")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, write)
    assert target.read_bytes() == b"old"
    assert only_file(tmp_path) == ["manifest.json"]


def test_write_bytes_atomic_replaces_the_content(tmp_path):
    target = tmp_path / "manifest.json"
    write_bytes_atomic(target, b"first")
    write_bytes_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert only_file(tmp_path) == ["manifest.json"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to produce a real ENOSPC")
def test_an_index_save_on_a_full_disk_raises_storage_full_and_keeps_the_old_file(tmp_path, rng, monkeypatch):
    # Fault injection below any writer: the temp file handed out is a link to /dev/full, which fails
    # every write with a real ENOSPC, whoever writes it (FAISS's C++ writer or Python).
    path = tmp_path / "image.000001.faiss"
    old = VectorIndex.create(DIM)
    old.add(np.array([1]), unit_vectors(rng, 1, DIM))
    old.save(path)
    before = path.read_bytes()

    def mkstemp_on_a_full_disk(prefix: str, suffix: str, dir: Path) -> tuple[int, str]:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        return os.open(name, os.O_WRONLY), name

    monkeypatch.setattr(atomic, "tempfile", SimpleNamespace(mkstemp=mkstemp_on_a_full_disk))
    new = VectorIndex.create(DIM)
    new.add(np.arange(5000), unit_vectors(rng, 5000, DIM))  # (5000, DIM): larger than stdio's buffer
    with pytest.raises(StorageFullError, match="image.000001.faiss"):
        new.save(path)
    assert path.read_bytes() == before
    assert only_file(tmp_path) == [path.name]
