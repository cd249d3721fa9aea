"""Incremental indexing: walk, compare with the store, decode in workers, encode in batches,
commit in transactions. With `ray_address`, decoding and encoding run on Ray actors
(retrieval/indexing/distributed.py); everything else here is the same for both.

Every store write happens in a transaction of a few hundred files, applied to the in-memory
indexes only after it commits, so a run killed at any moment loses at most the uncommitted batch
and the next run redoes exactly that: unchanged files are recognised by size and mtime, renamed
ones by content hash (their vectors are kept), copies reuse stored vectors, and deletions happen
last, after every rename had its chance to claim the vanished item.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from index.collection import Collection
from index.records import FileState, ItemRecord, NewVector
from retrieval.errors import WorkerStartError
from retrieval.indexing.encode import EncodeBatcher
from retrieval.indexing.gpu_jpeg import GpuJpegStage, gpu_jpeg_available
from retrieval.indexing.prepare import (
    DECODED,
    ENCODED,
    FAILED,
    KNOWN_CONTENT,
    NOT_MEDIA,
    SAME_CONTENT,
    Prepared,
    Task,
)
from retrieval.indexing.summary import IndexSummary
from retrieval.indexing.walk import walk_roots
from retrieval.indexing.workers import DecodePool
from retrieval.media.errors import ErrorClass
from retrieval.media.limits import MediaLimits
from retrieval.media.sniff import SOUND_SUFFIXES

if TYPE_CHECKING:
    from retrieval.encoders.model import Encoder

ProgressCallback = Callable[[int, int], None]  # (files done, files total)
# Reads and decodes files (skipping contents whose hash is in the set): one result per task, in any
# order. Local worker processes, or Ray actors that also encode (their results come back ENCODED).
# A stage may also yield None when nothing is ready yet: the indexer encodes what it holds meanwhile.
DecodeStage = Callable[[list[Task], frozenset[str]], Iterator[Prepared | None]]
_TRANSIENT = (ErrorClass.PERMISSION, ErrorClass.IO_ERROR)
# Decoded files handled together: one query finds stored copies of all their contents. A query a
# file cost more than the rest of its handling on a GPU, where the reading threads hold the GIL
# each time the query gives it up.
HANDLE_FILES = 64


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
    # Decode and encode on a Ray cluster ("auto", "ray://host:port" or "local"); None: worker processes here.
    ray_address: str | None = None
    # With a CUDA encoder, decode JPEGs on its GPU (nvJPEG) rather than in the worker processes.
    gpu_decode: bool = True


class _Writer:
    """Queues store operations and commits them in batches, keeping the indexes in step."""

    def __init__(self, collection: Collection, options: IndexOptions) -> None:
        self.collection = collection
        self.options = options
        self.pending: list[tuple] = []
        # Items whose stored content this run deletes or replaces: never the source of a copy, since
        # by the time the copy is written their vectors may be another picture's.
        self.superseded: set[int] = set()
        self.last_flush = self.last_save = time.monotonic()

    def add(self, *operation) -> None:
        if operation[0] == "delete":
            self.superseded.add(operation[1])
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
            puts: list[tuple] = []  # consecutive puts go to the store together
            for kind, *args in self.pending:
                if kind == "put":
                    puts.append(tuple(args))
                    continue
                if puts:
                    transaction.put_items(puts)
                    puts = []
                if kind == "move":
                    transaction.move_item(*args)
                elif kind == "copy":
                    transaction.copy_item(*args)
                elif kind == "delete":
                    transaction.delete_items([args[0]])
                elif kind == "error":
                    transaction.record_error(*args)
                elif kind == "clear_errors":
                    transaction.clear_errors(args[0])
            if puts:
                transaction.put_items(puts)
        self.collection.apply(transaction.changes)
        self.pending = []
        self.last_flush = time.monotonic()


def interleaved(tasks: list[Task]) -> list[Task]:
    """The tasks with the sounds spread evenly among the images, each kind in walk order.

    A folder of photos then a folder of music would decode cheap images while the encoder idles,
    then cheap-to-decode but costly-to-encode sounds while the decoders idle, and leave a queue
    of sounds to encode after the last one is decoded. Mixed, both stages stay busy throughout.
    """
    sound = [os.path.splitext(task.path)[1].lower() in SOUND_SUFFIXES for task in tasks]
    counts = {True: sum(sound), False: len(tasks) - sum(sound)}
    seen = {True: 0, False: 0}
    position = []
    for is_sound in sound:  # the middle of each task's share of its kind's run
        position.append((seen[is_sound] + 0.5) / counts[is_sound])
        seen[is_sound] += 1
    order = sorted(range(len(tasks)), key=position.__getitem__)
    return [tasks[index] for index in order]


def _under(path: str, directories: list[str]) -> bool:
    return any(path.startswith(d.rstrip("/") + "/") for d in directories)


class _Run:
    """The state of one indexing run; `execute` is its whole story, top to bottom."""

    def __init__(self, roots: list[str], collection: Collection, encoder: Encoder, options: IndexOptions,
                 progress: ProgressCallback | None, decode: DecodeStage) -> None:
        self.roots = roots
        self.collection = collection
        self.options = options
        self.progress = progress or (lambda done, total: None)
        self.decode = decode
        self.summary = IndexSummary(roots)
        self.writer = _Writer(collection, options)
        self.queue = EncodeBatcher(encoder, options.batch_size, self.put)
        self.stored: dict[str, ItemRecord] = {}
        self.orphans: dict[str, list[ItemRecord]] = {}
        self.redo: list[Task] = []  # skipped as a rename that did not happen: decode after all
        self.done = self.total = 0  # files, for the progress callback

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

        self.done, self.total = self.summary.unchanged, len(walk.files)
        self.progress(self.done, self.total)
        skip_hashes = frozenset(self.orphans)
        tasks = interleaved(tasks)
        try:
            while tasks:
                held: list[Prepared] = []
                for prepared in self.decode(tasks, skip_hashes):
                    if prepared is not None:
                        held.append(prepared)
                        if len(held) < HANDLE_FILES:
                            continue
                    self.handle_all(held)
                    held = []
                    if prepared is None:  # the decoders are behind: encode now rather than wait
                        self.queue.encode_held()
                self.handle_all(held)
                self.done -= len(self.redo)
                tasks, skip_hashes, self.redo = self.redo, frozenset(), []
            self.queue.encode_held()
            for items in self.orphans.values():  # vanished and not claimed by a rename
                for item in items:
                    self.writer.add("delete", item.id)
                    self.summary.removed += 1
            self.writer.flush()
        except (KeyboardInterrupt, WorkerStartError):
            # Pending operations are complete decisions (vanished items are only queued for deletion
            # after the loop); commit them so a Ctrl-C or a lost cluster keeps the work done. The
            # next run does the rest.
            self.writer.flush()
            raise
        finally:
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def handle_all(self, batch: list[Prepared]) -> None:
        """Handle decoded files, with one lookup of stored items holding any of their contents."""
        if not batch:
            return
        contents = {p.state.content_hash for p in batch if p.status in (DECODED, ENCODED, KNOWN_CONTENT)}
        stored = self.collection.store.items_by_hash(contents) if contents else {}
        for prepared in batch:
            self.handle(prepared, stored)
            self.done += 1
            self.progress(self.done - len(self.redo), self.total)
            self.writer.maybe_flush()

    def handle(self, prepared: Prepared, stored_contents: dict[str, ItemRecord]) -> None:
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
        self.place_content(prepared, existing, stored_contents.get(prepared.state.content_hash))

    def place_content(self, prepared: Prepared, existing: ItemRecord | None, source: ItemRecord | None) -> None:
        """New content at a path: a rename of a vanished item, a copy of `source` (a stored item with
        that content, looked up before this batch), or encode."""
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
        if existing is not None:  # whatever comes next replaces its content
            self.writer.superseded.add(existing.id)
        if source is not None and source.id not in self.writer.superseded:
            self.writer.add("copy", source, state)
        elif prepared.status == KNOWN_CONTENT:  # decoding was skipped for a rename that did not happen
            self.redo.append(Task(state.path, existing.content_hash if existing else None))
            return  # counted when it comes back decoded
        elif prepared.status == ENCODED:
            self.put(prepared, prepared.vectors)
        else:
            self.queue.add(prepared)
        if existing is not None:
            self.summary.updated += 1
        else:
            self.summary.new += 1

    def put(self, prepared: Prepared, vectors: list[NewVector]) -> None:
        self.writer.add("put", prepared.state, prepared.info, vectors)
        self.summary.encoded += 1


def local_decode_stage(encoder: Encoder, options: IndexOptions) -> DecodeStage:
    """Worker processes here; with a CUDA encoder that has nvJPEG, JPEGs are decoded on its GPU."""
    if options.gpu_decode and gpu_jpeg_available(encoder.device):
        return GpuJpegStage(encoder.inputs, options.limits, options.workers, encoder.device)

    def decode(tasks: list[Task], skip_hashes: frozenset[str]) -> Iterator[Prepared | None]:
        return DecodePool(options.workers, encoder.inputs, options.limits, skip_hashes).run(tasks, report_idle=True)

    return decode


def index_paths(
    roots: list[str],
    collection: Collection,
    encoder: Encoder,
    options: IndexOptions | None = None,
    progress: ProgressCallback | None = None,
    decode: DecodeStage | None = None,
) -> IndexSummary:
    """Bring the collection in step with the files under `roots`.

    The caller holds the writer lock. Individual bad files never raise: they are recorded in the
    error ledger and the summary. With `options.ray_address`, files are decoded and encoded by Ray
    actors; everything else (the walk, change detection, the writer) stays here. `decode` replaces
    the local decode stage (a benchmark's).

    Raises:
        StorageFullError, StoreError: the store cannot be written.
        WorkerStartError: decode workers cannot start (ClusterError: the Ray cluster cannot be used).
    """
    options = options or IndexOptions()
    if options.ray_address is None:
        stage = decode or local_decode_stage(encoder, options)
        return _Run(roots, collection, encoder, options, progress, stage).execute()
    from retrieval.indexing.distributed import RayDecodeStage

    with RayDecodeStage(options.ray_address, encoder, options) as stage:
        return _Run(roots, collection, encoder, options, progress, stage).execute()
