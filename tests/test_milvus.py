"""The Milvus backend against an embedded Milvus (milvus-lite) in tmp_path: it must agree with exact
FAISS, honour filters exactly as `SearchFilter.matches` does, never bring a deleted item back, and
survive a writer interrupted mid-batch or killed between a commit and its Milvus writes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from index import milvus_backend  # noqa: E402
from index.backends import locate_db, open_collection  # noqa: E402
from index.errors import MilvusError  # noqa: E402
from index.filters import SearchFilter  # noqa: E402
from index.lock import WriterLock  # noqa: E402
from index.milvus_backend import MilvusCollection  # noqa: E402
from index.records import MODALITIES, MediaInfo  # noqa: E402
from index.vector_index import VectorIndex  # noqa: E402
from tests.helpers.index_data import DIM, ENCODER, file_state, image_vectors, put_audio, put_image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
JPEG = MediaInfo("image", "jpeg", width=64, height=48)


def milvus_rows(collection: MilvusCollection, modality: str) -> dict[int, dict]:
    """Every row Milvus holds for a modality, by id; fails on a duplicate id."""
    rows = collection.client.query(collection.names[modality], filter="id >= 0",
                                   output_fields=["id", "item_id", "path", "format", "mtime_ns"])
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), f"{modality}: an id is stored twice"
    return {row["id"]: row for row in rows}


def assert_in_step(collection: MilvusCollection) -> None:
    """Milvus holds exactly the store's vectors, each under its item's current path and mtime."""
    for modality in MODALITIES:
        rows = milvus_rows(collection, modality)
        stored = collection.store.vector_ids(modality).tolist()
        assert sorted(rows) == stored, modality
        assert collection.count(modality) == len(stored)
        for vector_id, found in collection.store.resolve_vectors(stored).items():
            assert (rows[vector_id]["path"], rows[vector_id]["mtime_ns"]) == (found.item.path, found.item.mtime_ns)


def clustered(rng: np.random.Generator, n: int, clusters: int = 40, spread: float = 0.35) -> np.ndarray:
    centres = rng.standard_normal((clusters, DIM))
    vectors = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def put_vectors(collection, vectors: np.ndarray, prefix: str = "/media") -> None:
    from index.records import NewVector

    with collection.store.write() as transaction:
        for n, vector in enumerate(vectors):
            transaction.put_item(file_state(f"{prefix}/{n:05d}.png"), MediaInfo("image", "png"), [NewVector(vector)])
    collection.apply(transaction.changes)


# ------------------------------------------------------------------------------ agreement with FAISS


def test_milvus_top10_agrees_with_exact_faiss(tmp_path):
    rng = np.random.default_rng(3)
    vectors = clustered(rng, 3000)
    with open_collection(tmp_path / "x.db", ENCODER, writable=True) as collection:
        assert isinstance(collection, MilvusCollection)
        put_vectors(collection, vectors)
        collection.save_generation()  # flush: sealed segments are searched through their HNSW index
        queries = clustered(rng, 200)
        scores, ids = collection.search("image", queries, 10)
        exact = VectorIndex.create(DIM, "IDMap2,Flat")
        exact.add(*next(collection.store.iter_vectors("image", DIM, chunk_rows=10_000)))
        exact_scores, exact_ids = exact.search(queries, 10)
    recall = np.mean([len(set(got) & set(want)) / 10 for got, want in zip(ids, exact_ids, strict=True)])
    assert recall >= 0.99
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (200, 10)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], atol=1e-5)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, sample_folder, micro_model):
    """The sample folder indexed through `run_index`, once into milvus-lite, once into FAISS."""
    from retrieval.compose import run_index
    from retrieval.settings import Settings

    root = tmp_path_factory.mktemp("e2e")
    media = root / "media"
    shutil.copytree(sample_folder, media, symlinks=True)
    milvus = Settings(db_dir=root / "photos.db", model=str(micro_model), workers=1)
    faiss = Settings(db_dir=root / "faiss", model=str(micro_model), workers=1)
    run_index(milvus, [media])
    run_index(faiss, [media])
    return root, media, milvus, faiss


def hits(settings, text: str, k: int = 8, where: SearchFilter | None = None) -> list[tuple[str, float]]:
    from retrieval.compose import build_engine

    engine = build_engine(settings)
    try:
        return [(hit.path, hit.score) for hit in engine.search_text(text, k=k, where=where).results]
    finally:
        engine.close()


def assert_same_hits(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [path for path, _ in got] == [path for path, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


def test_index_and_search_through_a_db_file_match_faiss(indexed):
    from retrieval.compose import build_engine, collection_info

    root, media, milvus, faiss = indexed
    assert milvus.milvus is not None and milvus.db_dir == root / "photos.xmodal"
    assert (root / "photos.xmodal" / "xmodal.sqlite3").is_file() and (root / "photos.db").is_dir()
    for text in ("a big red circle", "small blue square on white", "a sound"):
        assert_same_hits(hits(milvus, text), hits(faiss, text))
    only_png = SearchFilter(formats=("png",))
    assert_same_hits(hits(milvus, "a green star", where=only_png), hits(faiss, "a green star", where=only_png))
    info = collection_info(milvus)
    assert info.index_current and info.index_specs == {"image": "milvus:HNSW", "audio": "milvus:HNSW"}
    # The ledger remembers its Milvus collection: `--db LEDGER` (how `serve` hands it on) reaches it.
    from retrieval.settings import Settings

    engine = build_engine(Settings(db_dir=root / "photos.xmodal"))
    try:
        assert isinstance(engine.collection, MilvusCollection)
        assert engine.collection.count("image") == info.vectors["image"]
    finally:
        engine.close()


def test_deleted_and_renamed_files_after_a_second_run(indexed, micro_model):
    from retrieval.compose import run_index

    root, media, milvus, _faiss = indexed
    images = sorted(path for path in (media / "images").rglob("*.png") if path.is_file())
    deleted, renamed = images[0], images[1]
    moved = media / "moved" / renamed.name
    moved.parent.mkdir()
    deleted.unlink()
    renamed.rename(moved)
    summary = run_index(milvus, [media])
    assert summary.removed == 1 and summary.renamed == 1
    everything = [path for path, _ in hits(milvus, "anything", k=1000)]
    assert str(deleted) not in everything and str(moved) in everything
    under_moved = hits(milvus, "anything", k=10, where=SearchFilter(under=(str(moved.parent),)))
    assert [path for path, _ in under_moved] == [str(moved)]  # Milvus holds the new path
    with open_collection(milvus.db_dir, None, writable=False) as collection:
        assert collection.status.state == "loaded"
        assert_in_step(collection)


# ------------------------------------------------------------------------------ filters

TRICKY_FOLDERS = ["/data/a_b%", "/data/a_bc", "/data/aXb%", "/data/a_b%x", '/data/q"uote\\d', "/data/é ü/🎵",
                  "/data/tab\there", "/data/new\nline", "/data/a_b%/deeper"]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """Items in folders whose names are LIKE wildcards or need escaping, of two formats and many mtimes."""
    rng = np.random.default_rng(11)
    collection = open_collection(tmp_path_factory.mktemp("filters") / "f.db", ENCODER, writable=True)
    with collection.store.write() as transaction:
        for f, folder in enumerate(TRICKY_FOLDERS):
            for n in range(6):
                state = file_state(f"{folder}/{n}.png", mtime_ns=1_000 * (f * 6 + n))
                info = JPEG if n % 3 == 0 else MediaInfo("image", "png")
                transaction.put_item(state, info, image_vectors(rng))
        transaction.put_item(file_state("/data/a_b%", mtime_ns=5), JPEG, image_vectors(rng))  # a file, not a folder
        for n in range(4):
            put_audio(transaction, f"/data/a_b%/{n}.wav", rng)
        for n in range(300):
            put_image(transaction, f"/bulk/{n:03d}.png", rng, mtime_ns=10**12 + n)
    collection.apply(transaction.changes)
    yield collection
    collection.close()


FILTERS = [
    SearchFilter(under=("/data/a_b%",)),
    SearchFilter(under=("/data/a_b%/",)),
    SearchFilter(under=('/data/q"uote\\d', "/data/é ü")),
    SearchFilter(under=("/data/tab\there", "/data/new\nline")),
    SearchFilter(formats=("jpeg",)),
    SearchFilter(under=("/data",), formats=("png",), since_ns=6_000, until_ns=30_000),
    SearchFilter(since_ns=10**12 + 290),
    SearchFilter(until_ns=3_000),
    SearchFilter(under=("/",)),
]


@pytest.mark.parametrize("where", FILTERS, ids=range(len(FILTERS)))
def test_filters_mean_what_search_filter_matches_means(filtered, where):
    collection = filtered
    query = np.random.default_rng(5).standard_normal((1, DIM)).astype(np.float32)
    for modality in MODALITIES:
        ids, vectors = next(collection.store.iter_vectors(modality, DIM, chunk_rows=100_000))
        resolved = collection.store.resolve_vectors(ids.tolist())
        passing = np.array([where.matches(resolved[i].item) for i in ids.tolist()], dtype=bool)
        exact = ids[passing][np.argsort(-(vectors[passing] @ query[0]), kind="stable")]  # the reference order
        scores, found = collection.search(modality, query, 10, where)
        found = found[0][found[0] >= 0]
        assert len(found) == min(10, len(exact)), "a filter leaving k vectors must still return k"
        assert found.tolist() == exact[:10].tolist()
        _, every = collection.search(modality, query, 1000, where)
        assert sorted(every[0][every[0] >= 0].tolist()) == sorted(exact.tolist())


def test_a_selective_filter_still_returns_k_hits(filtered):
    where = SearchFilter(under=("/bulk",), since_ns=10**12 + 288)  # 12 of 360 image vectors
    scores, ids = filtered.search("image", np.ones((1, DIM), dtype=np.float32), 10, where)
    assert (ids[0] >= 0).sum() == 10
    assert all(item.item.path >= "/bulk/288" for item in filtered.store.resolve_vectors(ids[0].tolist()).values())


# ------------------------------------------------------------------------------ faults


def test_a_deleted_item_never_comes_back(tmp_path):
    rng = np.random.default_rng(2)
    db = tmp_path / "d.db"
    with open_collection(db, ENCODER, writable=True) as collection:
        with collection.store.write() as transaction:
            ids = [put_image(transaction, f"/m/{n}.png", rng) for n in range(10)]
        collection.apply(transaction.changes)
        with collection.store.write() as transaction:
            transaction.delete_items(ids[:3])
        collection.apply(transaction.changes)
        _, found = collection.search("image", np.ones((1, DIM), dtype=np.float32), 100)
        assert {item.item.id for item in collection.store.resolve_vectors(found[0].tolist()).values()} == set(ids[3:])
        assert_in_step(collection)
        # Killed between a delete's commit and its Milvus write: the next open deletes it there.
        with collection.store.write() as transaction:
            transaction.delete_items(ids[3:5])
    with open_collection(db, None, writable=False) as reader:
        assert reader.status.state == "rebuilt"
        assert_in_step(reader)
        assert reader.count("image") == 5


def test_an_upsert_interrupted_midway_and_retried_leaves_no_duplicates(tmp_path, monkeypatch):
    from pymilvus import MilvusException

    rng = np.random.default_rng(4)
    monkeypatch.setattr(milvus_backend, "UPSERT_ROWS", 5)
    db = tmp_path / "u.db"
    with open_collection(db, ENCODER, writable=True) as collection:
        put_vectors(collection, clustered(rng, 12), prefix="/first")
        with collection.store.write() as transaction:
            for n in range(23):
                put_image(transaction, f"/second/{n}.png", rng)
            transaction.delete_items([1, 2])
        real_upsert, calls = collection.client.upsert, []

        def failing_upsert(name, rows, **kwargs):
            calls.append(len(rows))
            if len(calls) == 3:  # two batches of this transaction are in Milvus, the rest never arrive
                raise MilvusException(message="injected: connection lost")
            return real_upsert(name, rows, **kwargs)

        monkeypatch.setattr(collection.client, "upsert", failing_upsert)
        with pytest.raises(MilvusError, match="injected"):
            collection.apply(transaction.changes)
        monkeypatch.setattr(collection.client, "upsert", real_upsert)
        # Milvus does not claim the half-written transaction: an open now would re-sync it.
        assert collection._read_sync()["store_version"] == collection.store.store_version - 1
        collection.apply(transaction.changes)  # the retry
        assert_in_step(collection)
    with open_collection(db, None, writable=False) as reader:
        assert reader.status.state == "loaded"
        assert reader.count("image") == 12 - 2 + 23


def test_a_stale_milvus_is_resynced_on_open_and_searched_meanwhile(tmp_path):
    rng = np.random.default_rng(6)
    db = tmp_path / "s.db"
    with open_collection(db, ENCODER, writable=True) as collection:
        with collection.store.write() as transaction:
            ids = [put_image(transaction, f"/m/{n}.png", rng) for n in range(8)]
            put_audio(transaction, "/m/clip.wav", rng, windows=3)
        collection.apply(transaction.changes)
        ledger = collection.db_dir
        # A writer killed after committing, before Milvus saw it: new items, a deletion, a rename.
        with collection.store.write() as transaction:
            put_image(transaction, "/m/new.png", rng)
            transaction.delete_items([ids[0]])
            transaction.move_item(ids[1], file_state("/elsewhere/renamed.png", mtime_ns=99))
    with WriterLock(ledger):  # another writer at work: a reader searches what Milvus holds meanwhile
        with open_collection(db, None, writable=False) as reader:
            assert reader.status.state == "stale" and reader.count("image") == 8
    with open_collection(db, None, writable=False) as reader:  # no writer alive: the reader re-syncs
        assert reader.status.state == "rebuilt"
        assert_in_step(reader)
        where = SearchFilter(under=("/elsewhere",))
        _, found = reader.search("image", np.ones((1, DIM), dtype=np.float32), 5, where)
        assert found[0][found[0] >= 0].tolist() == reader.store.vector_ids_where("image", where).tolist()


def test_a_new_ledger_never_trusts_what_another_ledger_wrote(tmp_path):
    rng = np.random.default_rng(8)
    db = tmp_path / "n.db"
    with open_collection(db, ENCODER, writable=True) as collection:
        put_vectors(collection, clustered(rng, 20))
        ledger = collection.db_dir
    shutil.rmtree(ledger)  # the ledger is lost; Milvus still holds its ids
    with open_collection(db, ENCODER, writable=True) as collection:
        assert collection.status.state == "rebuilt"
        put_vectors(collection, clustered(rng, 5), prefix="/other")
        assert_in_step(collection)
        assert collection.count("image") == 5


# ------------------------------------------------------------------------------ locations and errors


def test_db_values_name_their_backend_and_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_HOME", str(tmp_path / "home"))
    ledger, target = locate_db("milvus://milvus.example:19531/photos")
    assert target.uri == "http://milvus.example:19531" and target.name == "photos"
    assert ledger == tmp_path / "home" / "milvus" / "milvus.example-19531-photos"
    assert locate_db(Path("milvus://milvus.example/photos"))[1].uri == "http://milvus.example:19530"  # typer's Path
    assert target.describe() == "milvus://milvus.example:19531/photos"
    with pytest.raises(MilvusError, match="COLLECTION"):
        locate_db("milvus://host:19530/not-a-name")
    ledger, target = locate_db(tmp_path / "photos.db")
    assert ledger == tmp_path / "photos.xmodal" and target.lite
    faiss_dir = tmp_path / "old.db"
    faiss_dir.mkdir()
    (faiss_dir / "xmodal.sqlite3").touch()
    assert locate_db(faiss_dir) == (faiss_dir, None)  # an existing FAISS collection stays one
    assert locate_db(tmp_path / "plain") == (tmp_path / "plain", None)


def test_an_unreachable_server_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_HOME", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(MilvusError, match="cannot reach Milvus at milvus://127.0.0.1:1/photos"):
        open_collection("milvus://127.0.0.1:1/photos", ENCODER, writable=True)
    assert time.monotonic() - started < 15


def test_missing_pymilvus_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(MilvusError, match=r"xmodal\[milvus\]"):
        open_collection("milvus://127.0.0.1:1/photos", ENCODER, writable=True)


def test_a_lite_file_open_in_another_process_is_reported(tmp_path):
    db = tmp_path / "busy.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pymilvus import MilvusClient; MilvusClient({str(db)!r}); print('ready', "
                               "flush=True); import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(MilvusError, match="open in another process"):
            open_collection(db, ENCODER, writable=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
