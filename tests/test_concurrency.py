"""Concurrency of a serving collection: many searching threads while an indexer in another process
adds and deletes and saves generations; a generation swap under a search in flight; and process
pools that never fork a parent which may hold torch or FAISS threads."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from index.collection import Collection
from index.vector_index import VectorIndex
from retrieval.engine import SearchEngine
from tests.helpers.crash_stream import PREFIX, modality_of
from tests.helpers.index_data import DIM, ENCODER, put_image, unit_vectors

REPO = Path(__file__).resolve().parent.parent
SEARCH_THREADS = 6
SECONDS = 4.0  # searching at least this long...
MAX_SECONDS = 60.0  # ...and at most this long, waiting for enough swaps, deletions and searches
P99_LIMIT_S = 0.5  # two shared cores, an indexer and generation loads beside: generous, still bounded


class AckTail:
    """Follows the streaming writer's output; numbers every acknowledged deletion, so a search can
    tell which deletions were durable before it started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.deleted: dict[str, int] = {}
        self.sequence = 0
        self.saved = 0
        self._offset = 0
        self._lock = threading.Lock()

    def poll(self) -> None:
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        with self._lock:
            for line in whole.decode().splitlines():
                words = line.split(" ")
                if words[0] == "ack" and words[2] == "del":
                    self.sequence += 1
                    self.deleted[words[3]] = self.sequence
                elif words[0] == "saved":
                    self.saved += 1

    def deleted_before(self, sequence: int, path: str) -> bool:
        with self._lock:
            return self.deleted.get(path, sequence + 1) <= sequence


