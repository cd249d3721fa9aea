"""Incremental indexing: walk, compare with the store, decode in workers, encode in batches,
commit in transactions.

Every store write happens in a transaction of a few hundred files, applied to the in-memory
indexes only after it commits, so a run killed at any moment loses at most the uncommitted batch
and the next run redoes exactly that: unchanged files are recognised by size and mtime, renamed
ones by content hash (their vectors are kept), copies reuse stored vectors, and deletions happen
last, after every rename had its chance to claim the vanished item.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from index.collection import Collection
from index.records import FileState, ItemRecord, NewVector
from retrieval.indexing.prepare import (
    DECODED,
    FAILED,
    KNOWN_CONTENT,
    NOT_MEDIA,
    SAME_CONTENT,
    Prepared,
    Task,
    prepare_file,
)
from retrieval.indexing.summary import IndexSummary
from retrieval.indexing.walk import walk_roots
from retrieval.indexing.workers import DecodePool
from retrieval.media.errors import ErrorClass
from retrieval.media.limits import MediaLimits

if TYPE_CHECKING:
    from retrieval.encoders.model import Encoder

ProgressCallback = Callable[[int, int], None]  # (files done, files total)
_TRANSIENT = (ErrorClass.PERMISSION, ErrorClass.IO_ERROR)


def default_workers() -> int:
    """One decode process per core but one, leaving a core to the encoder (at least one)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class IndexOptions:
    workers: int = field(default_factory=default_workers)
    batch_size: int = 64  # images per encoder call; audio windows per call
    commit_every: int = 256  # files per store transaction
    commit_seconds: float = 5.0  # ...or sooner, so a slow run still makes durable progress
    save_every_seconds: float = 120.0  # write an index generation readers can pick up mid-run
    limits: MediaLimits = field(default_factory=MediaLimits)
    exclude: list[str] = field(default_factory=list)


class _Writer:
    """Queues store operations and commits them in batches, keeping the indexes in step."""

    def __init__(self, collection: Collection, options: IndexOptions) -> None:
        self.collection = collection
        self.options = options
        self.pending: list[tuple] = []
        self.deleted_ids: set[int] = set()
        self.last_flush = self.last_save = time.monotonic()

    def add(self, *operation) -> None:
        if operation[0] == "delete":
            self.deleted_ids.add(operation[1])
        self.pending.append(operation)

    def maybe_flush(self) -> None:
        now = time.monotonic()
        if len(self.pending) >= self.options.commit_every or now - self.last_flush >= self.options.commit_seconds:
            self.flush()
        if now - self.last_save >= self.options.save_every_seconds:
            self.collection.save_generation()
            self.last_save = now

    def flush(self) -> None:
        if not self.pending:
            return
        with self.collection.store.write() as transaction:
            for kind, *args in self.pending:
                if kind == "put":
                    transaction.put_item(*args)
                elif kind == "move":
                    transaction.move_item(*args)
                elif kind == "copy":
                    transaction.copy_item(*args)
                elif kind == "delete":
                    transaction.delete_items([args[0]])
                elif kind == "error":
                    transaction.record_error(*args)
                elif kind == "clear_errors":
                    transaction.clear_errors(args[0])
        self.collection.apply(transaction.changes)
        self.pending = []
        self.last_flush = time.monotonic()


class _EncodeQueue:
    """Decoded files waiting for the encoder, batched per modality."""

    def __init__(self, encoder: Encoder, writer: _Writer, summary: IndexSummary, batch_size: int) -> None:
        self.encoder = encoder
        self.writer = writer
        self.summary = summary
        self.batch_size = batch_size
        self.images: list[Prepared] = []
        self.sounds: list[Prepared] = []
        self.sound_windows = 0

    def add(self, prepared: Prepared) -> None:
        if prepared.info.modality == "image":
            self.images.append(prepared)
            if len(self.images) >= self.batch_size:
                self.encode_images()
        else:
            self.sounds.append(prepared)
            frames_per_window = self.encoder.config.audio.front_end.window_hop_frames
            self.sound_windows += 1 + prepared.log_mel.shape[1] // max(1, frames_per_window)
            if self.sound_windows >= self.batch_size:
                self.encode_sounds()

    def encode_images(self) -> None:
        if not self.images:
            return
        import numpy as np

        vectors = self.encoder.encode_pixels(np.stack([p.pixels for p in self.images]))  # (n, dim)
        for prepared, vector in zip(self.images, vectors, strict=True):
            self.writer.add("put", prepared.state, prepared.info, [NewVector(vector)])
        self.summary.encoded += len(self.images)
        self.images = []

    def encode_sounds(self) -> None:
        if not self.sounds:
            return
        embeddings = self.encoder.embed_log_mels([p.log_mel for p in self.sounds],
                                                 [p.info.duration for p in self.sounds])
        for prepared, embedding in zip(self.sounds, embeddings, strict=True):
            duration = prepared.info.duration
            vectors = [NewVector(embedding.pooled, "item", 0.0, duration)]
            if len(embedding.ranges) > 1:
                windows = zip(embedding.windows, embedding.ranges, strict=True)
                vectors += [NewVector(v, "window", start, end) for v, (start, end) in windows]
            self.writer.add("put", prepared.state, prepared.info, vectors)
        self.summary.encoded += len(self.sounds)
        self.sounds, self.sound_windows = [], 0

    def finish(self) -> None:
        self.encode_images()
        self.encode_sounds()


