"""Incremental indexing and search, end to end through the library (the CLI calls the same
functions): every good file findable by itself, bad files classified, and each kind of change to
the folder handled the way rclip-style incremental indexing promises."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.collection import STORE_NAME, Collection
from index.store import Store
from retrieval.compose import build_engine, collection_info, list_errors, run_index
from retrieval.data.samples import SampleManifest, draw_image
from retrieval.errors import QueryError
from retrieval.settings import Settings


@pytest.fixture
def folder(tmp_path, sample_folder) -> Path:
    copy = tmp_path / "media"
    shutil.copytree(sample_folder, copy, symlinks=True)
    return copy


def manifest_of(folder: Path) -> SampleManifest:
    """The sample manifest with paths moved from the session folder to this copy."""
    manifest = SampleManifest.load(folder)
    original = Path(manifest.images[0]).parent.parent  # images/tricky-*.png lie directly in images/
    move = lambda path: str(folder / Path(path).relative_to(original))  # noqa: E731
    return SampleManifest([move(p) for p in manifest.images], [move(p) for p in manifest.sounds],
                          {move(p): c for p, c in manifest.hostile.items()})


def settings_for(tmp_path: Path, model: Path | None = None) -> Settings:
    return Settings(db_dir=tmp_path / "db", model=str(model) if model else None, workers=2)


def assert_consistent(db_dir: Path) -> None:
    """FAISS ids == SQLite vector ids per modality, paths unique, one item vector per item."""
    store = Store.open(db_dir / STORE_NAME, readonly=True)
    try:
        with Collection.open(db_dir, None, writable=False) as collection:
            for modality, index in collection.indexes.items():
                assert sorted(index.ids().tolist()) == store.vector_ids(modality).tolist()
        conn = store._conn
        assert conn.execute("SELECT COUNT(*) - COUNT(DISTINCT path) FROM items").fetchone()[0] == 0
        per_item = conn.execute("SELECT item_id, COUNT(*) FROM vectors WHERE kind = 'item' GROUP BY item_id").fetchall()
        assert all(count == 1 for _, count in per_item)
        assert len(per_item) == conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        store.close()


def top_path(settings: Settings, path: str, kind: str) -> tuple[str, float]:
    engine = build_engine(settings)
    try:
        hit = engine.search_file(path, kind, k=1).results[0]
    finally:
        engine.close()
    return hit.path, hit.score


def test_first_run_indexes_every_good_file_and_classifies_every_bad_one(tmp_path, folder, micro_model):
    manifest = manifest_of(folder)
    settings = settings_for(tmp_path, micro_model)
    summary = run_index(settings, [folder])
    assert summary.new == len(manifest.images) + len(manifest.sounds)
    assert {f.path: f.error_class for f in summary.failures} == manifest.hostile
    assert summary.ignored == 1  # sample.json
    assert summary.encoded == summary.new
    info = collection_info(settings)
    assert info.items == {"image": len(manifest.images), "audio": len(manifest.sounds)}
    assert info.errors == len(manifest.hostile) and info.index_current
    assert {e.path: e.error_class for e in list_errors(settings)} == manifest.hostile
    assert_consistent(settings.db_dir)

    engine = build_engine(Settings(db_dir=settings.db_dir))  # the model comes from the database
    try:
        for path in manifest.images:
            best = engine.search_file(path, "image", k=3).results[0]
            assert best.path == path and best.score == pytest.approx(1.0, abs=1e-4)
        for path in manifest.sounds:
            best = engine.search_file(path, "audio", k=3, modality="audio").results[0]
            assert best.path == path and best.score == pytest.approx(1.0, abs=1e-4)
            assert best.segment[0] == 0.0 and best.segment[1] > 0
        text = engine.search_text("a red circle on grey", k=7)
        assert len(text.results) == 7 and len({hit.id for hit in text.results}) == 7
        assert [hit.score for hit in text.results] == sorted((hit.score for hit in text.results), reverse=True)
        assert {hit.modality for hit in engine.search_text("x", k=50, modality="audio").results} == {"audio"}
        everything = engine.search_text("x", k=1000).results
        assert len(everything) == len(manifest.images) + len(manifest.sounds)  # k beyond the collection
        assert all(hit.id > 0 for hit in everything)
        for bad_k in (0, 1001):
            with pytest.raises(QueryError):
                engine.search_text("x", k=bad_k)
    finally:
        engine.close()


def test_second_run_reads_nothing_and_writes_no_new_generation(tmp_path, folder, micro_model):
    settings = settings_for(tmp_path, micro_model)
    first = run_index(settings, [folder])
    before = collection_info(settings)
    second = run_index(settings, [folder])
    after = collection_info(settings)
    assert second.unchanged == first.new and second.new == second.updated == second.encoded == 0
    assert len(second.failures) == len(first.failures)  # bad files are retried, and still bad
    assert after.generation == before.generation and after.store_version == before.store_version


def test_edits_deletions_renames_and_copies(tmp_path, folder, micro_model):
    manifest = manifest_of(folder)
    settings = settings_for(tmp_path, micro_model)
    run_index(settings, [folder])
    edited, deleted, renamed, copied, touched = manifest.images[10:15]
    draw_image(np.random.default_rng(99), 300, 200).save(edited, "PNG" if edited.endswith(".png") else "JPEG")
    os.unlink(deleted)
    store = Store.open(settings.db_dir / STORE_NAME, readonly=True)
    old_id = store.items_under([renamed])[renamed].id
    store.close()
    moved = str(Path(renamed).with_name("moved-" + Path(renamed).name))
    os.rename(renamed, moved)
    duplicate = str(Path(copied).with_name("copy-" + Path(copied).name))
    shutil.copy(copied, duplicate)
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))

    summary = run_index(settings, [folder])
    assert (summary.new, summary.updated, summary.renamed, summary.removed) == (1, 1, 1, 1)
    assert summary.encoded == 1  # only the edited file; the rename and the copy reuse stored vectors
    store = Store.open(settings.db_dir / STORE_NAME, readonly=True)
    items = store.items_under([str(folder)])
    store.close()
    assert deleted not in items and renamed not in items
    assert items[moved].id == old_id
    assert top_path(settings, edited, "image") == (edited, pytest.approx(1.0, abs=1e-4))
    assert top_path(settings, moved, "image")[0] == moved
    engine = build_engine(settings)
    try:
        results = engine.search_file(duplicate, "image", k=2).results
        assert {hit.path for hit in results} == {copied, duplicate}
        assert all(hit.score == pytest.approx(1.0, abs=1e-4) for hit in results)
        assert deleted not in {hit.path for hit in engine.search_text("x", k=1000).results}
    finally:
        engine.close()
    assert_consistent(settings.db_dir)


def test_a_copy_of_content_another_file_just_replaced_gets_that_content_s_vector(tmp_path, micro_model, monkeypatch):
    """b.png takes a.png's old picture while a.png gets a new one. If a.png's new vector is written
    before b.png is looked up (in the same transaction), copying a.png's stored vectors to b.png
    would give b.png the new picture's vector; b.png must be encoded instead."""
    from retrieval.indexing import pipeline
    from retrieval.indexing.prepare import prepare_file

    folder = tmp_path / "media"
    folder.mkdir()
    old, new = (draw_image(np.random.default_rng(seed), 96, 64) for seed in (1, 2))
    old.save(folder / "a.png")
    settings = settings_for(tmp_path, micro_model)
    run_index(settings, [folder])
    new.save(folder / "a.png")
    old.save(folder / "b.png")

    def one_at_a_time(encoder, options):  # in walk order, "nothing ready" between files: a.png's put comes first
        def decode(tasks, skip_hashes):
            for task in sorted(tasks, key=lambda t: t.path):
                yield prepare_file(task, encoder.inputs, options.limits, skip_hashes)
                yield None
        return decode

    monkeypatch.setattr(pipeline, "local_decode_stage", one_at_a_time)
    summary = run_index(settings, [folder])
    assert (summary.new, summary.updated) == (1, 1)
    for name in ("a.png", "b.png"):
        assert top_path(settings, str(folder / name), "image") == (str(folder / name), pytest.approx(1.0, abs=1e-4))
    assert_consistent(settings.db_dir)


