"""The optional diffusers adapter, on tiny randomly initialised pipelines built in the test (no
download): Stable unCLIP draws any query from its vector, a text-to-image pipeline draws text
queries only, candidates are seeded and verified, and what must not load does not."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers", reason="the [diffusers] extra is not installed")
pytest.importorskip("transformers", reason="the [diffusers] extra is not installed")

from generation.diffusers_adapter import load_diffusers_drawer, parse_spec  # noqa: E402
from generation.errors import GeneratorLoadError  # noqa: E402
from retrieval.settings import Settings  # noqa: E402
from tests.helpers.tiny_diffusers import tiny_text_pipeline, tiny_unclip_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, micro_encoder) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pipelines")
    return {"unclip": tiny_unclip_pipeline(folder, micro_encoder.dim), "text": tiny_text_pipeline(folder),
            "narrow": tiny_unclip_pipeline(folder / "narrow", micro_encoder.dim // 2)}


@pytest.fixture(scope="module")
def micro_collection(tmp_path_factory, micro_model) -> Path:
    """Six pictures and two sounds indexed with the micro model."""
    from retrieval.compose import run_index
    from retrieval.demo import write_collection

    root = tmp_path_factory.mktemp("micro-collection")
    write_collection(root / "media", images=6, sounds=2, seed=1, concepts=3)
    run_index(Settings(db_dir=root / "db", model=str(micro_model), workers=1), [root / "media"])
    return root / "db"


def _engine(db: Path, micro_model: Path, generator: str):
    from retrieval.compose import build_engine

    return build_engine(Settings(db_dir=db, model=str(micro_model), generator=generator))


def test_unclip_draws_every_query_kind_from_its_vector_and_verifies(pipelines, micro_encoder):
    from retrieval.generate import generate_verified

    drawer = load_diffusers_drawer(f"diffusers:{pipelines['unclip']}?steps=2", "cpu")
    assert drawer.dim == micro_encoder.dim and all(drawer.can_draw(kind) for kind in ("text", "audio", "image"))
    query = micro_encoder.encode_text(["a big red circle on grey"])[0]
    made = generate_verified(drawer, micro_encoder, query, candidates=3, seed=5)
    assert made.pixels.shape == (32, 32, 3) and made.score == max(made.candidate_scores)
    again = generate_verified(drawer, micro_encoder, query, candidates=3, seed=5)
    assert np.array_equal(again.pixels, made.pixels)  # seeded
    first_alone = drawer.draw(query, None, 1, seed=5)[0]
    assert np.array_equal(first_alone, drawer.draw(query, None, 3, seed=5)[0])  # row i depends on (seed, i) only
    other = micro_encoder.encode_text(["a small blue square on white"])[0]
    assert not np.array_equal(drawer.draw(other, None, 1, seed=5)[0], first_alone)  # the vector steers it


def test_a_text_pipeline_draws_text_queries_only(pipelines, micro_collection, micro_model):
    engine = _engine(micro_collection, micro_model, f"diffusers:{pipelines['text']}?steps=1&guidance=0")
    try:
        assert engine.generator.can_draw("text") and not engine.generator.can_draw("audio")
        words = engine.search_text("a purple star", k=2, generate="always")
        assert words.generated is not None and words.generated.generator == f"diffusers:{pipelines['text']}"
        assert Path(words.generated_path).is_file() and words.generated.query_kind == "text"
        sound = next((micro_collection.parent / "media").rglob("*.wav"))
        heard = engine.search_file(sound, "audio", k=2, generate="always")
        assert heard.generated is None and heard.results  # answered, without a picture it cannot draw
    finally:
        engine.close()


def test_the_engine_uses_the_chosen_unclip_pipeline(pipelines, micro_collection, micro_model):
    engine = _engine(micro_collection, micro_model, f"diffusers:{pipelines['unclip']}?steps=2")
    try:
        sound = next((micro_collection.parent / "media").rglob("*.wav"))
        heard = engine.search_file(sound, "audio", k=2, generate="always")
        assert heard.generated is not None and heard.generated.query_kind == "audio"
    finally:
        engine.close()


def test_a_pipeline_of_another_space_is_refused_with_the_reason(pipelines, micro_collection, micro_model):
    from retrieval.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="dimensional"):
        _engine(micro_collection, micro_model, f"diffusers:{pipelines['narrow']}")


def test_pickled_weights_are_never_loaded(tmp_path, pipelines):
    import shutil

    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    folder = tmp_path / "pickled"
    shutil.copytree(pipelines["text"], folder)
    for weights in folder.rglob("*.safetensors"):  # the same pipeline, its weights swapped for pickles
        weights.with_name(weights.name.replace(".safetensors", ".bin")).write_bytes(pickle.dumps(Payload()))
        weights.unlink()
    with pytest.raises(GeneratorLoadError, match="cannot load"):
        load_diffusers_drawer(f"diffusers:{folder}", "cpu")
    assert not sentinel.exists()


def test_offline_a_hub_pipeline_fails_fast_with_a_clear_line(micro_collection, micro_model):
    from retrieval.errors import ModelLoadError

    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offline"):
        _engine(micro_collection, micro_model, "diffusers:stabilityai/sd-turbo?steps=1&guidance=0")
    assert time.perf_counter() - started < 15


def test_spec_options_are_checked():
    assert parse_spec("diffusers:org/name?steps=4&guidance=7.5").steps == 4
    for bad, reason in (("diffusers:", "names no pipeline"), ("diffusers:x?strength=1", "unknown"),
                        ("diffusers:x?steps=0", "at least 1"), ("diffusers:x?guidance=nan", "finite"),
                        ("diffusers:x?steps=four", "not a number"), ("x", "not a diffusers")):
        with pytest.raises(GeneratorLoadError, match=reason):
            parse_spec(bad)


def test_without_the_extra_the_message_says_how_to_install(monkeypatch, pipelines):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # an injected fault: the import fails
    with pytest.raises(GeneratorLoadError, match=r"xmodal\[diffusers\]"):
        load_diffusers_drawer(f"diffusers:{pipelines['unclip']}", "cpu")


def test_none_turns_the_fallback_off_and_a_bad_directory_is_an_error(micro_collection, micro_model, tmp_path):
    from retrieval.errors import ModelLoadError

    engine = _engine(micro_collection, micro_model, "none")
    try:
        assert engine.generator is None
        assert engine.search_text("a purple star", k=1, generate="always").generated is None
    finally:
        engine.close()
    with pytest.raises(ModelLoadError, match="cannot use the generator"):
        _engine(micro_collection, micro_model, str(tmp_path / "nothing-here"))
