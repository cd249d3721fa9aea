"""Durability of a collection on a failing disk: a save that meets a full disk or an I/O error keeps
the previous generation whole and loadable while searching goes on; a damaged generation that
appears under a running reader is rebuilt from the store (degraded meanwhile); a reader whose repair
cannot be saved still serves and says so; a server started on damaged index files listens at once,
degraded (searches 503) until its background rebuild is in place; a damaged SQLite file is refused
with advice and never rebuilt. Faults are injected only where the disk would produce them (fsync); everything else is
real SQLite and FAISS."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import numpy as np
import pytest

from index.collection import INDEX_DIR, STORE_NAME, Collection
from index.errors import DatabaseCorruptError, StorageFullError, StoreError
from index.lock import WriterLock
from index.manifest import MANIFEST_NAME, load_manifest
from tests.helpers.crash_acks import check_saved_generation
from tests.helpers.index_data import (
    DIM,
    ENCODER,
    assert_in_step_with_store,
    assert_same_results,
    fill,
    saved_collection,
    search_everything,
    unit_vectors,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


class FailingDisk:
    """Makes the `nth` fsync of a regular file written through index.atomic fail with `code` (a full
    disk or a dying one reports delayed write errors at fsync); `nth=None`: every one fails."""

    def __init__(self, monkeypatch, code: int, nth: int | None = None) -> None:
        import index.atomic

        self.code, self.nth, self.calls = code, nth, 0
        self._real = os.fsync
        monkeypatch.setattr(index.atomic.os, "fsync", self)

    def __call__(self, fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self.calls += 1
            if self.nth is None or self.calls == self.nth:
                raise OSError(self.code, os.strerror(self.code))
        self._real(fd)


@pytest.fixture
def saved(tmp_path, rng):
    """A collection directory with generation 1 saved; the queries and the results it gave."""
    return tmp_path / "db", *saved_collection(tmp_path / "db", rng)


# ---------------------------------------------------------------- full disk and I/O errors while saving


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("nth", [1, 2, 3], ids=["first-index-file", "second-index-file", "manifest"])
def test_a_failed_save_keeps_the_previous_generation_and_searching_goes_on(saved, rng, monkeypatch, code, nth):
    db_dir, queries, expected = saved
    manifest_before = (db_dir / MANIFEST_NAME).read_bytes()
    with WriterLock(db_dir), Collection.open(db_dir, ENCODER, writable=True) as writer, \
            Collection.open(db_dir, None, writable=False) as server:
        fill(writer, rng, "/more")
        disk = FailingDisk(monkeypatch, code, nth)
        error = StorageFullError if code == errno.ENOSPC else OSError
        with pytest.raises(error) as raised:
            writer.save_generation()
        if code == errno.EIO:
            assert raised.value.errno == errno.EIO  # reported as it is, not hidden
        else:
            assert "no space left" in str(raised.value)

        # The previous generation is untouched, whole and loadable; no temporary file is left.
        assert (db_dir / MANIFEST_NAME).read_bytes() == manifest_before
        check_saved_generation(db_dir)
        assert not list((db_dir / INDEX_DIR).glob(".*.tmp"))
        # The server keeps serving it, and a refresh finds nothing newer to take.
        assert_same_results(search_everything(server, queries), expected)
        assert server.refresh() is False and server.status.state in ("loaded", "stale")

        # Space again: the writer's next save succeeds and the server moves to it.
        monkeypatch.setattr(disk, "nth", 0)
        manifest = writer.save_generation()
        check_saved_generation(db_dir)
        assert server.refresh() is True and server.generation == manifest.generation
        assert server.status.state == "loaded"
        assert_same_results(search_everything(server, queries), search_everything(writer, queries))
        assert_in_step_with_store(server)


def test_a_reader_whose_repair_cannot_be_saved_still_searches_and_says_degraded(saved, monkeypatch):
    db_dir, queries, expected = saved
    image_file = db_dir / INDEX_DIR / load_manifest(db_dir).indexes["image"].file
    image_file.write_bytes(image_file.read_bytes()[:100])  # truncated
    FailingDisk(monkeypatch, errno.ENOSPC)
    with Collection.open(db_dir, None, writable=False) as server:  # starts: no exception
        assert server.status.state == "unsaved"
        assert "index files unusable" in server.status.reason and "no space left" in server.status.reason
        assert_same_results(search_everything(server, queries), expected)  # rebuilt from the store, in memory
    assert load_manifest(db_dir).generation == 1  # nothing half-written


# ---------------------------------------------------------------- a damaged generation under a running reader


def test_a_damaged_new_generation_is_rebuilt_from_the_store_while_the_old_one_answers(saved, rng, monkeypatch):
    db_dir, queries, _ = saved
    with Collection.open(db_dir, None, writable=False) as server:
        with Collection.open(db_dir, ENCODER, writable=True) as writer:
            fill(writer, rng, "/new", images=5, sounds=2)
            manifest = writer.save_generation()
            truth = search_everything(writer, queries)
        damaged = db_dir / INDEX_DIR / manifest.indexes["audio"].file
        damaged.write_bytes(b"")  # zero length: a disk that lost the file's blocks

        seen = {}
        real_rebuild = Collection.rebuild

        def watched_rebuild(collection):  # what a /health call during the rebuild would see
            seen["status"] = collection.status
            seen["old_results"] = search_everything(collection, queries)
            real_rebuild(collection)

        monkeypatch.setattr(Collection, "rebuild", watched_rebuild)
        assert server.refresh() is True
        assert seen["status"].state == "degraded" and "unusable" in seen["status"].reason
        assert seen["old_results"]["image"][1].shape == (5, 10)  # the old generation answered meanwhile
        assert server.status.state == "rebuilt"
        assert_same_results(search_everything(server, queries), truth)
        assert_in_step_with_store(server)
    # No writer was running, so the repair was saved as a newer, whole generation.
    check_saved_generation(db_dir)
    assert load_manifest(db_dir).generation > manifest.generation
    with Collection.open(db_dir, None, writable=False) as again:
        assert again.status.state == "loaded"


def test_a_reader_that_started_stale_is_current_once_the_writer_saves(saved, rng):
    db_dir, _, _ = saved
    with WriterLock(db_dir), Collection.open(db_dir, ENCODER, writable=True) as writer:
        fill(writer, rng, "/busy")
        with Collection.open(db_dir, None, writable=False) as server:
            assert server.status.state == "stale"  # /health: degraded while the writer works
            writer.save_generation()
            assert server.refresh() is True
            assert server.status.state == "loaded"  # /health: ok again


# ---------------------------------------------------------------- a damaged SQLite file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("index_files", ["kept", "lost"])
def test_a_damaged_database_is_refused_with_advice_and_never_rebuilt(tmp_path, rng, index_files):
    db_dir = tmp_path / "db"
    with Collection.open(db_dir, ENCODER, writable=True) as collection:
        fill(collection, rng, "/big", images=1500, sounds=100)
        collection.save_generation()
    store = db_dir / STORE_NAME
    data = bytearray(store.read_bytes())
    assert len(data) > 64 * 4096  # many pages: the damage lands inside tables, past the header
    start, end = len(data) // 4, 3 * len(data) // 4
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    store.write_bytes(bytes(data))
    if index_files == "lost":  # opening must then read every vector: the damage is met at once
        (db_dir / MANIFEST_NAME).unlink()
    damaged, manifest = sha256(store), load_manifest(db_dir)

    with pytest.raises(DatabaseCorruptError, match="restore it from a backup") as raised:
        with Collection.open(db_dir, None, writable=False) as reader:
            # Index files intact: it opens, and the damage is met when a search resolves its hits.
            reader.store.resolve_vectors(reader.search("image", unit_vectors(rng, 3, DIM), 50)[1].ravel().tolist())
            reader.rebuild()
    assert "never rebuilt silently" in str(raised.value)
    assert sha256(store) == damaged  # left exactly as found, for the user to recover
    assert load_manifest(db_dir) == manifest  # no index was rebuilt from what could still be read


# ---------------------------------------------------------------- the server, as a client sees it


def test_a_server_on_damaged_index_files_and_a_full_disk_starts_serves_and_reports_degraded(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from retrieval.compose import run_index
    from retrieval.demo import write_collection
    from retrieval.encoders.factory import STARTER_DIR
    from retrieval.settings import ServerSettings, Settings

    if not (STARTER_DIR / "xmodal_model.json").is_file():
        pytest.skip("the starter weights are not in this checkout")
    write_collection(tmp_path / "media", images=12, sounds=0, seed=8, concepts=12)
    settings = Settings(db_dir=tmp_path / "db", model="starter", workers=1)
    run_index(settings, [tmp_path / "media"])
    image_file = tmp_path / "db" / INDEX_DIR / load_manifest(tmp_path / "db").indexes["image"].file
    image_file.write_bytes(b"\0" * image_file.stat().st_size)  # same size, wrong bytes: only the checksum knows
    disk = FailingDisk(monkeypatch, errno.ENOSPC)

    app = create_app(Settings(db_dir=tmp_path / "db"), ServerSettings(reload_seconds=0.1))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        deadline = time.monotonic() + 30  # the rebuild runs in the background after the start
        while client.get("/health").json()["index"] == "rebuilding" and time.monotonic() < deadline:
            time.sleep(0.05)
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["index"] == "unsaved"
        assert "could not be saved" in health["reason"]
        answer = client.post("/search/text", json={"query": "a big red circle on grey", "k": 3})
        assert answer.status_code == 200 and len(answer.json()["results"]) == 3  # rebuilt in memory

        monkeypatch.setattr(disk, "nth", 0)  # space again; the next `xmodal index` saves a good generation
        with WriterLock(tmp_path / "db"), Collection.open(tmp_path / "db", None, writable=True) as writer:
            assert writer.status.state == "rebuilt"
        deadline = time.monotonic() + 10
        while client.get("/health").json()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/health").json() == {"status": "ok", "generation": load_manifest(tmp_path / "db").generation,
                                                "index": "loaded", "reason": ""}


@contextlib.contextmanager
def serve_in_process(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in this process (so a test's monkeypatch reaches
    the server) and yield its base URL as soon as it listens, however far its collection is loaded."""
    import uvicorn

    from tests.helpers.live_server import free_port

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start listening"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def http(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, Message, dict]:
    """(status, headers (case-insensitive), JSON body) of one request over real HTTP."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def test_a_server_on_damaged_index_files_listens_at_once_and_searches_once_rebuilt(tmp_path, monkeypatch):
    from api.app import create_app
    from retrieval.compose import run_index
    from retrieval.demo import write_collection
    from retrieval.encoders.factory import STARTER_DIR
    from retrieval.settings import ServerSettings, Settings

    if not (STARTER_DIR / "xmodal_model.json").is_file():
        pytest.skip("the starter weights are not in this checkout")
    db_dir = tmp_path / "db"
    write_collection(tmp_path / "media", images=12, sounds=2, seed=8, concepts=12)
    run_index(Settings(db_dir=db_dir, model="starter", workers=1), [tmp_path / "media"])
    queries = [("/search/text", {"query": "a big red circle on grey", "k": 5}),
               ("/search/text", {"query": "a small blue square", "k": 5, "modality": "image"})]
    with serve_in_process(create_app(Settings(db_dir=db_dir), ServerSettings(reload_seconds=0.1))) as base:
        assert http(base, "GET", "/health")[2]["status"] == "ok"
        before = [http(base, "POST", path, body)[2]["results"] for path, body in queries]
    manifest = load_manifest(db_dir)
    image_file = db_dir / INDEX_DIR / manifest.indexes["image"].file
    image_file.write_bytes(image_file.read_bytes()[:100])  # truncated
    (db_dir / INDEX_DIR / manifest.indexes["audio"].file).write_bytes(b"")  # zero length

    # Fault injection: the real rebuild, held until the test has looked (a large collection's minutes).
    release, rebuilding = threading.Event(), threading.Event()
    real_rebuild = Collection.rebuild

    def slow_rebuild(collection):
        rebuilding.set()
        assert release.wait(60)
        real_rebuild(collection)

    monkeypatch.setattr(Collection, "rebuild", slow_rebuild)
    with serve_in_process(create_app(Settings(db_dir=db_dir), ServerSettings(reload_seconds=0.1))) as base:
        # Listening while the rebuild is still held: /health answers at once, degraded, with the reason.
        status, _, health = http(base, "GET", "/health")
        assert status == 200 and health["status"] == "degraded" and health["index"] == "rebuilding"
        assert "rebuilding the index from the store" in health["reason"]
        assert rebuilding.wait(30)
        status, headers, answer = http(base, "POST", *queries[0])
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert answer["error"]["code"] == "unavailable" and "being rebuilt" in answer["error"]["message"]

        release.set()
        deadline = time.monotonic() + 60
        while http(base, "GET", "/health")[2]["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        saved = load_manifest(db_dir)
        assert http(base, "GET", "/health")[2] == {"status": "ok", "generation": saved.generation,
                                                   "index": "rebuilt", "reason": ""}
        assert saved.generation > manifest.generation  # the repair was saved for the next start
        after = [http(base, "POST", path, body)[2]["results"] for path, body in queries]
    assert after == before
    check_saved_generation(db_dir)


def test_a_database_file_left_before_its_schema_is_called_empty_not_outdated(tmp_path):
    # What a first `xmodal index` killed within its first milliseconds leaves: an empty SQLite file.
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / STORE_NAME).write_bytes(b"")
    with pytest.raises(StoreError, match="no collection at .* yet .*xmodal index FOLDER"):
        Collection.open(tmp_path / "db", None, writable=False)
    with Collection.open(tmp_path / "db", ENCODER, writable=True) as writer:  # the next run just starts
        assert writer.status.state == "rebuilt" and writer.count("image") == 0