def _under(path: str, directories: list[str]) -> bool:
    return any(path.startswith(d.rstrip("/") + "/") for d in directories)


class _Run:
    """The state of one indexing run; `execute` is its whole story, top to bottom."""

    def __init__(self, roots: list[str], collection: Collection, encoder: Encoder, options: IndexOptions,
                 progress: ProgressCallback | None) -> None:
        self.roots = roots
        self.collection = collection
        self.encoder = encoder
        self.options = options
        self.progress = progress or (lambda done, total: None)
        self.summary = IndexSummary(roots)
        self.writer = _Writer(collection, options)
        self.queue = _EncodeQueue(encoder, self.writer, self.summary, options.batch_size)
        self.stored: dict[str, ItemRecord] = {}
        self.orphans: dict[str, list[ItemRecord]] = {}

    def execute(self) -> IndexSummary:
        started = time.monotonic()
        walk = walk_roots(self.roots, exclude=self.options.exclude)
        self.summary.files_seen = len(walk.files)
        self.stored = self.collection.store.items_under(self.roots)
        found = {f.path for f in walk.files}
        tasks = []
        for file in walk.files:
            item = self.stored.get(file.path)
            if item is not None and item.size == file.size and item.mtime_ns == file.mtime_ns:
                self.summary.unchanged += 1
            else:
                tasks.append(Task(file.path, item.content_hash if item else None))
        # Items whose file is gone; under an unreadable folder they are kept (not known to be gone).
        for path, item in self.stored.items():
            if path not in found and not _under(path, walk.unreadable_dirs):
                self.orphans.setdefault(item.content_hash, []).append(item)
        for path, error in walk.issues.items():
            self.writer.add("error", path, error.error_class.value, error.message)
            self.summary.skip(path, error)
        gone = self.collection.store.error_paths_under(self.roots) - found - set(walk.issues)
        self.writer.add("clear_errors", [p for p in gone if not _under(p, walk.unreadable_dirs)])

        done = self.summary.unchanged
        self.progress(done, len(walk.files))
        pool = DecodePool(self.options.workers, self.encoder.inputs, self.options.limits, frozenset(self.orphans))
        try:
            for prepared in pool.run(tasks):
                self.handle(prepared)
                done += 1
                self.progress(done, len(walk.files))
                self.writer.maybe_flush()
            self.queue.finish()
            for items in self.orphans.values():  # vanished and not claimed by a rename
                for item in items:
                    self.writer.add("delete", item.id)
                    self.summary.removed += 1
            self.writer.flush()
        except KeyboardInterrupt:
            # Pending operations are complete decisions (vanished items are only queued for deletion
            # after the loop); commit them so a Ctrl-C keeps the work done. The next run does the rest.
            self.writer.flush()
            raise
        finally:
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def handle(self, prepared: Prepared) -> None:
        path, existing = prepared.path, self.stored.get(prepared.path)
        if prepared.status == FAILED:
            self.writer.add("error", path, prepared.error.error_class.value, prepared.error.message)
            self.summary.skip(path, prepared.error)
            # Damaged content replaced what was indexed: drop it. An unreadable file (permissions, an
            # I/O error, perhaps passing) keeps its item; a failing disk must not empty the index.
            if existing is not None and prepared.error.error_class not in _TRANSIENT:
                self.writer.add("delete", existing.id)
                self.summary.removed += 1
            return
        if prepared.status == NOT_MEDIA:
            self.summary.ignored += 1
            if existing is not None:
                self.writer.add("delete", existing.id)
                self.summary.removed += 1
            return
        if prepared.status == SAME_CONTENT:  # touched, not changed
            self.writer.add("move", existing.id, prepared.state)
            self.summary.unchanged += 1
            return
        self.place_content(prepared, existing)

    def place_content(self, prepared: Prepared, existing: ItemRecord | None) -> None:
        """New content at a path: a rename of a vanished item, a copy of a stored one, or encode."""
        state: FileState = prepared.state
        candidates = self.orphans.get(state.content_hash)
        if candidates:
            orphan = candidates.pop()
            if not candidates:
                del self.orphans[state.content_hash]
            if existing is not None:
                self.writer.add("delete", existing.id)
                self.summary.removed += 1
            self.writer.add("move", orphan.id, state)
            self.summary.renamed += 1
            return
        source = self.collection.store.find_item_by_hash(state.content_hash)
        if source is not None and source.id not in self.writer.deleted_ids:
            self.writer.add("copy", source, state)
        else:
            if prepared.status == KNOWN_CONTENT:  # decoding was skipped for a rename that did not happen
                prepared = prepare_file(Task(state.path), self.encoder.inputs, self.options.limits, frozenset())
                if prepared.status != DECODED:
                    self.handle(prepared)
                    return
            self.queue.add(prepared)
        if existing is not None:
            self.summary.updated += 1
        else:
            self.summary.new += 1


def index_paths(
    roots: list[str],
    collection: Collection,
    encoder: Encoder,
    options: IndexOptions | None = None,
    progress: ProgressCallback | None = None,
) -> IndexSummary:
    """Bring the collection in step with the files under `roots`.

    The caller holds the writer lock. Individual bad files never raise: they are recorded in the
    error ledger and the summary. Raises only for fatal problems (StorageFullError, StoreError).
    """
    return _Run(roots, collection, encoder, options or IndexOptions(), progress).execute()
