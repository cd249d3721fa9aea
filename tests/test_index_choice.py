"""Each collection gets the index its size calls for (exact while small, an inverted file beyond),
tuned at build time to recall@10 >= 0.95 against exact search, recorded in the manifest; a user's
--index-spec overrides the choice and is remembered."""

from __future__ import annotations

import json

import numpy as np
import pytest

import index.ann as ann
from index.ann import exact_neighbours, next_spec, recall_at_k
from index.collection import Collection
from index.errors import IndexSpecError
from index.manifest import load_manifest
from tests.conftest import run_xmodal
from tests.helpers.index_data import DIM, ENCODER, put_image, unit_vectors


def test_specs_change_only_when_the_size_has_moved_well_past_a_boundary():
    assert next_spec(1000, 512, None) == "IDMap2,Flat"
    assert next_spec(250_000, 512, "IDMap2,Flat") == "IDMap2,IVF2048,Flat"
    assert next_spec(150_000, 512, "IDMap2,IVF2048,Flat") == "IDMap2,IVF2048,Flat"  # no flip back at 150k
    assert next_spec(90_000, 512, "IDMap2,IVF2048,Flat") == "IDMap2,Flat"
    assert next_spec(500_000, 512, "IDMap2,IVF2048,Flat") == "IDMap2,IVF2048,Flat"  # ideal 2896 -> 4096? not yet 2x
    assert next_spec(1_100_000, 512, "IDMap2,IVF2048,Flat") == "IDMap2,IVF4096,Flat"
    assert next_spec(2_000_000, 512, "IDMap2,IVF4096,Flat", memory_bytes=2**30).endswith("PQ64")
    assert next_spec(5_000_000, 512, "IDMap2,Flat", gpu=True) == "IDMap2,Flat"  # a GPU reads it all in ms


def test_exact_neighbours_in_chunks_equal_one_brute_force_pass():
    rng = np.random.default_rng(0)
    vectors, queries = unit_vectors(rng, 1000), unit_vectors(rng, 30)
    ids = np.arange(1000, dtype=np.int64) * 5
    chunks = [(ids[s : s + 128], vectors[s : s + 128]) for s in range(0, 1000, 128)]
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]]
    assert recall_at_k(exact_neighbours(chunks, queries, 10), truth) == 1.0


def _grow(collection: Collection, rng, count: int, start: int = 0) -> None:
    with collection.store.write() as transaction:
        for n in range(start, start + count):
            put_image(transaction, f"/media/{n:05d}.png", rng)
    collection.apply(transaction.changes)


def _recall(collection: Collection, rng) -> float:
    ids, vectors = map(np.concatenate, zip(*collection.store.iter_vectors("image", DIM), strict=True))
    queries = unit_vectors(rng, 100)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    return recall_at_k(collection.search("image", queries, 10)[1], truth)


def test_a_growing_collection_moves_to_a_tuned_inverted_file_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_UP_TO", 600)
    rng = np.random.default_rng(1)
    with Collection.open(tmp_path / "db", ENCODER, writable=True) as collection:
        _grow(collection, rng, 500)
        collection.save_generation()
        assert load_manifest(tmp_path / "db").indexes["image"].spec == "IDMap2,Flat"
        _grow(collection, rng, 1500, start=500)
        collection.save_generation()
    entry = load_manifest(tmp_path / "db").indexes["image"]
    assert entry.spec == f"IDMap2,IVF{ann.nlist_for(2000)},Flat" and entry.count == 2000
    assert entry.search_parameter.startswith("nprobe=") and entry.recall >= 0.95
    with Collection.open(tmp_path / "db", None, writable=False) as reader:  # loads it, with its nprobe
        assert reader.status.state == "loaded"
        assert reader.indexes["image"].search_parameter == entry.search_parameter
        assert _recall(reader, rng) >= 0.9


def test_a_users_index_spec_is_kept_until_auto(tmp_path):
    rng = np.random.default_rng(2)
    with Collection.open(tmp_path / "db", ENCODER, writable=True, index_spec="HNSW16") as collection:
        _grow(collection, rng, 300)
        collection.save_generation()
        assert _recall(collection, rng) >= 0.95
    with Collection.open(tmp_path / "db", ENCODER, writable=True) as collection:
        _grow(collection, rng, 10, start=300)
        collection.save_generation()
    entry = load_manifest(tmp_path / "db").indexes["image"]
    assert entry.spec == "IDMap2,HNSW16" and entry.search_parameter.startswith("efSearch=")
    with Collection.open(tmp_path / "db", ENCODER, writable=True, index_spec="auto") as collection:
        collection.save_generation()
    assert load_manifest(tmp_path / "db").indexes["image"].spec == "IDMap2,Flat"
    with pytest.raises(IndexSpecError):
        Collection.open(tmp_path / "db", ENCODER, writable=True, index_spec="IVF,Nonsense")


def test_the_cli_refuses_an_unbuildable_index_spec_and_reports_the_chosen_one(tmp_path, sample_folder, micro_model):
    db = str(tmp_path / "db")
    bad = run_xmodal("index", str(sample_folder), "--db", db, "--model", str(micro_model), "--index-spec", "Fat",
                     "--quiet")
    assert bad.returncode == 2 and "--index-spec" in bad.stderr
    run_xmodal("index", str(sample_folder), "--db", db, "--model", str(micro_model), "--index-spec", "HNSW8",
               "--quiet", check=True)
    info = json.loads(run_xmodal("info", "--db", db, "--json", check=True).stdout)
    assert info["index_specs"]["image"] == "IDMap2,HNSW8"
    # A new --index-spec takes effect at once, though no file changed; `auto` returns to exact search.
    run_xmodal("index", str(sample_folder), "--db", db, "--index-spec", "auto", "--quiet", check=True)
    assert json.loads(run_xmodal("info", "--db", db, "--json", check=True).stdout)["index_specs"]["image"] == \
        "IDMap2,Flat"
    run_xmodal("index", str(sample_folder), "--db", db, "--index-spec", "HNSW8", "--quiet", check=True)
    info = json.loads(run_xmodal("info", "--db", db, "--json", check=True).stdout)
    tuned = info["index_tuning"]["image"]  # what the graph search was tuned to, and what it reached
    assert tuned["parameter"].startswith("efSearch=") and tuned["recall_at_10"] >= 0.95
    assert f"IDMap2,HNSW8 ({tuned['parameter']}, recall@10" in run_xmodal("info", "--db", db, check=True).stdout
