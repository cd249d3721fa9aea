"""Distributed indexing on Ray (`xmodal index --ray`): the same collection as a local run, vector for
vector, with the same bad files in the error ledger, on a real local Ray instance started here
(two CPUs, a small object store, so a two-core CI machine copes)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from index.collection import STORE_NAME
from retrieval.compose import build_engine, collection_info, list_errors, run_index
from retrieval.data.samples import draw_image
from retrieval.errors import ClusterError
from retrieval.indexing.distributed import RayDecodeStage, plan_actors
from retrieval.indexing.pipeline import IndexOptions
from retrieval.indexing.prepare import ENCODED, FAILED, Task
from retrieval.media.errors import ErrorClass
from retrieval.media.limits import MediaLimits
from retrieval.settings import Settings
from tests.conftest import REPO, run_json

QUERIES = ["a red circle on grey", "a big blue square", "small green star on white"]


def snapshot(db_dir: Path) -> dict[str, tuple]:
    """Every item by path: its metadata and its vectors (kind, start, end, embedding) in stored order."""
    conn = sqlite3.connect(f"file:{db_dir / STORE_NAME}?mode=ro", uri=True)
    try:
        items = {row[0]: row for row in conn.execute(
            "SELECT path, modality, format, size, content_hash, width, height, duration FROM items")}
        vectors: dict[str, list] = {path: [] for path in items}
        for path, kind, start, end, blob in conn.execute(
                "SELECT i.path, v.kind, v.start, v.end, v.embedding FROM vectors v JOIN items i ON i.id = v.item_id "
                "ORDER BY v.id"):
            vectors[path].append((kind, start, end, np.frombuffer(blob, dtype="<f4")))
    finally:
        conn.close()
    return {path: (items[path][1:], vectors[path]) for path in items}


def assert_same_collection(ray_db: Path, local_db: Path) -> None:
    ray_items, local_items = snapshot(ray_db), snapshot(local_db)
    assert ray_items.keys() == local_items.keys()
    for path, (metadata, vectors) in ray_items.items():
        local_metadata, local_vectors = local_items[path]
        assert metadata == local_metadata, path
        assert [v[:3] for v in vectors] == [v[:3] for v in local_vectors], path  # the same windows
        # Batches differ between the runs, and so may the order of float sums inside the encoder.
        np.testing.assert_allclose(np.stack([v[3] for v in vectors]), np.stack([v[3] for v in local_vectors]),
                                   atol=2e-5, err_msg=path)


def search_paths(settings: Settings) -> list[list[tuple[str, float]]]:
    engine = build_engine(settings)
    try:
        return [[(hit.path, hit.score) for hit in engine.search_text(query, k=8).results] for query in QUERIES]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory, sample_folder) -> Path:
    copy = tmp_path_factory.mktemp("ray") / "media"
    shutil.copytree(sample_folder, copy, symlinks=True)
    return copy


def test_cli_index_with_a_local_ray_instance(tmp_path, media, micro_model):
    # First in the file, before this process joins a Ray instance: `--ray local` starts its own.
    db = tmp_path / "db"
    summary = run_json("index", str(media), "--db", str(db), "--model", str(micro_model), "--ray", "local",
                       "--quiet", timeout=240)
    assert (summary["new"], summary["encoded"], summary["ignored"]) == (32, 32, 1)
    assert sum(summary["skipped"].values()) == 10
    assert run_json("info", "--db", str(db))["items"] == {"image": 24, "audio": 8}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # PYTHONPATH: the actors of the fault test import tests.helpers.faults, as a DecodePool's workers do.
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def both(tmp_path_factory, media, micro_model, ray_cluster):
    """The same folder indexed locally and on Ray (small batches: several actor calls and commits)."""
    root = tmp_path_factory.mktemp("both")
    local = Settings(db_dir=root / "local", model=str(micro_model), workers=2)
    distributed = Settings(db_dir=root / "ray", model=str(micro_model), batch_size=4, ray_address="auto")
    return run_index(local, [media]), run_index(distributed, [media]), local, distributed


def test_ray_indexes_the_same_items_vectors_and_bad_files_as_a_local_run(both):
    local_summary, ray_summary, local, distributed = both
    for field in ("files_seen", "new", "encoded", "ignored", "renamed", "removed"):
        assert getattr(ray_summary, field) == getattr(local_summary, field), field
    assert ray_summary.new == 32 and ray_summary.skipped == local_summary.skipped
    assert_same_collection(distributed.db_dir, local.db_dir)
    ledger = {e.path: e.error_class for e in list_errors(distributed)}
    assert ledger == {e.path: e.error_class for e in list_errors(local)} and len(ledger) == 10
    assert collection_info(distributed).index_current
    for ray_hits, local_hits in zip(search_paths(distributed), search_paths(local), strict=True):
        assert [path for path, _ in ray_hits] == [path for path, _ in local_hits]
        assert [score for _, score in ray_hits] == pytest.approx([score for _, score in local_hits], abs=1e-4)


def test_a_rerun_on_ray_indexes_nothing_new(both, media):
    _, first, _, distributed = both
    before = collection_info(distributed)
    again = run_index(distributed, [media])
    assert again.unchanged == first.new and again.new == again.updated == again.encoded == 0
    assert again.skipped == first.skipped  # bad files are retried, and still bad
    after = collection_info(distributed)
    assert (after.store_version, after.generation) == (before.store_version, before.generation)


def test_edits_renames_and_copies_on_ray_reuse_stored_vectors(tmp_path, media, micro_model, ray_cluster):
    folder = tmp_path / "media"
    shutil.copytree(media, folder, symlinks=True)
    settings = Settings(db_dir=tmp_path / "db", model=str(micro_model), ray_address="auto")
    run_index(replace(settings, ray_address=None), [folder])  # a collection indexed here, continued on Ray
    edited, renamed, copied = sorted(str(p) for p in (folder / "images").glob("*.png"))[:3]
    draw_image(np.random.default_rng(7), 200, 150).save(edited, "PNG")
    moved = str(Path(renamed).with_name("moved-" + Path(renamed).name))
    os.rename(renamed, moved)
    shutil.copy(copied, str(Path(copied).with_name("copy-" + Path(copied).name)))
    summary = run_index(settings, [folder])
    assert (summary.new, summary.updated, summary.renamed, summary.encoded) == (1, 1, 1, 1)
    engine = build_engine(settings)
    try:
        for path in (edited, moved):
            best = engine.search_file(path, "image", k=1).results[0]
            assert best.path == path and best.score == pytest.approx(1.0, abs=1e-4)
    finally:
        engine.close()


def test_a_decoder_that_crashes_hangs_or_raises_in_an_actor_costs_one_file(tmp_path, micro_encoder, ray_cluster):
    from tests.helpers.faults import faulty_prepare

    names = ["a", "crash", "b", "hang", "boom", "c"]
    (tmp_path / "media").mkdir()
    paths = {name: tmp_path / "media" / f"{name}.png" for name in names}
    for seed, path in enumerate(paths.values()):
        draw_image(np.random.default_rng(seed), 60, 40).save(path, "PNG")
    options = IndexOptions(batch_size=4, limits=MediaLimits(decode_timeout_seconds=2))
    with RayDecodeStage("auto", micro_encoder, options, prepare=faulty_prepare) as stage:
        results = {Path(r.path).stem: r for r in stage([Task(str(p)) for p in paths.values()], frozenset())}
    assert {name: r.status for name, r in results.items()} == {
        "a": ENCODED, "crash": FAILED, "b": ENCODED, "hang": FAILED, "boom": FAILED, "c": ENCODED}
    assert {results[name].error.error_class for name in ("crash", "hang", "boom")} == {ErrorClass.CORRUPT}
    assert "decoder crashed" in results["crash"].error.message
    assert "longer than 2 s" in results["hang"].error.message and "RuntimeError" in results["boom"].error.message
    for name in ("a", "b", "c"):  # the vectors a local encoder makes of the same files
        with Image.open(paths[name]) as image:
            expected = micro_encoder.encode_images([image])[0]
        np.testing.assert_allclose(results[name].vectors[0].embedding, expected, atol=2e-5)


def test_without_ray_installed_the_error_names_the_extra(tmp_path, media, micro_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` (and `import ray.data`) now raise ImportError
    settings = Settings(db_dir=tmp_path / "db", model=str(micro_model), ray_address="auto")
    with pytest.raises(ClusterError, match=r"pip install 'xmodal\[distributed\]'"):
        run_index(settings, [media])

    from cli.main import app

    result = CliRunner().invoke(app, ["index", str(media), "--db", str(tmp_path / "db"), "--ray", "auto", "-q"])
    assert result.exit_code == 1
    assert "xmodal: error: --ray needs Ray Data" in result.output and "xmodal[distributed]" in result.output
    assert "Traceback" not in result.output


def test_actors_follow_the_cluster_resources():
    gpu = plan_actors({"CPU": 32, "GPU": 4})
    assert (gpu.actors, gpu.gpus, gpu.cpus, gpu.device) == (4, 1, 8, "cuda")
    cpu = plan_actors({"CPU": 16})
    assert (cpu.actors, cpu.gpus, cpu.cpus, cpu.decode_workers, cpu.device) == (4, 0, 4, 3, "cpu")
    small = plan_actors({"CPU": 2})
    assert (small.actors, small.cpus, small.decode_workers) == (1, 2, 1)
