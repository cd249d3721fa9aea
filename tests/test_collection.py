"""A collection directory: the store, its FAISS caches, the manifest of generations and the writer
lock. The caches must always be rebuildable from the stored vectors (no encoder involved) and must
never disagree with the store about which vectors exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.collection import INDEX_DIR, Collection, read_encoder_identity
from index.errors import DatabaseLockedError, EncoderMismatchError, StoreError
from index.lock import LOCK_NAME, WriterLock, is_locked
from index.manifest import MANIFEST_NAME, EncoderIdentity, load_manifest
from index.records import MODALITIES
from tests.helpers.index_data import (
    DIM,
    ENCODER,
    assert_in_step_with_store,
    assert_same_results,
    file_state,
    fill,
    put_audio,
    put_image,
    saved_collection,
    search_everything,
    unit_vectors,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def index_files(db_dir: Path) -> list[str]:
    return sorted(p.name for p in (db_dir / INDEX_DIR).iterdir())


@pytest.fixture
def saved(tmp_path, rng):
    """A collection with one saved generation, closed; plus the search results it gave."""
    return tmp_path / "db", *saved_collection(tmp_path / "db", rng)


# ---------------------------------------------------------------- encoder identity


def test_a_new_collection_records_the_encoder_that_fills_it(tmp_path):
    db_dir = tmp_path / "db"
    assert read_encoder_identity(db_dir) is None
    with Collection.open(db_dir, ENCODER, writable=True) as collection:
        assert collection.encoder == ENCODER
    assert read_encoder_identity(db_dir) == ENCODER
    with Collection.open(db_dir, None, writable=False) as reader:  # readers take what it was built with
        assert reader.encoder == ENCODER


def test_a_reader_of_a_missing_collection_is_told_to_index_first(tmp_path):
    with pytest.raises(StoreError, match="xmodal index"):
        Collection.open(tmp_path / "nothing-here", None, writable=False)


@pytest.mark.parametrize(
    "other",
    [EncoderIdentity("ViT-B-32:laion2b", "fingerprint-2", 512), EncoderIdentity("micro:test", "retrained", DIM)],
    ids=["other-model", "same-spec-new-weights"],
)
@pytest.mark.parametrize("writable", [True, False])
def test_reopening_with_another_encoder_names_both(saved, other, writable):
    db_dir, _, _ = saved
    with pytest.raises(EncoderMismatchError) as raised:
        Collection.open(db_dir, other, writable=writable)
    assert f"built with micro:test, dim {DIM}; you asked for {other.spec}, dim {other.dim}" in str(raised.value)
    assert read_encoder_identity(db_dir) == ENCODER  # the refusal changed nothing


def test_the_same_weights_under_another_spec_name_are_accepted(saved):
    db_dir, queries, results = saved
    alias = EncoderIdentity("./models/micro", ENCODER.fingerprint, DIM)
    with Collection.open(db_dir, alias, writable=False) as reader:
        assert reader.encoder == ENCODER
        assert_same_results(search_everything(reader, queries), results)


# ---------------------------------------------------------------- loading, damage and repair


def test_a_saved_generation_loads_with_identical_results(saved):
    db_dir, queries, results = saved
    with Collection.open(db_dir, None, writable=False) as reader:
        assert reader.status.state == "loaded"
        assert reader.generation == 1
        assert_same_results(search_everything(reader, queries), results)


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in (len(data) // 3, len(data) // 2, len(data) - 5):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped-bytes": flip_bytes,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "zero-length": lambda path: path.write_bytes(b""),
    "deleted": lambda path: path.unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("writable", [False, True])
def test_a_damaged_index_file_is_rebuilt_from_the_store_with_identical_results(saved, damage, modality, writable):
    db_dir, queries, results = saved
    DAMAGE[damage](db_dir / INDEX_DIR / load_manifest(db_dir).indexes[modality].file)

    with Collection.open(db_dir, None, writable=writable) as collection:
        assert collection.status.state == "rebuilt"
        assert "index files unusable" in collection.status.reason
        assert_same_results(search_everything(collection, queries), results)
        assert_in_step_with_store(collection)

    # The repair was saved (no writer was running), so the next open just loads it.
    with Collection.open(db_dir, None, writable=False) as again:
        assert again.status.state == "loaded"
        assert_same_results(search_everything(again, queries), results)


@pytest.mark.parametrize("manifest", [None, b"", b"{not json", b'{"format_version": 999}'],
                         ids=["missing", "empty", "garbage", "future-format"])
def test_a_missing_or_unreadable_manifest_triggers_a_rebuild(saved, manifest):
    db_dir, queries, results = saved
    path = db_dir / MANIFEST_NAME
    path.unlink() if manifest is None else path.write_bytes(manifest)
    with Collection.open(db_dir, None, writable=False) as reader:
        assert reader.status.state == "rebuilt"
        assert_same_results(search_everything(reader, queries), results)
    assert load_manifest(db_dir) is not None  # repaired for everyone


def test_a_store_that_moved_on_after_the_last_save_triggers_a_rebuild(saved, rng):
    db_dir, queries, _ = saved
    # A writer killed after committing a batch but before saving: the store is newer than the manifest.
    with Collection.open(db_dir, ENCODER, writable=True) as writer:
        fill(writer, rng, "/late", images=3, sounds=1)
        with writer.store.write() as transaction:
            transaction.delete_items([writer.store.items_under(["/media/000.png"])["/media/000.png"].id])
        writer.apply(transaction.changes)
        expected = search_everything(writer, queries)
        version = writer.store.store_version
    manifest = load_manifest(db_dir)
    assert manifest.generation == 1 and manifest.store_version < version  # nothing saved after the commits

    with Collection.open(db_dir, None, writable=False) as reader:
        assert reader.status.state == "rebuilt"
        assert "store changed since generation 1" in reader.status.reason
        assert_same_results(search_everything(reader, queries), expected)
        assert_in_step_with_store(reader)
        assert reader.built_from_version == version


def test_a_reader_keeps_the_last_generation_while_a_writer_works_and_refresh_picks_up_the_next(saved, rng):
    db_dir, queries, results = saved
    with WriterLock(db_dir), Collection.open(db_dir, ENCODER, writable=True) as writer:
        fill(writer, rng, "/new", images=4, sounds=1)  # committed, not yet saved

        with Collection.open(db_dir, None, writable=False) as reader:
            assert is_locked(db_dir)
            assert reader.status.state == "stale"
            assert reader.generation == 1
            assert_same_results(search_everything(reader, queries), results)
            assert reader.refresh() is False  # nothing newer saved yet

            writer.save_generation()
            assert reader.refresh() is True
            assert reader.generation == 2
            assert_same_results(search_everything(reader, queries), search_everything(writer, queries))
            assert_in_step_with_store(reader)
            assert reader.refresh() is False


def test_saving_generations_prunes_all_but_the_current_and_previous(tmp_path, rng):
    db_dir = tmp_path / "db"
    with Collection.open(db_dir, ENCODER, writable=True) as collection:
        for round_ in range(4):
            fill(collection, rng, f"/round{round_}", images=2, sounds=1)
            collection.save_generation()
        (db_dir / INDEX_DIR / ".image.000005.faiss.abc123.tmp").write_bytes(b"left by a killed writer")
        fill(collection, rng, "/round4", images=2, sounds=1)
        manifest = collection.save_generation()
    assert manifest.generation == 5
    assert index_files(db_dir) == [
        "audio.000004.faiss", "audio.000005.faiss", "image.000004.faiss", "image.000005.faiss"]


def test_refresh_picks_up_the_repair_of_a_lost_manifest(saved, rng):
    db_dir, queries, _ = saved
    with Collection.open(db_dir, ENCODER, writable=True) as writer:
        for round_ in range(3):
            fill(writer, rng, f"/more{round_}", images=2, sounds=1)
            writer.save_generation()
    with Collection.open(db_dir, None, writable=False) as reader:  # a server, running on
        assert reader.generation == 4
        (db_dir / MANIFEST_NAME).unlink()  # lost (disk error, a user tidying up)
        with WriterLock(db_dir), Collection.open(db_dir, ENCODER, writable=True) as writer:
            assert writer.status.state == "rebuilt"  # repaired and saved as a new generation
            fill(writer, rng, "/after", images=2, sounds=1)
            writer.save_generation()
            expected = search_everything(writer, queries)
        # The writer saved newer generations after the repair; the running reader must see them.
        assert reader.refresh() is True
        assert_same_results(search_everything(reader, queries), expected)


# ---------------------------------------------------------------- caches in step with the store


def random_transaction(collection: Collection, rng: np.random.Generator, counter: list[int]) -> None:
    """Adds, replaces (same or other modality), renames, copies and deletes committed items."""
    existing = list(collection.store.items_under(["/r"]).values())
    with collection.store.write() as transaction:
        touched: set[int] = set()
        for _ in range(int(rng.integers(1, 8))):
            action = rng.choice(["add", "replace", "move", "copy", "delete"]) if existing else "add"
            counter[0] += 1
            if action == "add":
                path = f"/r/{counter[0]:05d}"
                put_image(transaction, path, rng) if rng.random() < 0.6 else put_audio(
                    transaction, path, rng, windows=int(rng.integers(0, 4)))
                continue
            item = existing[int(rng.integers(len(existing)))]
            if item.id in touched:
                continue  # each committed item is changed at most once per transaction
            touched.add(item.id)
            if action == "replace":
                put_image(transaction, item.path, rng) if rng.random() < 0.5 else put_audio(
                    transaction, item.path, rng, windows=int(rng.integers(0, 3)))
            elif action == "move":
                transaction.move_item(item.id, file_state(f"/r/{counter[0]:05d}-moved", item.content_hash))
            elif action == "copy":
                transaction.copy_item(item, file_state(f"/r/{counter[0]:05d}-copy", item.content_hash))
            else:
                transaction.delete_items([item.id])
    collection.apply(transaction.changes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_transactions_keep_faiss_ids_equal_to_stored_vector_ids(tmp_path, seed):
    rng = np.random.default_rng(seed)
    db_dir = tmp_path / "db"
    counter = [0]
    with Collection.open(db_dir, ENCODER, writable=True) as collection:
        for step in range(25):
            random_transaction(collection, rng, counter)
            assert_in_step_with_store(collection)
            assert collection.built_from_version == collection.store.store_version
            if step % 10 == 9:
                collection.save_generation()
        collection.save_generation()
        queries = unit_vectors(rng, 4, DIM)
        expected = search_everything(collection, queries, k=50)
    with Collection.open(db_dir, None, writable=False) as reader:
        assert reader.status.state == "loaded"
        assert_in_step_with_store(reader)
        assert_same_results(search_everything(reader, queries, k=50), expected)
        reader.rebuild()  # the saved caches equal a rebuild from the store
        assert_same_results(search_everything(reader, queries, k=50), expected)


def test_an_item_added_and_changed_in_the_same_transaction_leaves_no_ghost_vector(tmp_path, rng):
    # One batch can hold a new file and, later in the batch, its replacement or removal.
    with Collection.open(tmp_path / "db", ENCODER, writable=True) as collection:
        with collection.store.write() as transaction:
            put_image(transaction, "/m/edited.png", rng)
            put_image(transaction, "/m/edited.png", rng)  # re-put before commit: first vector dropped
            gone = put_audio(transaction, "/m/gone.wav", rng)
            transaction.delete_items([gone])
        collection.apply(transaction.changes)
        assert_in_step_with_store(collection)


# ---------------------------------------------------------------- the writer lock


def start_lock_holder(db_dir: Path) -> subprocess.Popen:
    """Another process that takes the writer lock and then sleeps, like a running `xmodal index`."""
    code = (
        "import sys, time\n"
        "from index.lock import WriterLock\n"
        "WriterLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db_dir)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_with_the_holder_pid_and_a_killed_holder_leaves_no_lock(tmp_path):
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    holder = start_lock_holder(db_dir)
    try:
        with pytest.raises(DatabaseLockedError, match=f"locked by PID {holder.pid}") as raised:
            WriterLock(db_dir).acquire()
        assert raised.value.pid == holder.pid
        assert is_locked(db_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()

    assert not is_locked(db_dir)
    lock = WriterLock(db_dir)
    lock.acquire()  # kill -9 left no stale lock
    try:
        assert lock.held
        assert (db_dir / LOCK_NAME).read_text().strip() == str(os.getpid())
    finally:
        lock.release()
    assert not lock.held and not is_locked(db_dir)


def test_a_reader_next_to_a_writer_in_another_process_searches_the_saved_generation(saved, rng):
    db_dir, queries, results = saved
    with Collection.open(db_dir, ENCODER, writable=True) as writer:
        fill(writer, rng, "/unsaved", images=2, sounds=1)  # committed; then this writer "crashed"
    holder = start_lock_holder(db_dir)  # ...and another `xmodal index` is now running
    try:
        with Collection.open(db_dir, None, writable=False) as reader:
            assert reader.status.state == "stale"
            assert_same_results(search_everything(reader, queries), results)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()