def test_a_fixed_file_is_retried_and_a_broken_one_leaves_the_index(tmp_path, folder, micro_model):
    manifest = manifest_of(folder)
    settings = settings_for(tmp_path, micro_model)
    run_index(settings, [folder])
    truncated = next(p for p, c in manifest.hostile.items() if p.endswith("truncated.jpg"))
    draw_image(np.random.default_rng(5), 120, 90).save(truncated, "JPEG")  # the user fixed it
    victim = manifest.images[3]
    Path(victim).write_bytes(Path(victim).read_bytes()[:200])  # a good file got damaged
    summary = run_index(settings, [folder])
    assert summary.updated == 0 and summary.new == 1 and summary.removed == 1
    errors = {e.path: e.error_class for e in list_errors(settings)}
    assert truncated not in errors and errors[victim] in ("TRUNCATED", "CORRUPT")
    assert top_path(settings, truncated, "image")[0] == truncated
    engine = build_engine(settings)
    try:
        assert victim not in {hit.path for hit in engine.search_text("x", k=1000).results}
    finally:
        engine.close()
    assert_consistent(settings.db_dir)


def test_a_missing_root_changes_nothing(tmp_path, folder, micro_model):
    settings = settings_for(tmp_path, micro_model)
    first = run_index(settings, [folder])
    shutil.rmtree(folder / "images")
    with pytest.raises(QueryError, match="does not exist"):
        run_index(settings, [folder / "images"])
    assert collection_info(settings).items["image"] == first.new - len(manifest_of(folder).sounds)


