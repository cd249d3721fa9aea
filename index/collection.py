"""A collection is one database directory: the SQLite store, one FAISS index per modality, and the
manifest of the current index generation.

    DB_DIR/xmodal.sqlite3          items, vectors, error ledger (source of truth)
    DB_DIR/manifest.json           encoder, generation, store version, index checksums
    DB_DIR/indexes/image.000007.faiss
    DB_DIR/writer.lock             held by the one process that writes

A writer saves each generation under new file names and then swaps the manifest, so a reader
that loaded generation 6 keeps searching it while generation 7 is written. The previous
generation's files are kept one round so a reader between "read manifest" and "open file" finds
them. When the store has moved on since the manifest (a writer was killed before saving, or a file
fails its checksum), the indexes are rebuilt from the stored vectors, never by re-encoding media.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.atomic import sha256_file
from index.errors import EncoderMismatchError, IndexCorruptError, IndexRebuildingError, StoreError
from index.filters import SearchFilter
from index.lock import WriterLock, is_locked
from index.manifest import EncoderIdentity, IndexFile, Manifest, load_manifest, save_manifest
from index.records import MODALITIES, VectorChanges
from index.specs import INDEX_SPEC_KEY, remember_spec
from index.store import Store
from index.vector_index import VectorIndex

STORE_NAME = "xmodal.sqlite3"
INDEX_DIR = "indexes"
TUNING_QUERIES = 200
WRITER_WORKING = "a writer is indexing; searching the last saved generation"
REBUILDING = "rebuilding the index from the store; searches answer once it is in place"
ALLOWED_CACHE = 16  # filters whose allowed ids are kept


@dataclass(frozen=True)
class LoadStatus:
    """How the indexes were obtained: 'loaded', 'rebuilt', 'empty'; or, degraded: 'stale' (a writer is
    still working), 'degraded' (a damaged generation is rebuilt while the old one answers),
    'unsaved' (a repair could not be saved), or while none is in place 'rebuilding' (a deferred
    rebuild runs) or 'unavailable' (it failed)."""

    state: str
    reason: str = ""

    @property
    def healthy(self) -> bool:
        return self.state in ("loaded", "rebuilt", "empty")


def read_encoder_identity(db_dir: Path) -> EncoderIdentity | None:
    """The encoder a database was built with, or None for a new or empty one."""
    path = Path(db_dir) / STORE_NAME
    if not path.exists():
        return None
    store = Store.open(path, readonly=True)
    try:
        return _stored_identity(store)
    finally:
        store.close()


def _stored_identity(store: Store) -> EncoderIdentity | None:
    spec = store.get_meta("encoder_spec")
    if spec is None:
        return None
    return EncoderIdentity(spec, store.get_meta("encoder_fingerprint") or "", int(store.get_meta("dim") or 0))


def resolve_device(device: str | None) -> str:
    """The device given (callers pass their encoder's), or for None "cuda" when torch sees a GPU."""
    from index.gpu_flat import cuda_available

    if device is None or device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def _check_identity(stored: EncoderIdentity, requested: EncoderIdentity, db_dir: Path) -> None:
    if stored.fingerprint != requested.fingerprint or stored.dim != requested.dim:
        raise EncoderMismatchError(
            f"index in {db_dir} was built with {stored.spec}, dim {stored.dim}; you asked for "
            f"{requested.spec}, dim {requested.dim}. Search it without --model, or index into another --db"
        )


def _memory_budget() -> int | None:
    """Half the machine's physical memory: past it, full-precision vectors give way to PQ codes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return None


class Collection:
    """Store plus in-memory indexes of one database directory."""

    def __init__(self, db_dir: Path, store: Store, encoder: EncoderIdentity, index_spec: str | None = None,
                 device: str = "cpu") -> None:
        self.db_dir = db_dir
        self.store = store
        self.encoder = encoder
        self.index_spec = index_spec  # None: chosen by size (index.ann), else a FAISS factory string
        self.device = device  # "cuda...": exact indexes are mirrored on that GPU for searching
        # modality -> (search parameter, recall@10, vectors when tuned); empty parameter: exact or untuned
        self.tuning: dict[str, tuple[str, float | None, int]] = {}
        self.indexes: dict[str, VectorIndex] = {}
        self.generation = 0
        self.built_from_version = -1
        self.status = LoadStatus("empty")
        self._swap_lock = threading.Lock()
        # (modality, filter) -> (the index it was made for, its store version, allowed ids); weak, so a
        # swapped-out generation is freed at once
        self._allowed_cache: dict[tuple[str, SearchFilter], tuple] = {}
        self._allowed_lock = threading.Lock()
        self._unusable: set[int] = set()  # generations that failed their checks (refresh skips them)

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        db_dir: Path,
        encoder: EncoderIdentity | None,
        *,
        writable: bool,
        index_spec: str | None = None,
        device: str | None = None,
        defer_rebuild: bool = False,
        **backend,
    ) -> Collection:
        """Open a database directory and load (or rebuild) its indexes.

        Args:
            encoder: the identity of the encoder the caller will use; None for readers that take
                whatever the database was built with. Writers record it on first use.
            writable: the caller holds the writer lock and may save generations.
            index_spec: a FAISS factory string ("IVF4096,Flat", "HNSW32"...) that overrides the
                choice by size, remembered in the database; "auto" returns to the choice by size;
                None keeps what the database has.
            device: "cpu", "cuda", or None for CUDA when torch sees one.
            defer_rebuild: a reader whose indexes need rebuilding opens at once, status 'rebuilding'
                (searches raise IndexRebuildingError), and leaves the rebuild to `finish_rebuild()`.
            backend: keyword arguments a subclass's constructor takes (MilvusCollection: its client).

        Raises:
            EncoderMismatchError: the database was built with a different encoder.
            StoreError, DatabaseCorruptError: the database cannot be opened.
        """
        db_dir = Path(db_dir).absolute()
        if writable:
            db_dir.mkdir(parents=True, exist_ok=True)
            (db_dir / INDEX_DIR).mkdir(exist_ok=True)
        store = Store.open(db_dir / STORE_NAME, readonly=not writable)
        try:
            stored = _stored_identity(store)
            if stored is None and encoder is None:
                raise StoreError(f"collection {db_dir} is empty: index a folder into it first")
            if stored is not None and encoder is not None:
                _check_identity(stored, encoder, db_dir)
            if stored is None:
                store.set_meta({"encoder_spec": encoder.spec, "encoder_fingerprint": encoder.fingerprint,
                                "dim": str(encoder.dim)})
            identity = stored or encoder
            spec = remember_spec(store, index_spec, identity.dim) if writable else store.get_meta(INDEX_SPEC_KEY)
            collection = cls(db_dir, store, identity, spec or None, resolve_device(device), **backend)
            collection.load_indexes(repair=writable, defer=defer_rebuild and not writable)
        except BaseException:
            store.close()
            raise
        return collection

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- loading and rebuilding

    def load_indexes(self, repair: bool, defer: bool = False) -> LoadStatus:
        """Load the current generation, or rebuild from the store when it is missing, corrupt or stale.

        A reader that finds a stale index while a writer holds the lock keeps the old generation
        (the writer will save a newer one); with no writer alive it rebuilds in memory and, if it
        can take the lock itself, saves the repaired generation for everyone. With `defer`, a reader
        leaves that rebuild to `finish_rebuild()` and reports 'rebuilding' until then.
        """
        manifest = load_manifest(self.db_dir)
        version = self.store.store_version
        reason = ""
        if manifest is None:
            reason = "no index files yet" if version == 0 else "manifest missing or unreadable"
        elif manifest.encoder.fingerprint != self.encoder.fingerprint:
            reason = "manifest names another encoder"
        else:
            try:
                indexes = self._read_generation(manifest)
            except (IndexCorruptError, OSError, RuntimeError) as error:
                reason = f"index files unusable ({error})"
            else:
                if manifest.store_version == version:
                    self._install(indexes, manifest.generation, manifest.store_version)
                    self.status = LoadStatus("loaded")
                    return self.status
                if is_locked(self.db_dir) and not repair:
                    self._install(indexes, manifest.generation, manifest.store_version)
                    self.status = LoadStatus("stale", WRITER_WORKING)
                    return self.status
                reason = f"store changed since generation {manifest.generation} was saved"
        if manifest is not None and not repair:
            self._unusable.add(manifest.generation)  # the rebuild supersedes it: refresh must not load it
        if defer and not repair:
            self.status = LoadStatus("rebuilding", f"{reason}; {REBUILDING}")
            return self.status
        return self._rebuild_and_save(reason, repair)

    def finish_rebuild(self) -> LoadStatus:
        """Run the rebuild `defer_rebuild` left pending (blocking: a server calls it from a background
        thread); a no-op when none is. Raises DatabaseCorruptError, StoreError (status 'unavailable')."""
        if self.status.state != "rebuilding":
            return self.status
        reason = self.status.reason.removesuffix(f"; {REBUILDING}")
        try:
            return self._rebuild_and_save(reason, repair=False)
        except BaseException as error:
            self.status = LoadStatus("unavailable", f"{reason}; rebuilding from the store failed: {error}")
            raise

    def _rebuild_and_save(self, reason: str, repair: bool) -> LoadStatus:
        version = self.store.store_version
        self.rebuild()
        status = LoadStatus("rebuilt", reason)
        if version and not repair:
            status = self._save_if_unlocked(status)
        elif version and repair:
            self.save_generation()  # a writer reports a failed save: its run stops, the old generation stays
        self.status = status  # only now: a server's /health turns ok once the repair is saved, never flaps
        return status

    def _read_generation(self, manifest: Manifest) -> dict[str, VectorIndex]:
        indexes = {}
        for modality in MODALITIES:
            entry = manifest.indexes.get(modality)
            if entry is None:
                raise IndexCorruptError(f"manifest has no {modality} index")
            path = self.db_dir / INDEX_DIR / entry.file
            if sha256_file(path) != entry.sha256:
                raise IndexCorruptError(f"{path.name} does not match its checksum")
            index = VectorIndex.load(path, entry.spec, entry.search_parameter)
            if index.count != entry.count or index.dim != self.encoder.dim:
                raise IndexCorruptError(f"{path.name} holds {index.count} vectors, manifest says {entry.count}")
            self.tuning[modality] = (entry.search_parameter, entry.recall, entry.tuned_count)
            self._attach_gpu(index)
            indexes[modality] = index
        return indexes

    def _attach_gpu(self, index: VectorIndex) -> None:
        if self.device.startswith("cuda"):
            index.attach_gpu(self.device)

    def spec_for(self, count: int, current: str | None = None) -> str:
        """The spec an index of `count` vectors should have: the user's, or by size (`current` is
        the spec it has, so a size near a boundary does not flip it back and forth)."""
        from index.ann import next_spec

        if self.index_spec:
            return self.index_spec
        return next_spec(count, self.encoder.dim, current, gpu=self.device.startswith("cuda"),
                         memory_bytes=_memory_budget())

    def rebuild(self) -> None:
        """Rebuild every index in memory from the vectors in the store."""
        version = self.store.store_version
        counts = self.store.counts()
        indexes = {modality: self._build(modality, self.spec_for(counts[modality]["vectors"]))
                   for modality in MODALITIES}
        self._install(indexes, self.generation, version)

    def _build(self, modality: str, spec: str) -> VectorIndex:
        """A modality's index of `spec` from the stored vectors: trained on a sample, filled, and
        (approximate specs) tuned to recall@10 >= 0.95 on the collection's own vectors."""
        from index.ann import exact_neighbours, min_training, training_sample

        dim = self.encoder.dim
        training = None
        sample = training_sample(spec)
        if sample:
            training = self.store.sample_item_vectors(modality, dim, sample, seed=1)
            if len(training) < min_training(spec):
                spec = "IDMap2,Flat"  # too few vectors to train on: exact is both possible and cheap
                training = None
        index = VectorIndex.build(dim, spec, training)

        def filling():  # adds each chunk as it passes: the tuning truth needs no second read
            for ids, vectors in self.store.iter_vectors(modality, dim):
                index.add(ids, vectors)
                yield ids, vectors

        if index.exact:
            for _chunk in filling():
                pass
            self.tuning[modality] = ("", None, 0)
        else:
            queries = self._tuning_queries(modality)
            self.tuning[modality] = self._tune(index, queries, exact_neighbours(filling(), queries, 11))
        self._attach_gpu(index)
        return index

    def _tuning_queries(self, modality: str) -> np.ndarray:
        return self.store.sample_item_vectors(modality, self.encoder.dim, TUNING_QUERIES, seed=2)

    def _retune(self, modality: str, index: VectorIndex) -> tuple[str, float | None, int]:
        from index.ann import exact_neighbours

        queries = self._tuning_queries(modality)
        return self._tune(index, queries, exact_neighbours(self.store.iter_vectors(modality, self.encoder.dim),
                                                           queries, 11))

    def _tune(self, index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> tuple[str, float | None, int]:
        """Tune an approximate index on stored vectors used as queries (`truth`: their exact 11
        nearest, themselves first), each one's own match left out (it would be found trivially
        and flatter the recall)."""
        from index.ann import tune

        if index.count == 0:
            return "", None, 0
        result = tune(index.raw, index.spec, queries, truth, 10, exclude_self=True)
        if result.parameter:
            index.set_search_parameter(f"{result.parameter}={result.value}")
        return index.search_parameter, result.recall, index.count

    def _install(self, indexes: dict[str, VectorIndex], generation: int, version: int) -> None:
        with self._swap_lock:
            self.indexes = indexes
            self.generation = generation
            self.built_from_version = version

    def _save_if_unlocked(self, rebuilt: LoadStatus) -> LoadStatus:
        """Save a reader's repair for everyone when no writer runs; the status it earns. A save that
        fails (disk full, I/O error) earns 'unsaved': the reader searches its in-memory rebuild, and a
        server reports itself degraded, since the next start must rebuild again."""
        lock = WriterLock(self.db_dir)
        try:
            lock.acquire()
        except (StoreError, OSError):
            return rebuilt  # read-only directory or a writer appeared: keep the in-memory rebuild
        try:
            self.save_generation()
        except (StoreError, OSError) as error:
            return LoadStatus("unsaved", f"{rebuilt.reason}; rebuilt in memory, saving failed: {error}")
        finally:
            lock.release()
        return rebuilt

    # ---------------------------------------------------------------- writing

    def apply(self, changes: VectorChanges) -> None:
        """Bring the in-memory indexes in step with a committed store transaction."""
        for modality in MODALITIES:
            index = self.indexes[modality]
            index.remove(changes.removed_ids[modality])
            ids, vectors = changes.added(modality, self.encoder.dim)
            index.add(ids, vectors)
        self.built_from_version = self.store.store_version

    def save_generation(self) -> Manifest:
        """Write the in-memory indexes as a new generation and make it current (atomically)."""
        previous = load_manifest(self.db_dir)
        # Also past any generation file still on disk: after a lost manifest, numbering must not
        # restart at 1, or running readers (which load only newer generations) would miss it.
        on_disk = (number for number, _path in self._generation_files())
        generation = max(self.generation, previous.generation if previous else 0, *on_disk) + 1
        self._respec()
        entries = {}
        for modality, index in self.indexes.items():
            name = f"{modality}.{generation:06d}.faiss"
            path = self.db_dir / INDEX_DIR / name
            index.save(path)
            parameter, recall, tuned_count = self.tuning.get(modality, ("", None, 0))
            entries[modality] = IndexFile(modality, index.spec, name, index.count, sha256_file(path),
                                          path.stat().st_size, parameter, recall, tuned_count)
        manifest = Manifest(self.encoder, generation, self.built_from_version, entries)
        save_manifest(self.db_dir, manifest)
        self.generation = generation
        self._prune(keep={generation, previous.generation if previous else generation})
        return manifest

    def needs_respec(self) -> bool:
        """True when some index should change type (its size moved on, or the user's spec changed):
        the next `save_generation` rebuilds it, even if no file changed."""
        return any(self.spec_for(index.count, index.spec) != index.spec for index in self.indexes.values())

    def _respec(self) -> None:
        """Rebuild, from the store, each index whose spec no longer suits its size (Flat grown past
        the exact limit, an inverted file whose list count should double) or the user's choice.
        Specs change only when a collection grows or shrinks severalfold, so the cost is amortised."""
        for modality, index in list(self.indexes.items()):
            spec = self.spec_for(index.count, index.spec)
            if spec != index.spec:
                rebuilt = self._build(modality, spec)
                with self._swap_lock:
                    self.indexes = {**self.indexes, modality: rebuilt}
            elif not index.exact and index.count >= 2 * self.tuning.get(modality, ("", None, 0))[2]:
                # Tuned when it was half this size (or empty): the effort that reached the target
                # then may fall short now, so it is measured again (amortised like a rebuild).
                self.tuning[modality] = self._retune(modality, index)

    def _generation_files(self):
        """(generation number, path) of every `MODALITY.NNNNNN.faiss` file on disk."""
        for path in (self.db_dir / INDEX_DIR).glob("*.faiss"):
            parts = path.name.split(".")
            if len(parts) == 3 and parts[1].isdigit():
                yield int(parts[1]), path

    def _prune(self, keep: set[int]) -> None:
        for number, path in list(self._generation_files()):
            if number not in keep:
                path.unlink(missing_ok=True)
        for path in (self.db_dir / INDEX_DIR).glob(".*.tmp"):
            path.unlink(missing_ok=True)  # left by a writer killed mid-save

    # ---------------------------------------------------------------- reading

    def refresh(self) -> bool:
        """Load a newer generation if a writer saved one; in-flight searches finish on the old.

        A newer generation that fails its checksums is rebuilt from the store instead (while the
        old one keeps answering, the status is 'degraded'), once per damaged generation.
        """
        manifest = load_manifest(self.db_dir)
        if manifest is None or manifest.generation <= self.generation or manifest.generation in self._unusable:
            return False
        try:
            indexes = self._read_generation(manifest)
        except (IndexCorruptError, OSError, RuntimeError) as error:
            self._unusable.add(manifest.generation)
            reason = f"generation {manifest.generation} unusable ({error})"
            self.status = LoadStatus("degraded", f"{reason}; rebuilding from the store, "
                                                 f"searching generation {self.generation} meanwhile")
            self.rebuild()
            self.status = self._save_if_unlocked(LoadStatus("rebuilt", reason))
            return True
        self._install(indexes, manifest.generation, manifest.store_version)
        current = manifest.store_version == self.store.store_version
        self.status = LoadStatus("loaded") if current else LoadStatus("stale", WRITER_WORKING)
        return True

    def count(self, modality: str) -> int:
        """Vectors held for one modality (audio: pooled and window vectors)."""
        return self._index(modality).count

    def _index(self, modality: str) -> VectorIndex:
        """Raises IndexRebuildingError while no index is in place (a deferred rebuild runs or failed)."""
        index = self.indexes.get(modality)  # one reference read: a concurrent swap cannot tear it
        if index is None:
            raise IndexRebuildingError("the index is being rebuilt from the store; try again shortly")
        return index

    def search(self, modality: str, queries, k: int, where: SearchFilter | None = None):
        """(scores (m, k'), vector ids (m, k')) from one modality's index, best first, k' <= k; ids
        are -1 where fewer than k' vectors pass.

        `where` is applied inside the search: the index is asked only about vectors whose items
        pass it, so a filter leaving j >= k vectors still yields k results.
        """
        index = self._index(modality)
        if where is None or where.empty:
            return index.search(queries, k)
        return index.search(queries, k, allowed=self._allowed(modality, where, index))

    def _allowed(self, modality: str, where: SearchFilter, index: VectorIndex) -> np.ndarray:
        """The vector ids passing `where`, from the store once per filter and index state: the
        engine asks again as it widens a search, and a server's page repeats its filters."""
        version = self.built_from_version
        with self._allowed_lock:
            cached = self._allowed_cache.get((modality, where))
            if cached is not None and cached[0]() is index and cached[1] == version:
                return cached[2]
        allowed = self.store.vector_ids_where(modality, where)
        with self._allowed_lock:
            self._allowed_cache[(modality, where)] = (weakref.ref(index), version, allowed)
            while len(self._allowed_cache) > ALLOWED_CACHE:
                self._allowed_cache.pop(next(iter(self._allowed_cache)))  # the oldest
        return allowed
