"""Numbered schema migrations of the SQLite store (`PRAGMA user_version` holds the number applied).

Append new migrations; never edit one that has shipped. Ids use AUTOINCREMENT so a deleted row's id
is never handed out again: an older index generation that still holds it then resolves to nothing
instead of to an unrelated new item.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: items, their vectors (one per image; pooled + windows per audio clip), the error ledger.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE items (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        path         TEXT    NOT NULL UNIQUE,
        modality     TEXT    NOT NULL CHECK (modality IN ('image', 'audio')),
        format       TEXT    NOT NULL,
        size         INTEGER NOT NULL,
        mtime_ns     INTEGER NOT NULL,
        content_hash TEXT    NOT NULL,
        width        INTEGER,
        height       INTEGER,
        duration     REAL,
        sample_rate  INTEGER,
        channels     INTEGER,
        indexed_at   REAL    NOT NULL
    );
    CREATE INDEX items_by_hash ON items (content_hash);
    CREATE TABLE vectors (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id   INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        kind      TEXT    NOT NULL CHECK (kind IN ('item', 'window')),
        start     REAL,
        end       REAL,
        embedding BLOB    NOT NULL
    );
    CREATE INDEX vectors_by_item ON vectors (item_id);
    CREATE TABLE errors (
        path        TEXT    PRIMARY KEY,
        error_class TEXT    NOT NULL,
        message     TEXT    NOT NULL,
        first_seen  REAL    NOT NULL,
        last_seen   REAL    NOT NULL,
        seen_count  INTEGER NOT NULL DEFAULT 1
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
