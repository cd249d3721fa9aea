"""Typed rows of the store and the change sets that keep the FAISS caches in step with it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODALITIES = ("image", "audio")


@dataclass(frozen=True)
class MediaInfo:
    """What decoding learned about a file; stored with its item."""

    modality: str
    format: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class FileState:
    """A file's identity on disk at the moment it was read."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class ItemRecord:
    id: int
    path: str
    modality: str
    format: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int | None
    height: int | None
    duration: float | None
    sample_rate: int | None
    channels: int | None
    indexed_at: float


@dataclass(frozen=True)
class NewVector:
    """A vector to store: the item's own (`kind='item'`) or one audio window with its time range."""

    embedding: np.ndarray  # (dim,) float32, L2-normalised
    kind: str = "item"
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class ResolvedVector:
    """What a FAISS id stands for: the item and, for an audio window, its time range."""

    vector_id: int
    item: ItemRecord
    kind: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class ErrorRecord:
    path: str
    error_class: str
    message: str
    first_seen: float
    last_seen: float
    seen_count: int


@dataclass
class VectorChanges:
    """Vector ids added and removed by one committed transaction, per modality."""

    added_ids: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    added_vectors: dict[str, list[np.ndarray]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    removed_ids: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    # Vectors kept as they are whose item was renamed or touched (new path, mtime). FAISS has nothing
    # to do for them; a backend that keeps item metadata beside the vectors (Milvus) rewrites it.
    moved_ids: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in MODALITIES})

    def add(self, modality: str, vector_id: int, embedding: np.ndarray) -> None:
        self.added_ids[modality].append(vector_id)
        self.added_vectors[modality].append(embedding)

    def remove(self, modality: str, vector_ids: list[int]) -> None:
        """Record removals; an id added earlier in the same transaction is simply un-added, since
        `Collection.apply` removes before it adds and would otherwise leave a ghost vector."""
        gone = set(vector_ids)
        pending = gone.intersection(self.added_ids[modality])
        if pending:
            kept = [(i, v) for i, v in zip(self.added_ids[modality], self.added_vectors[modality], strict=True)
                    if i not in pending]
            self.added_ids[modality] = [i for i, _ in kept]
            self.added_vectors[modality] = [v for _, v in kept]
        self.removed_ids[modality].extend(i for i in vector_ids if i not in pending)

    def added(self, modality: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids (n,) int64 and vectors (n, dim) float32 added for `modality`."""
        ids = np.asarray(self.added_ids[modality], dtype=np.int64)
        if not self.added_vectors[modality]:
            return ids, np.empty((0, dim), dtype=np.float32)
        return ids, np.stack(self.added_vectors[modality]).astype(np.float32, copy=False)

    def move(self, modality: str, vector_ids: list[int]) -> None:
        self.moved_ids[modality].extend(vector_ids)

    @property
    def empty(self) -> bool:
        """No vector or searchable metadata changed (the store version stays, caches stay current)."""
        return not any(self.added_ids[m] or self.removed_ids[m] or self.moved_ids[m] for m in MODALITIES)
