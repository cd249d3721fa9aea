"""Builders for the index-layer tests: seeded unit vectors, file states, media infos, and a
brute-force reference search. No encoder anywhere: the index layer only ever sees vectors."""

from __future__ import annotations

import numpy as np

from index.manifest import EncoderIdentity
from index.records import MODALITIES, FileState, MediaInfo, NewVector
from index.store import Transaction

DIM = 16
ENCODER = EncoderIdentity("micro:test", "fingerprint-1", DIM)
IMAGE = MediaInfo("image", "png", width=64, height=48)
AUDIO = MediaInfo("audio", "wav", duration=3.0, sample_rate=16000, channels=1)


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """(n, dim) float32 rows of unit length, as every encoder returns."""
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def file_state(path: str, content_hash: str | None = None, size: int = 1000, mtime_ns: int = 1) -> FileState:
    return FileState(path, size, mtime_ns, content_hash or f"hash-of-{path}")


def image_vectors(rng: np.random.Generator, dim: int = DIM) -> list[NewVector]:
    return [NewVector(unit_vectors(rng, 1, dim)[0])]


def audio_vectors(rng: np.random.Generator, windows: int = 2, dim: int = DIM) -> list[NewVector]:
    """The pooled vector of a clip plus one vector per window, as the indexer stores them."""
    rows = unit_vectors(rng, 1 + windows, dim)
    vectors = [NewVector(rows[0], "item", 0.0, 3.0)]
    vectors += [NewVector(rows[1 + w], "window", float(w), float(w) + 1.0) for w in range(windows)]
    return vectors


def put_image(transaction: Transaction, path: str, rng: np.random.Generator, **state) -> int:
    return transaction.put_item(file_state(path, **state), IMAGE, image_vectors(rng))


def put_audio(transaction: Transaction, path: str, rng: np.random.Generator, windows: int = 2) -> int:
    return transaction.put_item(file_state(path), AUDIO, audio_vectors(rng, windows))


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product in float64: scores (m, k), ids (m, k)."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T  # (m, n)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (m, k)
    return np.take_along_axis(scores, order, axis=1), ids[order]


def fill(collection, rng: np.random.Generator, prefix: str, images: int = 12, sounds: int = 4) -> None:
    """One committed transaction of new items, applied to the in-memory indexes as the indexer does."""
    with collection.store.write() as transaction:
        for n in range(images):
            put_image(transaction, f"{prefix}/{n:03d}.png", rng)
        for n in range(sounds):
            put_audio(transaction, f"{prefix}/{n:03d}.wav", rng, windows=2)
    collection.apply(transaction.changes)


def search_everything(collection, queries: np.ndarray, k: int = 10) -> dict[str, tuple]:
    """(scores, ids) of every modality's search for `queries`."""
    return {modality: collection.search(modality, queries, k) for modality in MODALITIES}


def assert_same_results(got: dict[str, tuple], expected: dict[str, tuple]) -> None:
    for modality in MODALITIES:
        np.testing.assert_array_equal(got[modality][1], expected[modality][1])
        np.testing.assert_allclose(got[modality][0], expected[modality][0], rtol=0, atol=1e-6)


def assert_in_step_with_store(collection) -> None:
    """Each modality's index holds exactly the store's vectors, each once."""
    for modality in MODALITIES:
        faiss_ids = collection.indexes[modality].ids().tolist()
        assert len(faiss_ids) == len(set(faiss_ids)), f"{modality}: an id is indexed twice"
        assert set(faiss_ids) == set(collection.store.vector_ids(modality).tolist()), modality


def saved_collection(db_dir, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, tuple]]:
    """Fill a new collection at `db_dir`, save generation 1 and close it: the queries and the
    results it gave."""
    from index.collection import Collection

    queries = unit_vectors(rng, 5, DIM)
    with Collection.open(db_dir, ENCODER, writable=True) as collection:
        fill(collection, rng, "/media")
        collection.save_generation()
        return queries, search_everything(collection, queries)
