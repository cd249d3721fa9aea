"""Typed errors of the index layer; `cli/` and `api/` translate them at the edge."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A problem with the database directory that stops the operation."""


class DatabaseLockedError(StoreError):
    """Another process holds the writer lock of this database directory."""

    def __init__(self, db_dir: str, pid: int | None) -> None:
        self.db_dir = db_dir
        self.pid = pid
        holder = f"PID {pid}" if pid else "another process"
        super().__init__(f"database {db_dir} is locked by {holder} (another `xmodal index` is writing)")


class DatabaseCorruptError(StoreError):
    """The SQLite file is damaged; it is never silently rebuilt because it is the source of truth."""


class IndexRebuildingError(StoreError):
    """The indexes are being rebuilt from the store (a server started on damaged index files): no
    search can be answered until the rebuild is in place; the caller should ask again shortly."""


class StorageFullError(StoreError):
    """The disk filled up (or refused a write) while saving; the previous state is intact."""


class EncoderMismatchError(ValueError):
    """The database was built with a different encoder than the one requested."""


class IndexCorruptError(ValueError):
    """An index file does not match the checksum in the manifest (callers rebuild it)."""


class MilvusError(StoreError):
    """The Milvus backend cannot be used: pymilvus is not installed, the server cannot be reached, a
    milvus-lite file is open in another process, or a collection of that name is not xmodal's."""


class IndexSpecError(ValueError):
    """An `--index-spec` that FAISS cannot build."""