def test_files_the_user_removed_are_deleted_only_under_the_roots_indexed(tmp_path, folder, micro_model):
    settings = settings_for(tmp_path, micro_model)
    run_index(settings, [folder / "images"])
    run_index(settings, [folder / "sounds"])
    info = collection_info(settings)
    assert info.items["image"] > 0 and info.items["audio"] > 0  # indexing sounds kept the images


def test_a_database_inside_the_indexed_folder_is_not_indexed(tmp_path, folder, micro_model):
    settings = Settings(db_dir=folder / "xmodal-db", model=str(micro_model), workers=1)
    first = run_index(settings, [folder])
    second = run_index(settings, [folder])
    assert second.new == 0 and second.ignored == first.ignored  # its sqlite and index files never appear


def test_another_encoder_is_refused_with_both_names(tmp_path, folder, micro_model):
    from index.errors import EncoderMismatchError
    from retrieval.encoders import init_model_dir

    settings = settings_for(tmp_path, micro_model)
    run_index(settings, [folder / "sounds"])
    other = tmp_path / "other-model"
    init_model_dir(other, "micro", seed=7)
    with pytest.raises(EncoderMismatchError, match=r"built with .*micro, dim 32; you asked for .*other-model, dim 32"):
        build_engine(Settings(db_dir=settings.db_dir, model=str(other)))


def test_indexing_works_from_a_script_on_stdin(tmp_path, sample_folder, micro_model):
    # Decode workers must not depend on re-importing the caller's __main__ (`python -`, notebooks):
    # with multiprocessing's spawn that failed and every file came back "crashed".
    import subprocess
    import sys

    from tests.conftest import REPO

    script = (
        "from pathlib import Path\n"
        "from retrieval.compose import run_index\n"
        "from retrieval.settings import Settings\n"
        f"s = run_index(Settings(db_dir=Path({str(tmp_path / 'db')!r}), model={str(micro_model)!r}, workers=1),"
        f" [Path({str(sample_folder / 'sounds')!r})])\n"
        "print(s.new, len(s.failures))\n"
    )
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(list((sample_folder / "sounds").iterdir()))), "0"]


