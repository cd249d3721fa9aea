"""`python -m tests.helpers.crash_stream DB_DIR SEED`: a writer that adds and deletes items forever,
for the kill -9 test of the store and the index (tests/test_crash.py). SEED must be unique to the
run: it names the items, so no name is ever added again after its deletion.

It works like `xmodal index` without media: it takes the writer lock, opens the collection as a
writer (which repairs whatever the previous, killed writer left), then commits small transactions
of additions and deletions, applies each to the in-memory indexes and saves a generation every few
commits. Around every commit it prints one line, flushed, so the test knows what was promised:

    plan TXN add PATH        before the commit: what this transaction will do
    plan TXN del PATH
    ack TXN add PATH ID      after the commit returned: durable from here on
    ack TXN del PATH ID
    save GEN / saved GEN     around each generation save (to count kills that landed inside one)
    ready                    the collection is open; the stream starts

Each item's vectors are a pure function of its path (`vectors_for`), so the test can search for
every acknowledged item without asking the process that wrote it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np

PREFIX = "/stream"
TARGET_ITEMS = 120  # additions and deletions balance around this many live items
MAX_ADDS = 5  # per transaction
MAX_DELETES = 3


def vectors_for(path: str, count: int, dim: int) -> np.ndarray:
    """(count, dim) unit float32 rows seeded by the path: row 0 is the item's own vector, the rest
    an audio item's windows."""
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little")
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def windows_of(path: str) -> int:
    """Audio items carry 0-2 window vectors beside the pooled one; images none."""
    return int(path.rsplit("-", 1)[1]) % 3


def modality_of(path: str) -> str:
    return "audio" if "/a" in path else "image"


def new_vectors(path: str, dim: int):
    from index.records import NewVector

    if modality_of(path) == "image":
        return [NewVector(vectors_for(path, 1, dim)[0])]
    windows = windows_of(path)
    rows = vectors_for(path, 1 + windows, dim)
    return [NewVector(rows[0], "item", 0.0, 3.0)] + [
        NewVector(rows[1 + w], "window", float(w), float(w) + 1.0) for w in range(windows)]


def say(line: str) -> None:
    # One write per line: a kill leaves whole lines behind, or at worst one torn last line.
    os.write(1, (line + "\n").encode())


def main(db_dir: str, seed: int) -> None:
    from index.collection import Collection
    from index.lock import WriterLock
    from tests.helpers.index_data import AUDIO, ENCODER, IMAGE, file_state

    rng = np.random.default_rng(seed)
    lock = WriterLock(db_dir)
    os.makedirs(db_dir, exist_ok=True)
    lock.acquire()  # a second writer would be refused here, as `xmodal index` is
    collection = Collection.open(db_dir, ENCODER, writable=True)
    say("ready")
    dim = ENCODER.dim
    last_save = time.monotonic()
    save_every = float(rng.uniform(0.05, 0.3))
    for number in range(1_000_000_000):
        txn = f"{seed}.{number}"  # the seed is unique per run (pids are reused after a few thousand kills)
        live = collection.store.items_under([PREFIX])
        deletes: list = []
        if live and rng.random() < len(live) / (2 * TARGET_ITEMS):
            chosen = rng.choice(len(live), size=min(len(live), int(rng.integers(1, MAX_DELETES + 1))), replace=False)
            deletes = [list(live.values())[int(c)] for c in chosen]
        count = 0 if deletes and rng.random() < 0.5 else int(rng.integers(1, MAX_ADDS + 1))
        adds = [f"{PREFIX}/{'a' if rng.random() < 0.3 else 'i'}{txn}-{n}" for n in range(count)]
        for item in deletes:
            say(f"plan {txn} del {item.path}")
        for path in adds:
            say(f"plan {txn} add {path}")
        ids = {}
        with collection.store.write() as transaction:
            transaction.delete_items([item.id for item in deletes])
            for path in adds:
                info = IMAGE if modality_of(path) == "image" else AUDIO
                ids[path] = transaction.put_item(file_state(path), info, new_vectors(path, dim))
        collection.apply(transaction.changes)
        for item in deletes:
            say(f"ack {txn} del {item.path} {item.id}")
        for path in adds:
            say(f"ack {txn} add {path} {ids[path]}")
        if time.monotonic() - last_save >= save_every:
            say(f"save {collection.generation + 1}")
            manifest = collection.save_generation()
            say(f"saved {manifest.generation}")
            last_save = time.monotonic()
        time.sleep(float(rng.uniform(0, 0.01)))  # an indexer's commits come between encoder batches


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
