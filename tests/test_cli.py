"""The `xmodal` command as a user runs it: real subprocesses, real exit codes, JSON and tables."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from index.lock import WriterLock
from retrieval.compose import build_engine
from retrieval.data.samples import generate_sample_folder
from retrieval.settings import Settings
from tests.conftest import run_json, run_xmodal


def test_acceptance_200_images_50_sounds_10_hostile(tmp_path, micro_model):
    """The issue's "done when": exit 0, 250 indexed, the 10 reported with classes, a second run
    reports 250 unchanged, and sampled images and sounds find themselves first."""
    media = tmp_path / "media"
    manifest = generate_sample_folder(media, images=200, sounds=50, hostile=True, seed=3)
    db = str(tmp_path / "db")
    first = run_json("index", str(media), "--db", db, "--model", str(micro_model), "--quiet")
    assert first["new"] == 250 and first["encoded"] == 250
    assert {f["path"]: f["class"] if "class" in f else f["error_class"] for f in first["failures"]} == manifest.hostile
    assert sum(first["skipped"].values()) == 10
    second = run_json("index", str(media), "--db", db, "--quiet")
    assert second["unchanged"] == 250 and second["new"] == second["encoded"] == 0

    picks = random.Random(0)
    images, sounds = picks.sample(manifest.images, 10), picks.sample(manifest.sounds, 10)
    # Two through the real command; all twenty through the engine it calls (each CLI call loads torch).
    for flag, path in (("--image", images[0]), ("--audio", sounds[0])):
        top = run_json("search", flag, path, "--db", db, "-k", "3")["results"][0]
        assert top["path"] == path and top["score"] == pytest.approx(1.0, abs=1e-4)
    engine = build_engine(Settings(db_dir=tmp_path / "db"))
    try:
        for kind, paths in (("image", images), ("audio", sounds)):
            for path in paths:
                assert engine.search_file(path, kind, k=1).results[0].path == path
    finally:
        engine.close()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, sample_folder, micro_model):
    root = tmp_path_factory.mktemp("cli")
    media = root / "media"
    shutil.copytree(sample_folder, media, symlinks=True)
    db = root / "db"
    run_xmodal("index", str(media), "--db", str(db), "--model", str(micro_model), "--quiet", check=True)
    return media, db


def test_search_output_as_table_and_json(indexed):
    media, db = indexed
    sound = sorted((media / "sounds").iterdir())[0]
    table = run_xmodal("search", "--audio", str(sound), "--db", str(db), "-k", "2", check=True).stdout
    lines = table.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "modality", "path", "segment"]
    assert lines[1].split()[:4] == ["1", "1.0000", "audio", str(sound)]
    assert "0:00.0-" in lines[1]
    result = run_json("search", "a blue square", "--db", str(db), "-k", "4", "--modality", "image")
    assert result["query"] == {"kind": "text", "value": "a blue square"}
    assert len(result["results"]) == 4
    assert set(result["results"][0]) == {"id", "path", "modality", "score", "segment", "generated"}
    assert {r["modality"] for r in result["results"]} == {"image"} and result["results"][0]["segment"] is None


def test_info_and_errors(indexed):
    media, db = indexed
    info = run_json("info", "--db", str(db))
    assert info["items"]["image"] == 24 and info["items"]["audio"] == 8 and info["errors"] == 10
    assert info["index_specs"] == {"image": "IDMap2,Flat", "audio": "IDMap2,Flat"} and info["dim"] == 32
    text = run_xmodal("info", "--db", str(db), check=True).stdout
    assert "24 items" in text and "10 files skipped" in text
    ledger = run_json("errors", "--db", str(db))
    assert len(ledger) == 10 and {row["error_class"] for row in ledger} >= {"CORRUPT", "TRUNCATED", "TOO_LONG"}
    only = run_json("errors", "--db", str(db), "--class", "truncated")
    assert {row["error_class"] for row in only} == {"TRUNCATED"} and len(only) == 2


def test_a_second_writer_exits_at_once_naming_the_holder(indexed):
    media, db = indexed
    with WriterLock(db):
        result = run_xmodal("index", str(media), "--db", str(db), "--quiet")
    assert result.returncode == 3
    assert f"locked by PID {os.getpid()}" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_are_one_line_with_exit_code_2(indexed, tmp_path):
    media, db = indexed
    for args in (("search", "--db", str(db)),
                 ("search", "words", "--image", str(media / "sample.json"), "--db", str(db)),
                 ("search", "--image", str(media / "sample.json"), "--db", str(db)),
                 ("search", "--image", str(sorted((media / "sounds").iterdir())[0]), "--db", str(db)),
                 ("index", str(tmp_path / "nowhere"), "--db", str(db))):
        result = run_xmodal(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("xmodal: error:") and len(result.stderr.strip().splitlines()) == 1
    assert "use --audio" in run_xmodal("search", "--image", str(sorted((media / "sounds").iterdir())[0]),
                                       "--db", str(db)).stderr


def test_searching_a_collection_that_does_not_exist(tmp_path):
    result = run_xmodal("search", "anything", "--db", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "no collection at" in result.stderr and "xmodal index" in result.stderr


def test_the_db_comes_from_the_environment(indexed):
    media, db = indexed
    info = run_json("info", env={"XMODAL_DB": str(db)})
    assert info["db_dir"] == str(db)


def test_model_init_creates_a_usable_model_directory(tmp_path):
    out = tmp_path / "fresh"
    result = run_xmodal("model", "init", str(out), "--arch", "micro", "--seed", "3", check=True)
    assert "embedding dim 32" in result.stdout
    assert {p.name for p in out.iterdir()} == {"xmodal_model.json", "model.safetensors"}
    assert run_xmodal("model", "init", str(out), "--arch", "micro").returncode == 2  # never overwrites


def test_paths_print_as_they_are_even_with_brackets():
    from cli import output
    from retrieval.engine import SearchHit, SearchResult

    result = SearchResult("text", "q", [SearchHit(1, "/media/[red] square.png", "image", 0.9, None),
                                        SearchHit(2, "/db/generated/ab.png", "image", 0.8, None, True)])
    with output.stdout.capture() as captured:
        output.print_search(result)
    text = captured.get()
    assert "/media/[red] square.png" in text  # not swallowed as markup
    assert "/db/generated/ab.png  [generated]" in text


def test_a_bench_given_a_folder_without_a_generator_exits_4_in_one_line(tmp_path):
    """Every command translates a generator that cannot be loaded, not only search and serve."""
    result = run_xmodal("bench", "generate", "--generator", str(tmp_path), "--limit", "1")
    assert result.returncode == 4
    assert "generator.json is missing" in result.stderr and "Traceback" not in result.stderr
