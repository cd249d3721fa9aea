"""Kill -9 harness: run `xmodal index` in a subprocess, SIGKILL it at a chosen moment, change the
folder between runs while keeping a model of what the collection must end up holding, and check a
database directory for consistency (SQLite items and vectors, FAISS ids, manifest, error ledger).

Used by tests/test_crash.py. Every process started here runs in its own process group and the group
is killed before the helper returns, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.atomic import sha256_file
from index.collection import INDEX_DIR, STORE_NAME
from index.manifest import load_manifest
from index.records import MODALITIES
from index.vector_index import VectorIndex
from tests.helpers.faults import living_processes

REPO = Path(__file__).resolve().parents[2]
ENTRIES = {"cli": "cli", "small-batches": "tests.helpers.crash_cli"}
IMAGE_SUFFIXES = {".jpg", ".png", ".webp", ".gif", ".bmp"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


# ---------------------------------------------------------------- processes


def index_command(entry: str, folder: Path, db: Path, model: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", ENTRIES[entry], "index", str(folder), "--db", str(db), "--model", str(model),
            "--quiet", "--json", "--workers", str(workers)]


def group_members(group: int) -> list[int]:
    """Living (not zombie) processes of a process group."""
    return [pid for pid, _ppid, process_group, _command in living_processes() if process_group == group]


def kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class RunOutcome:
    entry: str
    kill_after: float | None
    killed: bool
    returncode: int
    seconds: float
    store_seen_after: float | None  # when the store file first existed: the end of start-up
    stdout: str
    stderr: str
    stragglers: list[int]  # processes of the run still alive 15 s after the indexer ended

    def summary(self) -> dict:
        return json.loads(self.stdout)


def run_index(entry: str, folder: Path, db: Path, model: Path, kill_after: float | None = None,
              timeout: float = 300.0) -> RunOutcome:
    """Run one indexing process; SIGKILL it (the indexer only, like `kill -9 PID`) after
    `kill_after` seconds unless it has finished by then."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    store = Path(db) / STORE_NAME
    store_seen_after = 0.0 if store.exists() else None
    killed = False
    # Output goes to files, not pipes: orphaned workers keep the inherited descriptors open, and a
    # full pipe must never be what stops a run.
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.monotonic()
        process = subprocess.Popen(index_command(entry, folder, db, model), stdout=stdout, stderr=stderr,
                                   env=environment, cwd=REPO, start_new_session=True)
        try:
            limit = kill_after if kill_after is not None else timeout
            while process.poll() is None:
                elapsed = time.monotonic() - started
                if store_seen_after is None and store.exists():
                    store_seen_after = elapsed
                if elapsed >= limit:
                    if kill_after is None:
                        raise AssertionError(f"indexing did not finish within {timeout} s")
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    # A run may end between the poll above and the signal: send_signal polls first
                    # and then sends nothing, so only a SIGKILL exit status says the kill landed.
                    killed = process.returncode == -signal.SIGKILL
                    break
                time.sleep(0.01)
            seconds = time.monotonic() - started
            # After a kill its decode workers are orphans; they must notice and exit by themselves
            # (and after a normal exit none may be left either).
            deadline = time.monotonic() + 15
            while group_members(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            stragglers = group_members(process.pid)
        finally:
            kill_group(process.pid)
            if process.poll() is None:
                process.kill()
                process.wait()
        stdout.seek(0)
        stderr.seek(0)
        return RunOutcome(entry, kill_after, killed, process.returncode, seconds, store_seen_after,
                          stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace"), stragglers)


# ---------------------------------------------------------------- the folder and what it must become


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def modality_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "audio"


def open_store(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(db) / STORE_NAME}?mode=ro", uri=True)


def stored_items(db: Path) -> dict[str, tuple[int, str]]:
    """Path -> (item id, content hash) committed in the store (empty when there is none yet)."""
    if not (Path(db) / STORE_NAME).exists():
        return {}
    connection = open_store(db)
    try:
        return {path: (item_id, content_hash)
                for item_id, path, content_hash in connection.execute("SELECT id, path, content_hash FROM items")}
    except sqlite3.OperationalError:  # killed before the schema was created
        return {}
    finally:
        connection.close()


def describe_db(db: Path) -> str:
    """What a (possibly just killed) writer left: committed items, store version, saved generation."""
    manifest = load_manifest(db)
    saved = f"generation {manifest.generation} at version {manifest.store_version}" if manifest else "no index saved"
    leftovers = len(list((Path(db) / INDEX_DIR).glob(".*.tmp"))) if (Path(db) / INDEX_DIR).exists() else 0
    if not (Path(db) / STORE_NAME).exists():
        return "no store yet"
    connection = open_store(db)
    try:
        items = connection.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        version = connection.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0]
    except (sqlite3.OperationalError, TypeError):
        return "store created, schema not yet"
    finally:
        connection.close()
    temporary = f", {leftovers} temporary index files" if leftovers else ""
    return f"{items} items, store version {version}, {saved}{temporary}"


@dataclass
class FolderModel:
    """The good files that must end up as items, the hostile ones that must end up in the ledger,
    and the item ids that renames and in-place rewrites must keep."""

    root: Path
    good: set[str]
    hostile: dict[str, str]  # path -> expected error class
    # path -> id of the item that must follow a renamed file: the item the store held for the file's
    # content under its old path (committed, or itself waiting for an earlier rename to be seen).
    renamed_ids: dict[str, int] = field(default_factory=dict)
    # path -> id of the stored item that a rewrite of its file must update in place.
    rewritten_ids: dict[str, int] = field(default_factory=dict)
    serial: int = 0

    @property
    def kept_ids(self) -> dict[str, int]:
        return {**self.renamed_ids, **self.rewritten_ids}

    @classmethod
    def copy_sample(cls, source: Path, root: Path) -> FolderModel:
        """Copy a generated sample folder (links as links) and read what it should index."""
        from retrieval.data.samples import SampleManifest

        shutil.copytree(source, root, symlinks=True)
        manifest = SampleManifest.load(source)

        def moved(path: str) -> str:
            return str(root / Path(path).relative_to(source))

        return cls(root, {moved(p) for p in manifest.images + manifest.sounds},
                   {moved(p): expected for p, expected in manifest.hostile.items()})

    def _new_path(self, rng: np.random.Generator, suffix: str, stem: str) -> Path:
        self.serial += 1
        folder = self.root / str(rng.choice(["images", "sounds", "added", "added/deeper"]))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{stem}-{self.serial:03d}{suffix}"

    def _write_new_media(self, rng: np.random.Generator, path: Path | None = None) -> Path:
        import soundfile

        from retrieval.data.samples import draw_image, synth_sound

        if path is None:
            kind = "image" if rng.random() < 0.6 else "audio"
            path = self._new_path(rng, ".png" if kind == "image" else ".wav", "added")
        if modality_of(str(path)) == "image":
            fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP"}[path.suffix]
            draw_image(rng, int(rng.integers(64, 300)), int(rng.integers(64, 300))).save(path, fmt)
        else:
            fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}[path.suffix]
            rate = 44_100 if fmt == "MP3" else 16_000
            soundfile.write(path, synth_sound(rng, rate, float(rng.uniform(0.5, 5.0))), rate, format=fmt)
        return path

    def unique_content(self) -> list[str]:
        """Good files whose content no other good file has (copies share theirs)."""
        by_hash: dict[str, list[str]] = {}
        for path in sorted(self.good):
            by_hash.setdefault(file_hash(Path(path)), []).append(path)
        return [paths[0] for paths in by_hash.values() if len(paths) == 1]

    def _sole_owner(self, victim: str, stored: dict[str, tuple[int, str]], item_id: int) -> bool:
        """No other file and no stored item but `item_id` has the victim's content, so no copy and no
        other vanished item can claim its rename."""
        content = file_hash(Path(victim))
        others = [p for p in self.good if p != victim and file_hash(Path(p)) == content]
        return not others and not any(h == content and i != item_id for i, h in stored.values())

    def mutate(self, rng: np.random.Generator, db: Path) -> list[str]:
        """Random changes (delete, rename, add, rewrite, copy): one to three, or now and then a dozen
        or so, which gives the next runs encoding, commits and saves to be killed in. Returns what
        was done."""
        done = []
        stored = stored_items(db)
        count = int(rng.integers(8, 17)) if rng.random() < 0.3 else int(rng.integers(1, 4))
        for _ in range(count):
            action = str(rng.choice(["delete", "rename", "add", "rewrite", "copy"]))
            choices = sorted(self.good)
            if action != "add" and len(choices) < 8:
                action = "add"
            if action == "add":
                path = self._write_new_media(rng)
                self.good.add(str(path))
                done.append(f"{action} {path.relative_to(self.root)}")
                continue
            victim = choices[int(rng.integers(len(choices)))]
            # Whatever happens to the victim, a pending rename of it can no longer be counted on:
            # deleted, renamed again (carried below), rewritten, or copied (either file may claim it).
            carried = self.renamed_ids.pop(victim, None)
            if action != "copy":
                self.rewritten_ids.pop(victim, None)
            if action == "delete":
                os.unlink(victim)
                self.good.discard(victim)
                path = Path(victim)
            elif action == "rename":
                path = self._new_path(rng, Path(victim).suffix, "renamed")
                item_id, content_hash = stored.get(victim, (None, None))
                if carried is None and content_hash == file_hash(Path(victim)):
                    carried = item_id  # the store is in step with the file: its item must follow
                if carried is not None and not self._sole_owner(victim, stored, carried):
                    carried = None  # another item with this content may be the one that is kept
                os.rename(victim, path)
                self.good.discard(victim)
                self.good.add(str(path))
                if carried is not None:
                    self.renamed_ids[str(path)] = carried
            elif action == "copy":  # the copy reuses the stored vectors once the original is committed
                path = self._new_path(rng, Path(victim).suffix, "copy")
                shutil.copyfile(victim, path)
                self.good.add(str(path))
            else:  # new content at the same path: an item stored for the path is updated, not replaced
                path = Path(victim)
                self._write_new_media(rng, path)
                if victim in stored:
                    self.rewritten_ids[victim] = stored[victim][0]
            done.append(f"{action} {path.relative_to(self.root)}")
        return done


