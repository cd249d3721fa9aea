"""The SQLite store: the source of truth for items, their vectors and the error ledger.

WAL mode lets readers keep searching the last committed state while one writer works; every write
goes through `Store.write()`, one `BEGIN IMMEDIATE` transaction that also bumps `store_version`,
which is how index caches know whether they are stale.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index.errors import DatabaseCorruptError, StorageFullError, StoreError
from index.filters import SearchFilter
from index.records import (
    ErrorRecord,
    FileState,
    ItemRecord,
    MediaInfo,
    NewVector,
    ResolvedVector,
    VectorChanges,
)
from index.schema import MIGRATIONS, SCHEMA_VERSION

_ITEM_COLUMNS = (
    "id, path, modality, format, size, mtime_ns, content_hash, width, height, duration, "
    "sample_rate, channels, indexed_at"
)
# What putting a file writes into its item row, besides its path (and its id, when new).
_CONTENT_COLUMNS = ("modality", "format", "size", "mtime_ns", "content_hash", "width", "height", "duration",
                    "sample_rate", "channels", "indexed_at")
_BUSY_TIMEOUT_MS = 10_000
# SQLite caps bound parameters per statement (32766 since 3.32); stay well below it.
_MAX_PARAMS = 900


def _item(row: tuple) -> ItemRecord:
    return ItemRecord(*row)


def _blob(embedding: np.ndarray) -> bytes:
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def _chunks(values: list, size: int = _MAX_PARAMS) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _execute_in(conn: sqlite3.Connection, sql: str, values: list) -> list[tuple]:
    """`sql` run once per chunk of `values`, its `{marks}` replaced by that many placeholders (an
    `IN` list within SQLite's parameter cap): the rows of every chunk, in chunk order."""
    rows: list[tuple] = []
    for chunk in _chunks(values):
        rows.extend(conn.execute(sql.replace("{marks}", ",".join("?" * len(chunk))), chunk))
    return rows


def _translate(error: sqlite3.Error, path: Path) -> Exception:
    text = str(error)
    if isinstance(error, sqlite3.OperationalError) and "full" in text:
        return StorageFullError(f"disk full while writing {path}: {text}")
    if isinstance(error, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return DatabaseCorruptError(
            f"{path} is damaged ({text}). It holds the collection and is never rebuilt silently: "
            f"restore it from a backup, or move it away and index the folders again"
        )
    return StoreError(f"database error in {path}: {text}")


class Store:
    """One SQLite database file. Thread-safe: calls are serialised by a lock."""

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._conn = connection
        self._lock = threading.RLock()
        self.path = path
        self.readonly = readonly

    @classmethod
    def open(cls, path: Path, readonly: bool = False) -> Store:
        """Open (and for writers create and migrate) the database at `path`.

        Raises:
            StoreError: a reader asked for a database that does not exist.
            DatabaseCorruptError: the file is not a usable SQLite database.
        """
        path = Path(path)
        if readonly and not path.exists():
            raise StoreError(f"no collection at {path.parent} (run `xmodal index FOLDER --db {path.parent}` first)")
        # as_uri() percent-escapes the path: a folder named "photos #2" must not become "photos ".
        uri = path.absolute().as_uri() + ("?mode=ro" if readonly else "")
        conn = None
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a committed batch survives power loss, not only a killed process.
                conn.execute("PRAGMA synchronous = FULL")
            store = cls(conn, path, readonly)
            store._migrate()
        except BaseException as error:
            if conn is not None:
                conn.close()
            if isinstance(error, sqlite3.Error):
                raise _translate(error, path) from error
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """The lock, with SQLite's errors turned into this package's: a page found damaged in the
        middle of a read is a DatabaseCorruptError with recovery advice (never a traceback, and
        never an index rebuilt from what could still be read)."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as error:
                raise _translate(error, self.path) from error

    # ---------------------------------------------------------------- schema and meta

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this xmodal ({SCHEMA_VERSION}); upgrade xmodal"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly and version == 0:  # created by a writer killed before its first commit
            raise StoreError(f"no collection at {self.path.parent} yet (run `xmodal index FOLDER --db "
                             f"{self.path.parent}` first)")
        if self.readonly:
            raise StoreError(f"{self.path} needs a schema upgrade; run `xmodal index` on it once")
        for number in range(version, SCHEMA_VERSION):
            seed = "INSERT INTO meta (key, value) VALUES ('store_version', '0');" if number == 0 else ""
            try:
                # One script inside one transaction: a migration applies entirely or not at all.
                self._conn.executescript(
                    f"BEGIN IMMEDIATE; {MIGRATIONS[number]} {seed} PRAGMA user_version = {number + 1}; COMMIT;"
                )
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def get_meta(self, key: str) -> str | None:
        with self._reading():
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def store_version(self) -> int:
        """Bumped by every commit that adds, removes or moves vectors; an index built at another is stale."""
        return int(self.get_meta("store_version") or 0)

    # ---------------------------------------------------------------- writes

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """One atomic write transaction; its `changes` are valid once the block exits cleanly.

        Raises:
            StorageFullError: the disk is full; nothing of this transaction was kept.
        """
        if self.readonly:
            raise StoreError("this store was opened read-only")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                transaction = Transaction(self._conn)
                try:
                    yield transaction
                    if not transaction.changes.empty:  # only vector changes make an index stale
                        self._conn.execute(
                            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'store_version'"
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise _translate(error, self.path) from error

    def set_meta(self, values: dict[str, str]) -> None:
        with self.write() as transaction:
            transaction.set_meta(values)

    # ---------------------------------------------------------------- reads

    def items_under(self, roots: Iterable[str]) -> dict[str, ItemRecord]:
        """Every item whose path is a root or lies below one, by path."""
        found: dict[str, ItemRecord] = {}
        with self._reading():
            for root in roots:
                prefix = root.rstrip("/") + "/"
                # A range on the binary collation is a prefix match without LIKE's wildcards:
                # '0' is the character after '/', so [prefix, prefix-with-'0') holds the subtree.
                rows = self._conn.execute(
                    f"SELECT {_ITEM_COLUMNS} FROM items WHERE path = ? OR (path >= ? AND path < ?)",
                    (root, prefix, prefix[:-1] + "0"),
                )
                found.update((row[1], _item(row)) for row in rows)
        return found

    def items_by_hash(self, content_hashes: Iterable[str]) -> dict[str, ItemRecord]:
        """The first stored item (lowest id) with each of these contents, by hash; absent: none."""
        found: dict[str, ItemRecord] = {}
        with self._reading():
            rows = _execute_in(self._conn, f"SELECT {_ITEM_COLUMNS} FROM items WHERE content_hash IN ({{marks}}) "
                                           "ORDER BY id", list(content_hashes))
        for row in rows:
            item = _item(row)
            found.setdefault(item.content_hash, item)
        return found

    def get_item(self, item_id: int) -> ItemRecord | None:
        with self._reading():
            row = self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def item_vector(self, item_id: int, dim: int) -> np.ndarray | None:
        """The item's own vector (the pooled one for a sound), or None if the item is gone."""
        with self._reading():
            row = self._conn.execute(
                "SELECT embedding FROM vectors WHERE item_id = ? AND kind = 'item' ORDER BY id LIMIT 1", (item_id,)
            ).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[0], dtype="<f4").reshape(dim).astype(np.float32)

    def sample_item_vectors(self, modality: str, dim: int, size: int, seed: int = 0) -> np.ndarray:
        """Up to `size` item vectors (n, dim) of one modality (sounds: their pooled vectors), drawn
        without replacement, seeded: the background a query's scores are standardised against."""
        with self._reading():
            ids = [row[0] for row in self._conn.execute(
                "SELECT v.id FROM vectors v JOIN items i ON i.id = v.item_id "
                "WHERE i.modality = ? AND v.kind = 'item' ORDER BY v.id", (modality,))]
        if len(ids) > size:
            ids = sorted(np.random.default_rng(seed).choice(ids, size, replace=False).tolist())
        blobs = []
        with self._reading():
            blobs.extend(row[0] for row in _execute_in(
                self._conn, "SELECT embedding FROM vectors WHERE id IN ({marks}) ORDER BY id", ids))
        if not blobs:
            return np.zeros((0, dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)

    def resolve_vectors(self, vector_ids: Iterable[int]) -> dict[int, ResolvedVector]:
        """Map FAISS ids to their items in one join; ids of deleted vectors are simply absent."""
        ids = [int(i) for i in vector_ids if i >= 0]
        resolved: dict[int, ResolvedVector] = {}
        columns = ", ".join(f"i.{name.strip()}" for name in _ITEM_COLUMNS.split(","))
        with self._reading():
            rows = _execute_in(self._conn, f"SELECT v.id, v.kind, v.start, v.end, {columns} FROM vectors v "
                                           "JOIN items i ON i.id = v.item_id WHERE v.id IN ({marks})", ids)
        for row in rows:
            resolved[row[0]] = ResolvedVector(row[0], _item(row[4:]), row[1], row[2], row[3])
        return resolved

    def iter_vectors(self, modality: str, dim: int, chunk_rows: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids (n,) int64, vectors (n, dim) float32) of one modality, in id order."""
        last_id = -1
        while True:
            with self._reading():
                rows = self._conn.execute(
                    "SELECT v.id, v.embedding FROM vectors v JOIN items i ON i.id = v.item_id "
                    "WHERE i.modality = ? AND v.id > ? ORDER BY v.id LIMIT ?",
                    (modality, last_id, chunk_rows),
                ).fetchall()
            if not rows:
                return
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), dim)
            last_id = int(ids[-1])
            yield ids, vectors.astype(np.float32, copy=False)

    def vector_ids_where(self, modality: str, where: SearchFilter) -> np.ndarray:
        """Sorted ids (int64) of the vectors of `modality` whose items pass `where`."""
        clause, params = where.sql("i")
        with self._reading():
            rows = self._conn.execute(
                f"SELECT v.id FROM vectors v JOIN items i ON i.id = v.item_id WHERE i.modality = ? AND {clause} "
                "ORDER BY v.id", (modality, *params)).fetchall()
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def vector_ids(self, modality: str) -> np.ndarray:
        return self.vector_ids_where(modality, SearchFilter())

    def counts(self) -> dict[str, dict[str, int]]:
        """Items and vectors per modality."""
        result = {m: {"items": 0, "vectors": 0} for m in ("image", "audio")}
        with self._reading():
            for modality, count in self._conn.execute("SELECT modality, COUNT(*) FROM items GROUP BY modality"):
                result[modality]["items"] = count
            rows = self._conn.execute(
                "SELECT i.modality, COUNT(*) FROM vectors v JOIN items i ON i.id = v.item_id GROUP BY i.modality"
            )
            for modality, count in rows:
                result[modality]["vectors"] = count
        return result

    def list_errors(self, error_class: str | None = None) -> list[ErrorRecord]:
        query = "SELECT path, error_class, message, first_seen, last_seen, seen_count FROM errors"
        params: tuple = ()
        if error_class:
            query += " WHERE error_class = ?"
            params = (error_class,)
        with self._reading():
            rows = self._conn.execute(query + " ORDER BY error_class, path", params).fetchall()
        return [ErrorRecord(*row) for row in rows]

    def error_count(self) -> int:
        with self._reading():
            return self._conn.execute("SELECT COUNT(*) FROM errors").fetchone()[0]

    def error_paths_under(self, roots: Iterable[str]) -> set[str]:
        paths: set[str] = set()
        with self._reading():
            for root in roots:
                prefix = root.rstrip("/") + "/"
                rows = self._conn.execute(
                    "SELECT path FROM errors WHERE path = ? OR (path >= ? AND path < ?)",
                    (root, prefix, prefix[:-1] + "0"),
                )
                paths.update(row[0] for row in rows)
        return paths


class Transaction:
    """The writes of one `Store.write()` block; collects the vector changes for the index caches."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.changes = VectorChanges()
        self._now = time.time()

    def set_meta(self, values: dict[str, str]) -> None:
        self._conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    def put_item(self, state: FileState, info: MediaInfo, vectors: list[NewVector]) -> int:
        """Insert the item at `state.path`, or replace its content and vectors if it exists."""
        row = self._conn.execute("SELECT id, modality FROM items WHERE path = ?", (state.path,)).fetchone()
        fields = self._content(state, info)
        if row is None:
            item_id = self._conn.execute(
                f"INSERT INTO items ({', '.join(_CONTENT_COLUMNS)}, path) VALUES ({','.join('?' * (len(fields) + 1))})",
                (*fields, state.path),
            ).lastrowid
        else:
            item_id, old_modality = row
            self._drop_vectors(item_id, old_modality)
            self._conn.execute(
                f"UPDATE items SET {', '.join(f'{column} = ?' for column in _CONTENT_COLUMNS)} WHERE id = ?",
                (*fields, item_id),
            )
        for vector in vectors:
            self._insert_vector(item_id, info.modality, vector)
        self._conn.execute("DELETE FROM errors WHERE path = ?", (state.path,))
        return item_id

    def put_items(self, entries: list[tuple[FileState, MediaInfo, list[NewVector]]]) -> None:
        """`put_item` for each entry in turn, with a handful of statements for the lot.

        Four statements a file were a third of the indexer's per-file time on the interpreter,
        which bounds indexing on a GPU (thousands of files a second). Files new to the store are
        inserted together, with ids taken from the counters
        AUTOINCREMENT keeps (the transaction is the only writer, and an id is never reused); a
        file replacing an item at its path, or named twice, takes the one-at-a-time road.
        """
        paths = [state.path for state, _, _ in entries]
        stored = _execute_in(self._conn, "SELECT path FROM items WHERE path IN ({marks})", paths)
        if stored or len(set(paths)) < len(paths):
            for entry in entries:
                self.put_item(*entry)
            return
        item_id, vector_id = self._next_id("items"), self._next_id("vectors")
        items, vectors = [], []
        for state, info, new_vectors in entries:
            items.append((item_id, *self._content(state, info), state.path))
            for vector in new_vectors:
                vectors.append((vector_id, item_id, vector.kind, vector.start, vector.end, _blob(vector.embedding)))
                self.changes.add(info.modality, vector_id, np.asarray(vector.embedding, dtype=np.float32))
                vector_id += 1
            item_id += 1
        self._insert_rows(f"items (id, {', '.join(_CONTENT_COLUMNS)}, path)", items)
        self._insert_rows("vectors (id, item_id, kind, start, end, embedding)", vectors)
        self.clear_errors(paths)

    def _content(self, state: FileState, info: MediaInfo) -> tuple:
        """The values of `_CONTENT_COLUMNS` for a file put now."""
        return (info.modality, info.format, state.size, state.mtime_ns, state.content_hash, info.width,
                info.height, info.duration, info.sample_rate, info.channels, self._now)

    def _insert_rows(self, table: str, rows: list[tuple]) -> None:
        """Rows inserted many to a statement. Not `executemany`: it gives up the GIL for every row,
        and while reading threads hold it each row then waits its turn to take it back."""
        width = len(rows[0]) if rows else 1
        for chunk in _chunks(rows, _MAX_PARAMS // width):
            values = ",".join([f"({','.join('?' * width)})"] * len(chunk))
            self._conn.execute(f"INSERT INTO {table} VALUES {values}", [value for row in chunk for value in row])

    def _next_id(self, table: str) -> int:
        """The id AUTOINCREMENT would give the next row of `table`: past every id it ever handed out."""
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        largest = self._conn.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0]
        return max(row[0] if row else 0, largest or 0) + 1

    def move_item(self, item_id: int, state: FileState) -> None:
        """Point an item at a new path or stat (a rename or a touch); its vectors stay as they are."""
        self._conn.execute(
            "UPDATE items SET path = ?, size = ?, mtime_ns = ?, content_hash = ? WHERE id = ?",
            (state.path, state.size, state.mtime_ns, state.content_hash, item_id),
        )
        self._conn.execute("DELETE FROM errors WHERE path = ?", (state.path,))
        row = self._conn.execute("SELECT modality FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is not None:  # Milvus keeps path and mtime beside the vectors: they must be rewritten
            ids = [r[0] for r in self._conn.execute("SELECT id FROM vectors WHERE item_id = ?", (item_id,))]
            self.changes.move(row[0], ids)

    def copy_item(self, source: ItemRecord, state: FileState) -> int:
        """Add a new item with the same content as `source`, reusing its vectors instead of encoding."""
        info = MediaInfo(
            source.modality, source.format, source.width, source.height, source.duration,
            source.sample_rate, source.channels,
        )
        rows = self._conn.execute(
            "SELECT kind, start, end, embedding FROM vectors WHERE item_id = ? ORDER BY id", (source.id,)
        ).fetchall()
        vectors = [NewVector(np.frombuffer(blob, dtype="<f4"), kind, start, end) for kind, start, end, blob in rows]
        return self.put_item(state, info, vectors)

    def delete_items(self, item_ids: Iterable[int]) -> None:
        for item_id in item_ids:
            row = self._conn.execute("SELECT modality FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                continue
            self._drop_vectors(item_id, row[0])
            self._conn.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def record_error(self, path: str, error_class: str, message: str) -> None:
        self._conn.execute(
            "INSERT INTO errors (path, error_class, message, first_seen, last_seen) VALUES (?,?,?,?,?) "
            "ON CONFLICT (path) DO UPDATE SET error_class = excluded.error_class, message = excluded.message, "
            "last_seen = excluded.last_seen, seen_count = seen_count + 1",
            (path, error_class, message, self._now, self._now),
        )

    def clear_errors(self, paths: Iterable[str]) -> None:
        _execute_in(self._conn, "DELETE FROM errors WHERE path IN ({marks})", list(paths))

    def _insert_vector(self, item_id: int, modality: str, vector: NewVector) -> None:
        vector_id = self._conn.execute(
            "INSERT INTO vectors (item_id, kind, start, end, embedding) VALUES (?,?,?,?,?)",
            (item_id, vector.kind, vector.start, vector.end, _blob(vector.embedding)),
        ).lastrowid
        self.changes.add(modality, vector_id, np.asarray(vector.embedding, dtype=np.float32))

    def _drop_vectors(self, item_id: int, modality: str) -> None:
        ids = [row[0] for row in self._conn.execute("SELECT id FROM vectors WHERE item_id = ?", (item_id,))]
        self._conn.execute("DELETE FROM vectors WHERE item_id = ?", (item_id,))
        self.changes.remove(modality, ids)