def test_workers_that_cannot_start_stop_the_run_instead_of_blaming_files(tmp_path, micro_encoder):
    from retrieval.errors import WorkerStartError
    from retrieval.indexing.prepare import Task
    from retrieval.indexing.workers import DecodePool
    from retrieval.media.limits import MediaLimits
    from tests.helpers import start_fault

    pool = DecodePool(1, micro_encoder.inputs, MediaLimits(), prepare=start_fault.prepare)
    with pytest.raises(WorkerStartError, match="could not start"):
        list(pool.run([Task(str(tmp_path / "a.jpg"))]))


def test_an_unreadable_file_is_recorded_and_an_indexed_one_keeps_its_entry(tmp_path, folder, micro_model,
                                                                             monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: the workers get a real PermissionError
    # from os.open for the listed paths instead (tests/helpers/faults.py).
    from functools import partial

    from retrieval.indexing import pipeline
    from retrieval.indexing.workers import DecodePool
    from tests.helpers.faults import DENIED_VARIABLE, faulty_prepare

    manifest = manifest_of(folder)
    settings = settings_for(tmp_path, micro_model)
    run_index(settings, [folder])
    new_file = str(folder / "images" / "unreadable.jpg")
    draw_image(np.random.default_rng(21), 90, 90).save(new_file, "JPEG")
    touched = manifest.images[5]  # indexed before; changed, and now unreadable
    store = Store.open(settings.db_dir / STORE_NAME, readonly=True)
    touched_id = store.items_under([touched])[touched].id
    store.close()
    draw_image(np.random.default_rng(22), 90, 90).save(touched, "PNG" if touched.endswith(".png") else "JPEG")
    monkeypatch.setattr(pipeline, "DecodePool", partial(DecodePool, prepare=faulty_prepare))
    monkeypatch.setenv(DENIED_VARIABLE, os.pathsep.join([new_file, touched]))

    summary = run_index(settings, [folder])
    assert {(f.path, f.error_class) for f in summary.failures} >= {(new_file, "PERMISSION"), (touched, "PERMISSION")}
    assert summary.removed == 0  # unreadable is not gone: the indexed file keeps its entry
    errors = {e.path: e.error_class for e in list_errors(settings)}
    assert errors[new_file] == errors[touched] == "PERMISSION"
    store = Store.open(settings.db_dir / STORE_NAME, readonly=True)
    items = store.items_under([str(folder)])
    store.close()
    assert items[touched].id == touched_id and new_file not in items

    monkeypatch.delenv(DENIED_VARIABLE)  # permissions fixed: both are picked up, the ledger clears
    summary = run_index(settings, [folder])
    assert summary.new == 1 and summary.updated == 1
    errors = {e.path for e in list_errors(settings)}
    assert new_file not in errors and touched not in errors
    assert top_path(settings, new_file, "image") == (new_file, pytest.approx(1.0, abs=1e-4))
    assert top_path(settings, touched, "image") == (touched, pytest.approx(1.0, abs=1e-4))
    assert_consistent(settings.db_dir)


def test_sounds_are_spread_among_the_images_each_kind_in_walk_order():
    """A folder of photos then one of music is decoded mixed, so neither the decoders nor the
    encoder idle through a whole folder (retrieval/indexing/pipeline.py, `interleaved`)."""
    from retrieval.indexing.pipeline import interleaved
    from retrieval.indexing.prepare import Task

    images = [Task(f"/m/photos/{n:02d}.jpg") for n in range(12)]
    sounds = [Task(f"/m/music/{n}.MP3") for n in range(3)] + [Task("/m/music/z.flac")]
    order = interleaved(images + sounds)
    assert sorted(order, key=lambda t: t.path) == sorted(images + sounds, key=lambda t: t.path)
    assert [t for t in order if t in images] == images and [t for t in order if t in sounds] == sounds
    positions = [order.index(t) for t in sounds]
    assert positions[0] <= 2 and positions[-1] >= len(order) - 3  # across the whole run...
    assert max(b - a for a, b in zip(positions, positions[1:], strict=False)) <= 5  # ...evenly
    assert interleaved(images) == images and interleaved([]) == []