# ---------------------------------------------------------------- consistency


def check_consistent(db: Path, model: FolderModel) -> dict:
    """Assert that the database in `db` holds exactly the model's good files, each once and with
    its current content, that every saved FAISS index holds exactly the store's vectors of its
    modality under the same ids, and that the ledger holds the hostile files with their classes.
    Returns the items."""
    import faiss
    connection = open_store(db)
    try:
        rows = connection.execute("SELECT id, path, modality, content_hash FROM items").fetchall()
        vectors = connection.execute(
            "SELECT v.id, v.item_id, v.kind, i.modality FROM vectors v LEFT JOIN items i ON i.id = v.item_id"
        ).fetchall()
        embeddings = {vector_id: np.frombuffer(blob, dtype="<f4")
                      for vector_id, blob in connection.execute("SELECT id, embedding FROM vectors")}
        errors = dict(connection.execute("SELECT path, error_class FROM errors").fetchall())
        store_version = int(connection.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0])
    finally:
        connection.close()

    paths = [path for _id, path, _modality, _hash in rows]
    assert len(paths) == len(set(paths)), "a path is stored twice"
    items = {path: (item_id, modality, content_hash) for item_id, path, modality, content_hash in rows}
    missing, extra = model.good - set(items), set(items) - model.good
    assert not missing and not extra, f"items differ from the folder: missing {sorted(missing)}, extra {sorted(extra)}"
    for path, (_item_id, modality, content_hash) in items.items():
        assert modality == modality_of(path), path
        assert content_hash == file_hash(Path(path)), f"{path}: stored content is not the file's"
    for path, kept in model.kept_ids.items():
        assert items[path][0] == kept, f"{path} was renamed but got item {items[path][0]}, not {kept}"

    assert all(modality is not None for _v, _i, _k, modality in vectors), "a vector belongs to no item"
    item_vectors: dict[int, int] = {}
    for _vector_id, item_id, kind, modality in vectors:
        if kind == "item":
            item_vectors[item_id] = item_vectors.get(item_id, 0) + 1
        else:
            assert kind == "window" and modality == "audio", (kind, modality)
    assert item_vectors == {item_id: 1 for item_id, _m, _h in items.values()}, "not one 'item' vector per item"

    manifest = load_manifest(db)
    assert manifest is not None, "no readable manifest"
    assert manifest.store_version == store_version, (manifest.store_version, store_version)
    for modality in MODALITIES:
        entry = manifest.indexes[modality]
        path = Path(db) / INDEX_DIR / entry.file
        assert sha256_file(path) == entry.sha256, f"{entry.file} fails its checksum"
        faiss_ids = VectorIndex.load(path, entry.spec).ids().tolist()
        assert len(faiss_ids) == len(set(faiss_ids)) == entry.count, f"{modality}: duplicate ids in FAISS"
        sqlite_ids = {v for v, _i, _k, m in vectors if m == modality}
        assert set(faiss_ids) == sqlite_ids, (
            f"{modality}: FAISS and SQLite differ: only in FAISS {sorted(set(faiss_ids) - sqlite_ids)[:10]}, "
            f"only in SQLite {sorted(sqlite_ids - set(faiss_ids))[:10]}"
        )
        # ...and under each id the same vector (a content update must not leave the old one behind).
        raw = faiss.read_index(str(path))
        for vector_id in faiss_ids:
            assert np.allclose(raw.reconstruct(vector_id), embeddings[vector_id], atol=1e-6), vector_id

    assert errors == model.hostile, f"error ledger {errors} != expected {model.hostile}"
    return items
