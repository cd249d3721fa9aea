"""Kill -9 of a writer streaming additions and deletions (tests/helpers/crash_stream.py), and the
checks that follow each kill: what the writer acknowledged is what the collection holds.

The ledger reads the writer's `plan`/`ack` lines. An acknowledged addition must be stored under the
id it was acknowledged with and be found by a search with its own vector; an acknowledged deletion
must stay gone from the store, the index and the results. The one transaction the kill may have
interrupted (planned, not acknowledged) must have happened entirely or not at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.atomic import sha256_file
from index.collection import INDEX_DIR, Collection, read_encoder_identity
from index.errors import StoreError
from index.manifest import load_manifest
from index.records import MODALITIES
from index.vector_index import VectorIndex
from tests.helpers.crash_stream import PREFIX, modality_of, vectors_for
from tests.helpers.index_data import DIM

REPO = Path(__file__).resolve().parents[2]
DELETED_SAMPLE = 300  # older deletions searched again after each kill


@dataclass
class Interrupted:
    """The transaction a kill may have cut: planned, not (fully) acknowledged."""

    adds: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    partly_acked: bool = False


@dataclass
class AckLedger:
    live: dict[str, int] = field(default_factory=dict)  # acknowledged additions not deleted since: path -> id
    deleted: set[str] = field(default_factory=set)
    ids_seen: set[int] = field(default_factory=set)
    acked_adds: int = 0
    acked_deletes: int = 0
    kills: int = 0
    phases: Counter = field(default_factory=Counter)  # where each kill landed
    items_checked: int = 0
    searched_deleted: set[str] = field(default_factory=set)  # deletions already checked by a search

    def read(self, output: str) -> Interrupted:
        """Take in one run's output; returns its interrupted transaction and counts the kill's phase."""
        lines = output.split("\n")[:-1]  # a torn last line was never a whole acknowledgement
        plans: dict[str, Interrupted] = {}
        last = None
        for line in lines:
            word, *rest = line.split(" ")
            if word == "plan":
                txn, action, path = rest
                plan = plans.setdefault(txn, Interrupted())
                (plan.adds if action == "add" else plan.deletes).append(path)
            elif word == "ack":
                txn, action, path, item_id = rest
                plan = plans[txn]
                plan.partly_acked = True
                if action == "add":
                    assert path not in self.deleted and path not in self.live, f"the writer reused the name {path}"
                    assert int(item_id) not in self.ids_seen, f"item id {item_id} handed out twice"
                    self.ids_seen.add(int(item_id))
                    self.live[path] = int(item_id)
                    plan.adds.remove(path)
                    self.acked_adds += 1
                else:
                    self.live.pop(path, None)
                    self.deleted.add(path)
                    plan.deletes.remove(path)
                    self.acked_deletes += 1
                if not plan.adds and not plan.deletes:
                    del plans[txn]
            last = word
        self.kills += 1
        self.phases[_phase(lines, last)] += 1
        assert len(plans) <= 1, f"more than one transaction unacknowledged: {plans}"
        return next(iter(plans.values()), Interrupted())


def _phase(lines: list[str], last: str | None) -> str:
    if "ready" not in lines:
        return "start-up (open, repair)"
    if last == "plan":
        return "inside a commit"
    if last == "save":
        return "inside a generation save"
    return "between commits"


@dataclass
class StreamRun:
    returncode: int
    output: str
    stderr: str
    killed: bool


def run_stream_and_kill(db: Path, seed: int, rng: np.random.Generator, timeout: float = 120.0) -> StreamRun:
    """Start the streaming writer and SIGKILL it: now and then during start-up, otherwise a random
    moment (up to a second) after it is ready."""
    command = [sys.executable, "-m", "tests.helpers.crash_stream", str(db), str(seed)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    early = rng.random() < 0.15
    delay = float(rng.uniform(0.05, 1.5) if early else rng.uniform(0.01, 1.0))
    with tempfile.TemporaryDirectory() as folder:
        out_path, err_path = Path(folder) / "stdout", Path(folder) / "stderr"
        # Append mode: the writer's lines always land at the end, whatever the test reads meanwhile.
        with open(out_path, "ab") as stdout, open(err_path, "ab") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=environment, cwd=REPO,
                                       start_new_session=True)
        try:
            started = time.monotonic()
            ready_at = started if early else None
            while process.poll() is None:
                now = time.monotonic()
                if ready_at is None:
                    if out_path.read_bytes()[:6] == b"ready\n":
                        ready_at = now
                    elif now - started > timeout:
                        raise AssertionError("the streaming writer never became ready")
                if ready_at is not None and now - ready_at >= delay:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return StreamRun(process.returncode, out_path.read_text(errors="replace"),
                         err_path.read_text(errors="replace"), process.returncode == -signal.SIGKILL)


def check_saved_generation(db: Path) -> None:
    """The manifest on disk (if any) names files that exist and pass their checksums, whose FAISS
    ids are unique: saves are atomic, so a kill never leaves a torn current generation."""
    manifest = load_manifest(db)
    if manifest is None:
        return
    for entry in manifest.indexes.values():
        path = Path(db) / INDEX_DIR / entry.file
        assert path.exists(), f"the manifest names {entry.file}, which is missing"
        assert sha256_file(path) == entry.sha256, f"{entry.file} fails its checksum: a torn save"
        ids = VectorIndex.load(path, entry.spec).ids()
        assert len(ids) == len(set(ids.tolist())) == entry.count, f"{entry.file}: duplicate ids"


def _settle(ledger: AckLedger, interrupted: Interrupted, stored: dict[str, int]) -> None:
    """The interrupted transaction happened whole or not at all; fold it into the ledger."""
    added = [path in stored for path in interrupted.adds]
    kept = [path in stored for path in interrupted.deletes]
    applied = any(added) or not all(kept) or interrupted.partly_acked
    if applied:
        assert all(added) and not any(kept), f"a transaction was half applied: {interrupted}, {added}, {kept}"
        for path in interrupted.adds:
            ledger.live[path] = stored[path]
            ledger.ids_seen.add(stored[path])
        for path in interrupted.deletes:
            ledger.live.pop(path, None)
            ledger.deleted.add(path)
    else:
        assert all(kept), f"a transaction that was not committed deleted something: {interrupted}"


def check_after_kill(db: Path, ledger: AckLedger, interrupted: Interrupted) -> None:
    """Open the collection as a server would, and check it against everything acknowledged."""
    check_saved_generation(db)
    try:
        identity = read_encoder_identity(db)
    except StoreError as error:  # killed between creating the database file and its schema
        assert "no collection" in str(error) and not ledger.live, error
        return
    if identity is None:  # killed before the first writer recorded its encoder
        assert not ledger.live and not interrupted.adds, "acknowledged items but no collection"
        return
    with Collection.open(db, None, writable=False) as reader:
        assert reader.status.state in ("loaded", "rebuilt"), reader.status
        stored = {path: item.id for path, item in reader.store.items_under([PREFIX]).items()}
        _settle(ledger, interrupted, stored)
        for path, item_id in ledger.live.items():
            assert stored.get(path) == item_id, f"acknowledged {path} (id {item_id}) is {stored.get(path)} now"
        assert not ledger.deleted & set(stored), f"deleted items came back: {sorted(ledger.deleted & set(stored))}"
        assert set(stored) == set(ledger.live), f"unacknowledged items: {sorted(set(stored) - set(ledger.live))}"
        for modality in MODALITIES:
            faiss_ids = reader.indexes[modality].ids().tolist()
            assert len(faiss_ids) == len(set(faiss_ids)), f"{modality}: an id is indexed twice"
            assert set(faiss_ids) == set(reader.store.vector_ids(modality).tolist()), f"{modality}: FAISS != SQLite"
        _check_searches(reader, ledger)
    # The reader saved its repair (no writer was alive): the next start just loads it.
    check_saved_generation(db)
    with Collection.open(db, None, writable=False) as again:
        # (A writer killed before its first commit leaves nothing to save: an empty index is rebuilt.)
        assert again.status.state == "loaded" or again.status.reason == "no index files yet", again.status


def _check_searches(reader: Collection, ledger: AckLedger) -> None:
    """Each live item's own vector finds it first; a deleted item's vector finds anything but it."""
    # Every deletion is checked against the store and FAISS above; searches check the recent ones
    # and a sample of the older (the list grows by thousands per kill).
    fresh = set(ledger.deleted) - ledger.searched_deleted
    older = sorted(ledger.searched_deleted)
    sample = [older[i] for i in np.random.default_rng(len(ledger.deleted)).permutation(len(older))[:DELETED_SAMPLE]]
    probe = sorted(fresh) + sample
    ledger.searched_deleted |= fresh
    for modality in MODALITIES:
        for paths, must_find in ((sorted(p for p in ledger.live if modality_of(p) == modality), True),
                                 ([p for p in probe if modality_of(p) == modality], False)):
            if not paths:
                continue
            queries = np.stack([vectors_for(path, 1, DIM)[0] for path in paths])  # (n, DIM)
            _scores, ids = reader.search(modality, queries, 1)
            resolved = reader.store.resolve_vectors(ids[:, 0].tolist())
            for path, vector_id in zip(paths, ids[:, 0].tolist(), strict=True):
                found = resolved[vector_id].item.path if vector_id in resolved else None
                if must_find:
                    assert found == path, f"a search for acknowledged {path} found {found}"
                else:
                    assert found != path, f"deleted {path} was found"
            ledger.items_checked += len(paths)
