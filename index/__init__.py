"""Vector indexes and the SQLite metadata store. Knows nothing of torch, encoders or the CLI.

SQLite is the source of truth (items, their vectors, the error ledger); FAISS index files are
caches that can always be rebuilt from the stored vectors without re-encoding any media.
"""

from index.errors import (
    DatabaseCorruptError,
    DatabaseLockedError,
    EncoderMismatchError,
    IndexCorruptError,
    MilvusError,
    StorageFullError,
    StoreError,
)

__all__ = [
    "DatabaseCorruptError",
    "DatabaseLockedError",
    "EncoderMismatchError",
    "IndexCorruptError",
    "MilvusError",
    "StorageFullError",
    "StoreError",
]
