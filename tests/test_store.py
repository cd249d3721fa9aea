"""The SQLite store: the source of truth for items, their vectors and the error ledger.

Every test checks something a user of `xmodal` would notice: a renamed file keeping its vectors,
a deleted file disappearing from results, a folder query not leaking a sibling folder, a broken
database refused with advice instead of being silently replaced.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import index.store as store_module
from index.errors import DatabaseCorruptError, StorageFullError, StoreError
from index.schema import SCHEMA_VERSION
from index.store import Store
from tests.helpers.index_data import (
    AUDIO,
    DIM,
    IMAGE,
    audio_vectors,
    file_state,
    image_vectors,
    put_audio,
    put_image,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def store(tmp_path):
    opened = Store.open(tmp_path / "xmodal.sqlite3")
    yield opened
    opened.close()


def stored_embeddings(store: Store, modality: str) -> dict[int, np.ndarray]:
    return {
        int(i): vector
        for ids, vectors in store.iter_vectors(modality, DIM)
        for i, vector in zip(ids, vectors, strict=True)
    }


def raw_connection(path: Path) -> closing[sqlite3.Connection]:
    """A plain SQLite connection (autocommit), closed on exit: the database as other tools see it."""
    return closing(sqlite3.connect(path, isolation_level=None))


def raw_count(path: Path, table: str) -> int:
    with raw_connection(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# ---------------------------------------------------------------- put, replace, move, copy, delete


def test_put_new_items_reports_their_vectors_and_stores_them_exactly(store, rng):
    image = image_vectors(rng)
    audio = audio_vectors(rng, windows=2)
    with store.write() as transaction:
        image_id = transaction.put_item(file_state("/m/a.png"), IMAGE, image)
        audio_id = transaction.put_item(file_state("/m/b.wav"), AUDIO, audio)
    changes = transaction.changes

    assert len(changes.added_ids["image"]) == 1 and len(changes.added_ids["audio"]) == 3
    assert changes.removed_ids == {"image": [], "audio": []}
    assert store.store_version == 1
    assert store.counts() == {"image": {"items": 1, "vectors": 1}, "audio": {"items": 1, "vectors": 3}}

    # What the index will be fed is bit-identical to what was put.
    ids, vectors = changes.added("audio", DIM)
    np.testing.assert_array_equal(vectors, np.stack([v.embedding for v in audio]))
    stored = stored_embeddings(store, "audio")
    assert sorted(stored) == sorted(ids.tolist())
    for vector_id, vector in zip(ids.tolist(), audio, strict=True):
        np.testing.assert_array_equal(stored[vector_id], vector.embedding)

    resolved = store.resolve_vectors([*changes.added_ids["image"], *changes.added_ids["audio"]])
    assert resolved[changes.added_ids["image"][0]].item.id == image_id
    windows = [resolved[i] for i in changes.added_ids["audio"]]
    assert [(w.item.id, w.kind, w.start, w.end) for w in windows] == [
        (audio_id, "item", 0.0, 3.0), (audio_id, "window", 0.0, 1.0), (audio_id, "window", 1.0, 2.0)]
    assert windows[0].item.path == "/m/b.wav" and windows[0].item.duration == 3.0


def test_put_on_an_existing_path_replaces_vectors_and_keeps_the_item_id(store, rng):
    with store.write() as first:
        item_id = put_image(first, "/m/a.png", rng)
    old_ids = first.changes.added_ids["image"]

    with store.write() as second:
        again = second.put_item(file_state("/m/a.png", "new-hash", size=2000, mtime_ns=7), IMAGE, image_vectors(rng))

    assert again == item_id
    assert second.changes.removed_ids["image"] == old_ids
    assert len(second.changes.added_ids["image"]) == 1 and second.changes.added_ids["image"] != old_ids
    assert store.resolve_vectors(old_ids) == {}  # a search hit on the old vector resolves to nothing
    item = store.get_item(item_id)
    assert (item.content_hash, item.size, item.mtime_ns) == ("new-hash", 2000, 7)
    assert store.counts()["image"] == {"items": 1, "vectors": 1}
    assert store.store_version == 2


def test_replacing_an_item_with_another_modality_moves_its_vectors_between_indexes(store, rng):
    with store.write() as first:
        put_image(first, "/m/clip", rng)
    with store.write() as second:
        put_audio(second, "/m/clip", rng, windows=1)

    assert second.changes.removed_ids == {"image": first.changes.added_ids["image"], "audio": []}
    assert len(second.changes.added_ids["audio"]) == 2 and second.changes.added_ids["image"] == []
    assert store.counts() == {"image": {"items": 0, "vectors": 0}, "audio": {"items": 1, "vectors": 2}}


def test_move_points_the_item_at_its_new_path_and_keeps_its_vectors(store, rng):
    with store.write() as first:
        item_id = put_image(first, "/m/old.png", rng)
        first.record_error("/m/new.png", "decode", "was broken before")
    vector_ids = first.changes.added_ids["image"]
    version = store.store_version

    with store.write() as second:
        second.move_item(item_id, file_state("/m/new.png", "hash-of-/m/old.png", mtime_ns=99))

    # No vector changed (FAISS has no work), but their metadata did: Milvus keeps path and mtime
    # beside the vectors, and a writer killed before rewriting them must leave a visibly stale store.
    assert second.changes.added_ids == second.changes.removed_ids == {"image": [], "audio": []}
    assert second.changes.moved_ids == {"image": vector_ids, "audio": []}
    assert store.store_version == version + 1
    assert store.items_under(["/m/old.png"]) == {}
    assert store.items_under(["/m/new.png"])["/m/new.png"].id == item_id
    assert store.resolve_vectors(vector_ids)[vector_ids[0]].item.path == "/m/new.png"
    assert store.list_errors() == []  # the file now at that path is fine


def test_copy_reuses_the_source_vectors_under_new_ids(store, rng):
    audio = audio_vectors(rng, windows=2)
    with store.write() as first:
        source_id = first.put_item(file_state("/m/a.wav"), AUDIO, audio)
    source = store.get_item(source_id)

    with store.write() as second:
        copy_id = second.copy_item(source, file_state("/m/copy of a.wav", source.content_hash))

    assert copy_id != source_id
    copy = store.get_item(copy_id)
    assert (copy.modality, copy.format, copy.duration, copy.sample_rate, copy.content_hash) == (
        "audio", "wav", 3.0, 16000, source.content_hash)
    new_ids = second.changes.added_ids["audio"]
    assert len(new_ids) == 3 and not set(new_ids) & set(first.changes.added_ids["audio"])
    assert second.changes.removed_ids == {"image": [], "audio": []}
    stored = stored_embeddings(store, "audio")
    for vector_id, vector in zip(new_ids, audio, strict=True):
        np.testing.assert_array_equal(stored[vector_id], vector.embedding)
    resolved = store.resolve_vectors(new_ids)
    assert [(r.item.id, r.kind, r.start, r.end) for r in (resolved[i] for i in new_ids)] == [
        (copy_id, v.kind, v.start, v.end) for v in audio]
    assert store.counts()["audio"] == {"items": 2, "vectors": 6}


def test_delete_reports_removed_vectors_and_takes_them_out_of_the_store(store, rng, tmp_path):
    with store.write() as first:
        keep = put_image(first, "/m/keep.png", rng)
        gone = put_audio(first, "/m/gone.wav", rng, windows=3)
    gone_vectors = first.changes.added_ids["audio"]

    with store.write() as second:
        second.delete_items([gone])

    assert second.changes.removed_ids == {"image": [], "audio": gone_vectors}
    assert second.changes.added_ids == {"image": [], "audio": []}
    assert store.get_item(gone) is None and store.get_item(keep) is not None
    assert store.resolve_vectors(gone_vectors) == {}
    assert store.vector_ids("audio").size == 0
    assert raw_count(tmp_path / "xmodal.sqlite3", "vectors") == 1
    assert store.store_version == 2


def test_deleting_an_item_row_cascades_to_its_vectors(store, rng, tmp_path):
    # Any code path that removes an item row (not only delete_items) must not strand its vectors.
    with store.write() as transaction:
        put_audio(transaction, "/m/a.wav", rng, windows=2)
    with raw_connection(tmp_path / "xmodal.sqlite3") as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM items")
    assert raw_count(tmp_path / "xmodal.sqlite3", "vectors") == 0


def test_deleting_unknown_ids_changes_nothing(store, rng):
    with store.write() as first:
        put_image(first, "/m/a.png", rng)
    with store.write() as second:
        second.delete_items([12345])
    assert second.changes.empty
    assert store.store_version == 1
    assert store.counts()["image"] == {"items": 1, "vectors": 1}


def test_ids_of_deleted_items_and_vectors_are_never_handed_out_again(tmp_path, rng):
    path = tmp_path / "xmodal.sqlite3"
    store = Store.open(path)
    with store.write() as first:
        put_image(first, "/m/a.png", rng)
        last_item = put_image(first, "/m/b.png", rng)
    last_vector = max(first.changes.added_ids["image"])
    with store.write() as second:
        second.delete_items([last_item])
    store.close()

    # Reopened, so the guarantee survives a restart: an old index generation still holding the
    # deleted ids must resolve them to nothing, never to the new item.
    store = Store.open(path)
    with store.write() as third:
        new_item = put_image(third, "/m/c.png", rng)
    assert new_item > last_item
    assert min(third.changes.added_ids["image"]) > last_vector
    assert store.resolve_vectors([last_vector]) == {}
    store.close()


def store_rows(store: Store) -> tuple[list, list, list]:
    """Items (without their indexing time), vectors and errors, as other tools would read them."""
    with raw_connection(store.path) as conn:
        items = conn.execute("SELECT id, path, modality, format, size, mtime_ns, content_hash, width, height, "
                             "duration, sample_rate, channels FROM items ORDER BY id").fetchall()
        vectors = conn.execute("SELECT id, item_id, kind, start, end, embedding FROM vectors ORDER BY id").fetchall()
        errors = conn.execute("SELECT path FROM errors ORDER BY path").fetchall()
    return items, vectors, errors


@pytest.mark.parametrize("paths", [["/m/c.png", "/m/d.wav", "/m/e.png"],  # new files: inserted together
                                   ["/m/c.png", "/m/a.png", "/m/d.wav"],  # one replaces an item
                                   ["/m/c.png", "/m/d.wav", "/m/c.png"]])  # one path twice
def test_putting_files_together_stores_what_putting_them_one_by_one_does(tmp_path, paths):
    stores = [Store.open(tmp_path / f"{name}.sqlite3") for name in ("together", "one-by-one")]
    changes = []
    for store in stores:
        rng = np.random.default_rng(3)
        with store.write() as first:
            put_image(first, "/m/a.png", rng)
            last = put_audio(first, "/m/b.wav", rng, windows=2)
            first.record_error("/m/c.png", "CORRUPT", "was broken before")
        with store.write() as second:
            second.delete_items([last])  # the highest ids are gone, and must not come back
        entries = [(file_state(path, mtime_ns=n), AUDIO if path.endswith(".wav") else IMAGE,
                    audio_vectors(rng, windows=2) if path.endswith(".wav") else image_vectors(rng))
                   for n, path in enumerate(paths)]
        with store.write() as third:
            if store is stores[0]:
                third.put_items(entries)
            else:
                for entry in entries:
                    third.put_item(*entry)
        changes.append(third.changes)
    together, one_by_one = (store_rows(store) for store in stores)
    for store in stores:
        store.close()

    assert together == one_by_one
    assert changes[0].added_ids == changes[1].added_ids and changes[0].removed_ids == changes[1].removed_ids
    for modality in ("image", "audio"):
        np.testing.assert_array_equal(changes[0].added(modality, DIM)[1], changes[1].added(modality, DIM)[1])
    assert together[2] == []  # /m/c.png indexed: its old error is cleared
    # a.png had vector 1, b.wav 2-4: ids of the deleted sound are never handed out again
    assert min(changes[0].added_ids["image"] + changes[0].added_ids["audio"]) > 4


def test_resolve_vectors_skips_padding_and_handles_more_ids_than_one_statement_binds(store, rng):
    with store.write() as transaction:
        for n in range(1000):
            put_image(transaction, f"/m/{n:04d}.png", rng)
    ids = transaction.changes.added_ids["image"]
    resolved = store.resolve_vectors([-1, *ids, -1, 10**9])
    assert sorted(resolved) == sorted(ids)
    assert {r.item.path for r in resolved.values()} == {f"/m/{n:04d}.png" for n in range(1000)}


def test_iter_vectors_yields_one_modality_in_id_order_in_chunks(store, rng):
    with store.write() as transaction:
        for n in range(7):
            put_image(transaction, f"/m/{n}.png", rng)
            put_audio(transaction, f"/m/{n}.wav", rng, windows=1)
    chunks = list(store.iter_vectors("image", DIM, chunk_rows=3))
    assert [len(ids) for ids, _ in chunks] == [3, 3, 1]
    ids = np.concatenate([ids for ids, _ in chunks])
    np.testing.assert_array_equal(ids, np.asarray(transaction.changes.added_ids["image"]))
    np.testing.assert_array_equal(ids, store.vector_ids("image"))
    vectors = np.concatenate([v for _, v in chunks])
    assert vectors.dtype == np.float32 and vectors.shape == (7, DIM)
    np.testing.assert_array_equal(vectors, np.stack(transaction.changes.added_vectors["image"]))


# ---------------------------------------------------------------- folder queries


SUBTREE_PATHS = [
    "/a/b", "/a/b/x.png", "/a/b/c/d.png", "/a/b/ü.png",  # inside /a/b
    "/a/b2/x.png", "/a/bc.png", "/a/b.png", "/a/b-x/y.png", "/a/b x/y.png", "/a/bü/x.png", "/a/b0/x.png",
    "/a/b%/x.png", "/a/b_/x.png", "/a/b%c/x.png", "/a/b_c/x.png", "/a/bXb/x.png", "/other/b/x.png",
]


@pytest.fixture
def tree_store(store, rng):
    with store.write() as transaction:
        for path in SUBTREE_PATHS:
            put_image(transaction, path, rng)
            transaction.record_error(path + ".err", "decode", "bad")
    return store


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/a/b", {"/a/b", "/a/b/x.png", "/a/b/c/d.png", "/a/b/ü.png"}),  # a file root is itself
        ("/a/b/", {"/a/b/x.png", "/a/b/c/d.png", "/a/b/ü.png"}),
    ],
)
def test_items_under_is_the_exact_subtree_not_a_string_prefix(tree_store, root, expected):
    assert set(tree_store.items_under([root])) == expected


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/a/b%", {"/a/b%/x.png"}),
        ("/a/b_", {"/a/b_/x.png"}),
        ("/a/b%c", {"/a/b%c/x.png"}),
        ("/a/b_c", {"/a/b_c/x.png"}),
    ],
)
def test_percent_and_underscore_in_a_root_are_plain_characters(tree_store, root, expected):
    assert set(tree_store.items_under([root])) == expected


def test_items_under_several_roots_and_the_filesystem_root(tree_store):
    assert set(tree_store.items_under(["/a/b2", "/other"])) == {"/a/b2/x.png", "/other/b/x.png"}
    assert set(tree_store.items_under(["/"])) == set(SUBTREE_PATHS)
    assert tree_store.items_under(["/a/b/nothing"]) == {}


def test_error_paths_under_uses_the_same_subtree_rule(tree_store):
    assert tree_store.error_paths_under(["/a/b"]) == {"/a/b/x.png.err", "/a/b/c/d.png.err", "/a/b/ü.png.err"}
    assert tree_store.error_paths_under(["/a/b_"]) == {"/a/b_/x.png.err"}


# ---------------------------------------------------------------- the error ledger


def test_error_ledger_keeps_first_seen_and_counts_repeats(store, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=lambda: clock[0]))
    with store.write() as transaction:
        transaction.record_error("/m/bad.png", "decode", "truncated PNG")
        transaction.record_error("/m/other.wav", "too_long", "3 hours")
    clock[0] = 250.0
    with store.write() as transaction:
        transaction.record_error("/m/bad.png", "unreadable", "permission denied")

    bad = store.list_errors("unreadable")
    assert len(bad) == 1
    assert (bad[0].path, bad[0].message, bad[0].first_seen, bad[0].last_seen, bad[0].seen_count) == (
        "/m/bad.png", "permission denied", 100.0, 250.0, 2)
    assert store.list_errors("decode") == []
    other = store.list_errors("too_long")[0]
    assert (other.first_seen, other.last_seen, other.seen_count) == (100.0, 100.0, 1)
    assert store.error_count() == 2
    assert store.store_version == 0  # the ledger never makes an index stale


def test_clearing_errors_and_indexing_a_fixed_file_empty_the_ledger(store, rng):
    with store.write() as transaction:
        for path in ("/m/1.png", "/m/2.png", "/m/3.png"):
            transaction.record_error(path, "decode", "bad")
    with store.write() as transaction:
        transaction.clear_errors(["/m/1.png", "/m/never-recorded.png"])
        put_image(transaction, "/m/2.png", rng)  # the file was fixed and indexed
    assert [e.path for e in store.list_errors()] == ["/m/3.png"]
    assert store.error_count() == 1


# ---------------------------------------------------------------- concurrency, schema, damage


def test_a_reader_sees_committed_data_while_a_writer_is_mid_transaction(store, rng, tmp_path):
    with store.write() as transaction:
        put_image(transaction, "/m/committed.png", rng)
    reader = Store.open(tmp_path / "xmodal.sqlite3", readonly=True)
    try:
        with store.write() as transaction:
            put_image(transaction, "/m/uncommitted.png", rng)
            transaction.record_error("/m/pending.png", "decode", "bad")
            # A search running now must see exactly the last committed state, without waiting.
            assert set(reader.items_under(["/m"])) == {"/m/committed.png"}
            assert reader.counts()["image"] == {"items": 1, "vectors": 1}
            assert reader.store_version == 1
            assert reader.error_count() == 0
        assert set(reader.items_under(["/m"])) == {"/m/committed.png", "/m/uncommitted.png"}
        assert reader.store_version == 2
        with pytest.raises(StoreError, match="read-only"):
            with reader.write():
                pass
    finally:
        reader.close()


def test_a_reader_asking_for_a_missing_database_is_told_to_index_first(tmp_path):
    with pytest.raises(StoreError, match="xmodal index"):
        Store.open(tmp_path / "none" / "xmodal.sqlite3", readonly=True)
    assert not (tmp_path / "none").exists()


def test_schema_version_is_recorded_and_reopening_keeps_the_data(tmp_path, rng):
    path = tmp_path / "xmodal.sqlite3"
    store = Store.open(path)
    with store.write() as transaction:
        put_image(transaction, "/m/a.png", rng)
    store.close()
    with raw_connection(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for readonly in (False, True):
        reopened = Store.open(path, readonly=readonly)
        assert set(reopened.items_under(["/m"])) == {"/m/a.png"} and reopened.store_version == 1
        reopened.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_database_from_a_newer_xmodal_is_refused(tmp_path, readonly):
    path = tmp_path / "xmodal.sqlite3"
    Store.open(path).close()
    with raw_connection(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer .*upgrade xmodal"):
        Store.open(path, readonly=readonly)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_a_database_is_refused_with_advice_and_left_untouched(tmp_path, readonly):
    path = tmp_path / "xmodal.sqlite3"
    garbage = b"these are holiday photos, not SQLite " * 200
    path.write_bytes(garbage)
    with pytest.raises(DatabaseCorruptError, match="backup") as raised:
        Store.open(path, readonly=readonly)
    assert str(path) in str(raised.value) and "index the folders again" in str(raised.value)
    assert path.read_bytes() == garbage  # the source of truth is never silently replaced


def test_an_exception_inside_a_transaction_keeps_nothing(store, rng, tmp_path):
    with store.write() as transaction:
        put_image(transaction, "/m/kept.png", rng)

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted):
        with store.write() as transaction:
            put_image(transaction, "/m/lost.png", rng)
            transaction.record_error("/m/lost-error.png", "decode", "bad")
            transaction.set_meta({"encoder_spec": "lost"})
            raise Interrupted

    assert set(store.items_under(["/m"])) == {"/m/kept.png"}
    assert store.error_count() == 0 and store.get_meta("encoder_spec") is None
    assert store.store_version == 1
    assert raw_count(tmp_path / "xmodal.sqlite3", "vectors") == 1
    with store.write() as transaction:  # and the store is still usable
        put_image(transaction, "/m/next.png", rng)
    assert store.store_version == 2


def test_a_failing_statement_rolls_back_the_whole_transaction(store, rng):
    with store.write() as transaction:
        first = put_image(transaction, "/m/a.png", rng)
        put_image(transaction, "/m/b.png", rng)
    with pytest.raises(StoreError, match="UNIQUE"):
        with store.write() as transaction:
            put_image(transaction, "/m/c.png", rng)
            transaction.move_item(first, file_state("/m/b.png"))  # a path that is already taken
    assert set(store.items_under(["/m"])) == {"/m/a.png", "/m/b.png"}
    assert store.store_version == 1


def test_a_full_disk_during_a_transaction_raises_storage_full_and_keeps_nothing(store, rng):
    with store.write() as transaction:
        put_image(transaction, "/m/kept.png", rng)
    # Fault injection: cap the file at its current size, which SQLite reports exactly as a full disk.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = image_vectors(rng)
    with pytest.raises(StorageFullError, match="disk full"):
        with store.write() as transaction:
            for n in range(400):
                transaction.put_item(file_state(f"/m/{n:03d}-{'x' * 200}.png"), IMAGE, big)
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert set(store.items_under(["/m"])) == {"/m/kept.png"}
    assert store.store_version == 1


@pytest.mark.parametrize("directory", ["photos #2", "what?", "My%20Photos", "100% done"])
def test_a_database_directory_may_contain_uri_characters(tmp_path, rng, directory):
    # Users pick --db names; SQLite is opened through a URI, where '#', '?' and '%' mean something.
    db_dir = tmp_path / directory
    db_dir.mkdir()
    writer = Store.open(db_dir / "xmodal.sqlite3")
    try:
        with writer.write() as transaction:
            put_image(transaction, "/m/a.png", rng)
        reader = Store.open(db_dir / "xmodal.sqlite3", readonly=True)
        assert set(reader.items_under(["/m"])) == {"/m/a.png"}
        reader.close()
    finally:
        writer.close()
    assert (db_dir / "xmodal.sqlite3").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]  # nothing written beside it