def start_stream(db: Path, out: Path) -> subprocess.Popen:
    with open(out, "ab") as stdout:
        return subprocess.Popen([sys.executable, "-m", "tests.helpers.crash_stream", str(db), "5"], stdout=stdout,
                                stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def test_many_searching_threads_beside_an_indexer_that_adds_and_deletes(tmp_path):
    db, out = tmp_path / "db", tmp_path / "stream.out"
    writer = start_stream(db, out)
    tail = AckTail(out)
    try:
        deadline = time.monotonic() + 120
        while tail.saved < 2:  # a generation exists to be searched
            assert writer.poll() is None and time.monotonic() < deadline, "the indexer did not start"
            time.sleep(0.05)
            tail.poll()
        server = Collection.open(db, None, writable=False)
        engine = SearchEngine(None, server)  # no encoder: the queries are vectors
        stop = threading.Event()
        errors: list[str] = []
        latencies: list[float] = []
        swaps = [0]

        def enough_happened() -> bool:
            return len(latencies) > 200 and swaps[0] >= 3 and tail.sequence > 20

        def watch() -> None:  # what the server's generation watcher does, far more often
            while not stop.wait(0.05):
                tail.poll()
                try:
                    swaps[0] += server.refresh()
                except Exception as error:  # noqa: BLE001 - reported by the test
                    errors.append(f"refresh: {error!r}")

        def search(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                modality = "image" if rng.random() < 0.7 else "audio"
                sequence = tail.sequence
                started = time.perf_counter()
                try:
                    hits = engine._search_one(unit_vectors(rng, 1, DIM)[0], 5, modality, None)
                except Exception as error:  # noqa: BLE001 - reported by the test
                    errors.append(f"search: {error!r}")
                    continue
                latencies.append(time.perf_counter() - started)
                if len({hit.id for hit in hits}) != len(hits):
                    errors.append(f"an item twice in one answer: {hits}")
                for hit in hits:
                    if not hit.path.startswith(PREFIX) or modality_of(hit.path) != modality:
                        errors.append(f"a hit that resolves to nothing sensible: {hit}")
                    if tail.deleted_before(sequence, hit.path):
                        errors.append(f"{hit.path} was deleted before the search began, and returned")

        threads = [threading.Thread(target=watch)] + [
            threading.Thread(target=search, args=(n,)) for n in range(SEARCH_THREADS)]
        for thread in threads:
            thread.start()
        # At least SECONDS, and on past it (within a cap) until enough happened to judge: on a
        # starved machine the writer's saves and deletions come slower, not wrongly.
        started = time.monotonic()
        while time.monotonic() - started < MAX_SECONDS and not (
                time.monotonic() - started >= SECONDS and enough_happened()):
            time.sleep(0.1)
        seconds = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(30)
        assert writer.poll() is None, "the indexer died"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    server.close()
    p99 = float(np.percentile(latencies, 99))
    print(f"{len(latencies)} searches in {seconds:.1f} s on {SEARCH_THREADS} threads, {swaps[0]} generation swaps, "
          f"{tail.sequence} deletions acknowledged meanwhile; p50 {np.median(latencies) * 1e3:.1f} ms, "
          f"p99 {p99 * 1e3:.1f} ms")
    assert not errors, errors[:5]
    assert enough_happened()
    assert p99 < P99_LIMIT_S


def test_a_search_in_flight_during_a_generation_swap_finishes_on_the_old_generation(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    db = tmp_path / "db"
    with Collection.open(db, ENCODER, writable=True) as writer:
        with writer.store.write() as transaction:
            for n in range(20):
                put_image(transaction, f"/old/{n}.png", rng)
        writer.apply(transaction.changes)
        writer.save_generation()
        server = Collection.open(db, None, writable=False)
        old = server.indexes["image"]
        query = unit_vectors(rng, 1, DIM)
        expected = old.search(query, 5)

        entered, release, answer = threading.Event(), threading.Event(), {}
        real_search = VectorIndex.search

        def slow_search(index, *args, **kwargs):
            if index is old:  # only the search that started on the old generation waits
                entered.set()
                release.wait(30)
            return real_search(index, *args, **kwargs)

        monkeypatch.setattr(VectorIndex, "search", slow_search)
        in_flight = threading.Thread(target=lambda: answer.update(result=server.search("image", query, 5)))
        in_flight.start()
        assert entered.wait(30)
        # Meanwhile the indexer replaces every item and saves generation 2; the server swaps to it.
        with writer.store.write() as transaction:
            transaction.delete_items([item.id for item in writer.store.items_under(["/old"]).values()])
            for n in range(20):
                put_image(transaction, f"/new/{n}.png", rng)
        writer.apply(transaction.changes)
        writer.save_generation()
        assert server.refresh() is True and server.generation == 2
        fresh = server.search("image", query, 5)  # new searches see generation 2 at once
        release.set()
        in_flight.join(30)
    np.testing.assert_array_equal(answer["result"][1], expected[1])  # completed, on what it started with
    assert set(fresh[1].ravel().tolist()).isdisjoint(expected[1].ravel().tolist())
    server.close()


# ---------------------------------------------------------------- process pools


FORKING_CALLS = {"fork", "forkpty", "Pool", "Process", "ProcessPoolExecutor", "set_start_method"}


def _fork_risks(path: Path) -> list[str]:
    """Calls that would start a process by fork: os.fork, multiprocessing's default context (fork on
    Linux), a ProcessPoolExecutor without an mp_context, get_context other than spawn."""
    risks = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        owner = function.value if isinstance(function, ast.Attribute) else None
        owner_name = getattr(owner, "id", "") if owner is not None else ""
        if name == "get_context":
            method = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            if method != "spawn":
                risks.append(f"{path}:{node.lineno} get_context({method!r})")
        elif name == "ProcessPoolExecutor" and not any(k.arg == "mp_context" for k in node.keywords):
            risks.append(f"{path}:{node.lineno} ProcessPoolExecutor without mp_context")
        elif name in FORKING_CALLS - {"ProcessPoolExecutor"} and owner_name in ("os", "multiprocessing", "mp", "pty"):
            risks.append(f"{path}:{node.lineno} {owner_name}.{name}")
    return risks


def test_process_pools_spawn_and_never_fork():
    # A fork after torch or FAISS started their thread pools can deadlock the child; every pool in
    # the product is a spawned interpreter (decode workers: subprocess; synthetic data: spawn).
    files = [path for package in ("retrieval", "index", "api", "cli", "generation")
             for path in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 50
    risks = [risk for path in files for risk in _fork_risks(path)]
    assert not risks, risks
