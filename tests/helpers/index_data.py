"""Builders for the index-layer tests: seeded unit vectors, file states, media infos, and a
brute-force reference search. No encoder anywhere: the index layer only ever sees vectors."""

from __future__ import annotations

import numpy as np

from index.manifest import EncoderIdentity
from index.records import FileState, MediaInfo, NewVector
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
