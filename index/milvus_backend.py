"""A collection whose vectors are searched in Milvus, with the SQLite store as its local ledger.

    LEDGER/xmodal.sqlite3      items, vectors, error ledger: the source of truth, as for FAISS
    LEDGER/manifest.json       what Milvus was last synced from (for `xmodal info` and the API)
    LEDGER/writer.lock         the one writer
    Milvus NAME_image          one row per vector: id (INT64 primary key = the store's vectors.id),
    Milvus NAME_audio            item_id, path, format, mtime_ns (searchable metadata), vector (IP)
    Milvus NAME_xmodal         one row: the ledger id, store version and encoder Milvus is in step with

Where LEDGER is and what NAME is follow from `--db` (index/backends.py). Every write is an upsert or
delete by vector id, so replaying one is harmless: a batch interrupted midway and written again
leaves no duplicates. After each committed store transaction the writer applies its changes and
then records the store version in NAME_xmodal; a writer killed in between leaves that record
behind the store, and the next open re-syncs Milvus from the stored vectors (upsert all, delete
ids the store no longer has) instead of trusting it. The record also names the ledger (a random
id kept in the store), so a Milvus collection last written from another ledger is never mistaken
for this one's, even when store versions happen to match.

Search uses an HNSW index (efSearch >= 256), the same code on milvus-lite and on a cluster;
filters become a Milvus boolean expression evaluated inside the search.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from index.backends import TARGET_KEY, MilvusTarget
from index.collection import Collection, LoadStatus
from index.errors import MilvusError, StoreError
from index.filters import SearchFilter
from index.lock import WriterLock, is_locked
from index.manifest import IndexFile, Manifest, save_manifest
from index.milvus_client import connect_milvus, load_pymilvus, milvus_filter, release_milvus, translated
from index.records import MODALITIES, VectorChanges

if TYPE_CHECKING:
    from index.manifest import EncoderIdentity
    from index.store import Store

STORE_ID_KEY = "ledger_id"  # store meta: tells this ledger's Milvus writes from another's
SYNC_KEY = "sync"
UPSERT_ROWS = 1000  # rows per upsert: 1000 x 512 floats is ~2 MB, far below gRPC's 64 MB message cap
DELETE_IDS = 10_000
MAX_TOPK = 16_384  # Milvus refuses a larger search limit
HNSW_BUILD = {"M": 32, "efConstruction": 256}
EF_SEARCH = 256  # recall@10 >= 0.99 against exact search on clustered data (tests/test_milvus.py)
_VECTOR_FIELDS = {"id", "item_id", "path", "format", "mtime_ns", "vector"}


class MilvusCollection(Collection):
    """The store plus one Milvus collection per modality (see the module docstring)."""

    def __init__(self, db_dir: Path, store: Store, encoder: EncoderIdentity, index_spec: str | None = None,
                 device: str = "cpu", *, target: MilvusTarget, client) -> None:
        super().__init__(db_dir, store, encoder, index_spec, device)
        self.target = target
        self.client = client
        self.names = {modality: f"{target.name}_{modality}" for modality in MODALITIES}
        self.meta_name = f"{target.name}_xmodal"
        self._counts = {modality: 0 for modality in MODALITIES}
        self._ready = False  # the Milvus collections exist, have this encoder's shape, and hold this ledger's ids

    @classmethod
    def open_target(cls, target: MilvusTarget, encoder: EncoderIdentity | None, *,
                    writable: bool) -> MilvusCollection:
        """Connect to Milvus, open the ledger, and bring Milvus in step with it (writers, or readers
        that can take the writer lock) or search what it holds (a writer is at work).

        Raises:
            MilvusError: pymilvus missing, server unreachable, a collection of that name not xmodal's.
            EncoderMismatchError, StoreError: as `Collection.open`.
        """
        client = connect_milvus(target)  # before the ledger: an unreachable server fails fast
        try:
            return cls.open(target.ledger_dir, encoder, writable=writable, target=target, client=client)
        except BaseException:
            release_milvus(target, client)
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            release_milvus(self.target, self.client)

    # ---------------------------------------------------------------- loading and re-syncing

    def load_indexes(self, repair: bool, defer: bool = False) -> LoadStatus:
        """Use Milvus as it is when it is in step with the store; otherwise re-sync it (a writer, or a
        reader when no writer is alive) or search what it holds meanwhile (a writer is at work).
        `defer` has no effect: the index lives on the Milvus server, nothing is rebuilt here."""
        with translated(self.target, "open its collections"):
            if repair:
                self._claim_ledger()
            self._ready = self._prepare(create=repair)
            version = self.store.store_version
            sync = self._read_sync() if self._ready else None
            reason = self._stale_reason(sync, version)
            if not reason:
                self._install_sync(version)
                self.status = LoadStatus("loaded")
            elif repair:
                self.rebuild()
                self.status = LoadStatus("rebuilt", reason)
            elif version and not is_locked(self.db_dir) and self._repair_under_lock():
                self.status = LoadStatus("rebuilt", reason)
            else:
                if sync is not None and self._same_ledger(sync):
                    self._install_sync(int(sync["store_version"]))
                else:
                    self._ready = False  # ids written from another ledger would name the wrong items
                self.status = LoadStatus("stale" if version else "empty", reason)
        return self.status

    def _claim_ledger(self) -> None:
        values = {}
        if self.store.get_meta(STORE_ID_KEY) is None:
            values[STORE_ID_KEY] = uuid.uuid4().hex
        if self.store.get_meta(TARGET_KEY) != self.target.record():
            values[TARGET_KEY] = self.target.record()
        if values:
            self.store.set_meta(values)

    def _prepare(self, create: bool) -> bool:
        """Check (and, with `create`, make) the three Milvus collections; False if some are missing.

        The sync collection is made first, so a vector collection without it is not xmodal's.
        """
        client = self.client
        if not client.has_collection(self.meta_name):
            foreign = [name for name in self.names.values() if client.has_collection(name)]
            if foreign:
                raise MilvusError(f"Milvus collection {foreign[0]} exists but was not made by xmodal "
                                  f"(no {self.meta_name} beside it); choose another collection name")
            if not create:
                return False
            self._create_sync_collection()
        for name in self.names.values():
            if client.has_collection(name):
                if self._shape_matches(name):
                    client.load_collection(name)  # a server releases collections on restart
                    continue
                if not create:
                    raise MilvusError(f"Milvus collection {name} holds vectors of another shape; "
                                      f"run `xmodal index` on this collection to rebuild it")
                client.drop_collection(name)  # xmodal's own cache of another encoder: rebuilt below
            elif not create:
                return False
            self._create_vector_collection(name)
        client.load_collection(self.meta_name)
        return True

    def _shape_matches(self, name: str) -> bool:
        fields = self.client.describe_collection(name)["fields"]
        dims = [int(field["params"].get("dim", 0)) for field in fields if field["name"] == "vector"]
        return {field["name"] for field in fields} == _VECTOR_FIELDS and dims == [self.encoder.dim]

    def _create_vector_collection(self, name: str) -> None:
        pymilvus = load_pymilvus()
        types = pymilvus.DataType
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", types.INT64, is_primary=True)  # the store's vectors.id: upserts are idempotent
        schema.add_field("item_id", types.INT64)
        schema.add_field("path", types.VARCHAR, max_length=65_535)
        schema.add_field("format", types.VARCHAR, max_length=64)
        schema.add_field("mtime_ns", types.INT64)
        schema.add_field("vector", types.FLOAT_VECTOR, dim=self.encoder.dim)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="HNSW", metric_type="IP", params=HNSW_BUILD)
        # Strong: a search right after `xmodal index` sees everything it wrote.
        self.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")

    def _create_sync_collection(self) -> None:
        pymilvus = load_pymilvus()
        types = pymilvus.DataType
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", types.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("value", types.VARCHAR, max_length=4096)
        schema.add_field("vector", types.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field; unused
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.meta_name, schema=schema, index_params=index, consistency_level="Strong")

    def _read_sync(self) -> dict | None:
        rows = self.client.query(self.meta_name, filter=f'key == "{SYNC_KEY}"', output_fields=["value"])
        return json.loads(rows[0]["value"]) if rows else None

    def _same_ledger(self, sync: dict) -> bool:
        return (sync.get("ledger") == self.store.get_meta(STORE_ID_KEY)
                and sync.get("fingerprint") == self.encoder.fingerprint)

    def _stale_reason(self, sync: dict | None, version: int) -> str:
        if not self._ready:
            return "the Milvus collections do not exist yet"
        if sync is None:
            return "Milvus holds no record of what it was synced from"
        if not self._same_ledger(sync):
            return "Milvus was last written from another ledger or encoder"
        if int(sync["store_version"]) != version:
            return f"the store moved on since Milvus was synced (version {sync['store_version']}, store {version})"
        return ""

    def _repair_under_lock(self) -> bool:
        lock = WriterLock(self.db_dir)
        try:
            lock.acquire()
        except (StoreError, OSError):
            return False  # read-only ledger, or a writer appeared: it will bring Milvus in step
        try:
            self.rebuild()
        finally:
            lock.release()
        return True

    def rebuild(self) -> None:
        """Re-sync Milvus from the stored vectors: upsert every one, delete the ids the store lacks."""
        with translated(self.target, "re-sync from the store"):
            if not self._ready:
                self._ready = self._prepare(create=True)
            version = self.store.store_version
            for modality in MODALITIES:
                kept: set[int] = set()
                for ids, vectors in self.store.iter_vectors(modality, self.encoder.dim):
                    self._upsert(modality, ids, vectors)
                    kept.update(ids.tolist())
                if self._count_rows(self.names[modality]):  # listing ids costs a scan; a new collection has none
                    self._delete(modality, [i for i in self._milvus_ids(modality) if i not in kept])
            self._mark_synced(version)

    # ---------------------------------------------------------------- writing

    def apply(self, changes: VectorChanges) -> None:
        """Write a committed store transaction to Milvus, then record the store version it reached."""
        version = self.store.store_version
        if self.built_from_version != version - (0 if changes.empty else 1):
            self.rebuild()  # a commit before this one never reached Milvus: only a full re-sync is safe
            return
        with translated(self.target, "write vectors"):
            for modality in MODALITIES:
                ids, vectors = changes.added(modality, self.encoder.dim)
                self._delete(modality, changes.removed_ids[modality])
                self._upsert(modality, ids, vectors)
                done = set(ids.tolist()) | set(changes.removed_ids[modality])
                self._rewrite_metadata(modality, [i for i in changes.moved_ids[modality] if i not in done])
            self._mark_synced(version)

    def _rewrite_metadata(self, modality: str, ids: list[int]) -> None:
        """Upsert moved vectors again with their item's new path and mtime; the vectors come from
        Milvus itself (an upsert replaces whole rows, and partial updates need Milvus 2.6)."""
        if not ids:
            return
        rows = self.client.get(self.names[modality], ids=ids, output_fields=["vector"])
        if rows:
            found = np.asarray([int(row["id"]) for row in rows], dtype=np.int64)
            self._upsert(modality, found, np.asarray([row["vector"] for row in rows], dtype=np.float32))

    def _upsert(self, modality: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        resolved = self.store.resolve_vectors(ids.tolist())
        rows = []
        for vector_id, vector in zip(ids.tolist(), vectors, strict=True):
            found = resolved.get(vector_id)
            if found is None:
                continue  # removed by a later commit, whose own changes delete it
            item = found.item
            rows.append({"id": vector_id, "item_id": item.id, "path": item.path, "format": item.format,
                         "mtime_ns": item.mtime_ns, "vector": vector.tolist()})
        for start in range(0, len(rows), UPSERT_ROWS):
            self.client.upsert(self.names[modality], rows[start : start + UPSERT_ROWS])

    def _delete(self, modality: str, ids: list[int]) -> None:
        for start in range(0, len(ids), DELETE_IDS):
            self.client.delete(self.names[modality], ids=ids[start : start + DELETE_IDS])

    def _milvus_ids(self, modality: str) -> list[int]:
        iterator = self.client.query_iterator(self.names[modality], batch_size=DELETE_IDS, filter="",
                                              output_fields=["id"])
        ids: list[int] = []
        try:
            while batch := iterator.next():
                ids.extend(int(row["id"]) for row in batch)
        finally:
            iterator.close()
        return ids

    def _mark_synced(self, version: int) -> None:
        value = json.dumps({"ledger": self.store.get_meta(STORE_ID_KEY), "store_version": version,
                            "fingerprint": self.encoder.fingerprint, "dim": self.encoder.dim})
        self.client.upsert(self.meta_name, [{"key": SYNC_KEY, "value": value, "vector": [1.0, 0.0]}])
        self._install_sync(version)

    def _install_sync(self, version: int) -> None:
        counts = {modality: self._count_rows(name) for modality, name in self.names.items()}
        with self._swap_lock:
            self._counts = counts
            # Milvus has no generations of files: the synced store version names its state, and
            # changes whenever what a search sees may have changed (the judge redraws on it).
            self.generation = version
            self.built_from_version = version

    def _count_rows(self, name: str) -> int:
        return int(self.client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def save_generation(self) -> Manifest:
        """Flush Milvus (sealed segments get their HNSW index) and write the ledger's manifest, which
        says what Milvus was synced from. Applied batches are already searchable before this."""
        if self._ready:
            with translated(self.target, "flush"):
                for name in self.names.values():
                    self.client.flush(name)
        entries = {modality: IndexFile(modality=modality, spec="milvus:HNSW", file=name,
                                       count=self._counts[modality], sha256="", bytes=0,
                                       search_parameter=f"ef={EF_SEARCH}")
                   for modality, name in self.names.items()}
        manifest = Manifest(self.encoder, self.generation, self.built_from_version, entries)
        save_manifest(self.db_dir, manifest)
        return manifest

    # ---------------------------------------------------------------- reading

    def refresh(self) -> bool:
        """Take up what a writer synced since the last look (counts, generation); False if nothing."""
        try:
            with translated(self.target, "read its sync record"):
                if not self._ready:
                    self._ready = self._prepare(create=False)
                sync = self._read_sync() if self._ready else None
                if sync is None or not self._same_ledger(sync) or int(sync["store_version"]) == self.generation:
                    return False
                self._install_sync(int(sync["store_version"]))
        except MilvusError:
            return False  # a server hiccup: keep serving, look again next time
        if self.built_from_version == self.store.store_version:
            self.status = LoadStatus("loaded")
        return True

    def count(self, modality: str) -> int:
        """Vectors held for one modality, as of the last sync this collection saw."""
        return self._counts[modality] if self._ready else 0

    def search(self, modality: str, queries, k: int, where: SearchFilter | None = None):
        """(scores (m, k'), vector ids (m, k')), best first, as `Collection.search`; k' is also capped
        at Milvus's largest limit (16384). The filter is evaluated inside Milvus's search."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.encoder.dim:
            raise ValueError(f"queries must have shape (m, {self.encoder.dim}), got {queries.shape}")
        m = len(queries)
        total = self.count(modality)
        if total == 0:
            return np.full((m, 1), -np.inf, dtype=np.float32), np.full((m, 1), -1, dtype=np.int64)
        limit = max(1, min(k, total, MAX_TOPK))
        expression = "" if where is None or where.empty else milvus_filter(where)
        with translated(self.target, "search"):
            found = self.client.search(self.names[modality], data=queries.tolist(), limit=limit, filter=expression,
                                       output_fields=["id"],
                                       search_params={"metric_type": "IP", "params": {"ef": max(limit, EF_SEARCH)}})
        scores = np.full((m, limit), -np.inf, dtype=np.float32)  # (m, k')
        ids = np.full((m, limit), -1, dtype=np.int64)  # (m, k')
        for row, hits in enumerate(found):
            for column, hit in enumerate(list(hits)[:limit]):
                scores[row, column] = hit["distance"]
                ids[row, column] = hit["id"]
        return scores, ids
