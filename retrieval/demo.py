"""`xmodal demo`: the whole product in two minutes, offline.

Generate a small collection of the synthetic world (some concepts deliberately left out), index it
with the bundled starter model, ask text and sound questions, print the ranked answers and write a
report page with thumbnails, audio players and scores. File names say what each file shows, so
anyone can check the answers by eye; the report marks them too.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.data import world
from retrieval.data.world import Concept

MARKER = "xmodal-demo.json"  # a folder holding this may be replaced by the next demo run
ABSENT_SHAPE, ABSENT_COLOUR = "hexagon", "purple"  # nothing with these is in the demo collection

# (kind, query, target modality); audio queries are fresh sounds of the named concept.
QUERIES = (
    ("text", "a big red circle on grey", "image"),
    ("text", "small yellow star, white background", "image"),
    ("text", "a large green square on a striped background", "image"),
    ("text", "tiny blue triangle on black", "image"),
    ("text", "a big purple hexagon on white", "image"),  # absent: no answer can be right
    ("audio", "big orange cross on grey", "image"),
    ("audio", "small cyan circle on black", "image"),
    ("audio", "big pink triangle on stripes", "audio"),
    ("text", "big red star on stripes", "audio"),
)


@dataclass
class DemoHit:
    rank: int
    score: float
    path: str  # relative to the demo folder
    modality: str
    concept: str
    correct: bool


@dataclass
class DemoAnswer:
    kind: str  # "text" | "audio"
    query: str  # the text, or the concept a query sound was made from
    target: str
    present: bool  # does the collection hold this concept at all?
    query_file: str | None = None  # the query sound, relative to the demo folder
    hits: list[DemoHit] = field(default_factory=list)
    millis: float = 0.0
    match: bool | None = None  # the calibrated decision (None: not judged)
    confidence: float | None = None
    generated_file: str | None = None  # drawn because nothing matched, relative to the demo folder
    generated_score: float | None = None


@dataclass
class DemoRun:
    out: Path
    images: int
    sounds: int
    answers: list[DemoAnswer]
    seconds: dict[str, float]
    model: str

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def _concept_of_text(text: str) -> Concept:
    """The concept a demo query names (queries use the base words of the world)."""
    words = text.replace(",", " ").split()
    size = "big" if any(w in ("big", "large", "huge") for w in words) else "small"
    picks = {name: next(v for v in values if v in words or (v == "stripes" and "striped" in words))
             for name, values in (("shape", world.SHAPES), ("colour", world.COLOURS),
                                  ("background", world.BACKGROUNDS))}
    return Concept(size=size, **picks)


def _present(concept: Concept) -> bool:
    return concept.shape != ABSENT_SHAPE and concept.colour != ABSENT_COLOUR


def _slug(concept: Concept) -> str:
    return concept.key.replace(" ", "-")


def prepare_folder(out: Path) -> None:
    """Create `out`, replacing an earlier demo there but nothing else."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} exists and is not an earlier demo: choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_collection(media: Path, images: int, sounds: int, seed: int, concepts: int = 60) -> dict[str, Concept]:
    """Images and sounds of `concepts` concepts (every present one the queries ask for among them),
    none with the absent shape or colour, each concept several times: path -> concept."""
    rng = np.random.default_rng(seed)
    asked = [c for c in dict.fromkeys(_concept_of_text(text) for _, text, _ in QUERIES) if _present(c)]
    others = [c for c in world.all_concepts() if _present(c) and c not in asked]
    picked = asked + [others[int(i)] for i in rng.permutation(len(others))[: max(0, concepts - len(asked))]]
    written: dict[str, Concept] = {}
    for kind, count in (("images", images), ("sounds", sounds)):
        (media / kind).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            concept = picked[index % len(picked)]
            item_rng = np.random.default_rng([seed, 1 if kind == "images" else 2, index])
            name = f"{kind}/{_slug(concept)}-{index:04d}" + (".png" if kind == "images" else ".wav")
            if kind == "images":
                world.render_image(concept, item_rng).save(media / name)
            else:
                world.write_sound(media / name, concept, item_rng)
            written[name] = concept
    return written


def build_collection(work: Path, images: int, sounds: int, seed: int = 0, concepts: int = 60,
                     model: str = "starter", workers: int | None = None) -> Path:
    """`write_collection` into WORK/media, indexed with `model` into WORK/db: that db folder.
    For the benchmarks that need a collection to serve (`xmodal bench api`, `bench load`)."""
    from retrieval.compose import run_index
    from retrieval.settings import Settings

    write_collection(work / "media", images, sounds, seed, concepts)
    run_index(Settings(db_dir=work / "db", model=model, workers=workers), [work / "media"])
    return work / "db"


def run_demo(out: Path, model: str = "starter", images: int = 240, sounds: int = 120, k: int = 5, seed: int = 0,
             on_stage: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> DemoRun:
    """Build, index and query the demo collection in `out`, and write `out/report.html`.

    Raises:
        FileExistsError: `out` holds something other than an earlier demo.
        ModelNotFoundError, ModelLoadError: the model cannot be loaded.
    """
    from retrieval.compose import build_engine, run_index
    from retrieval.demo_report import write_report
    from retrieval.settings import load_settings

    stage = on_stage or (lambda text: None)
    out = Path(out).resolve()
    prepare_folder(out)
    (out / MARKER).write_text(json.dumps({"model": model, "seed": seed}) + "\n")
    seconds: dict[str, float] = {}

    started = time.monotonic()
    stage(f"generating {images} images and {sounds} sounds of 60 concepts (no {ABSENT_COLOUR} things, "
          f"no {ABSENT_SHAPE}s)")
    truth = write_collection(out / "media", images, sounds, seed)
    seconds["generate"] = time.monotonic() - started

    started = time.monotonic()
    stage(f"indexing them with the {model} model")
    settings = load_settings(db=out / "db", model=model)
    run_index(settings, [out / "media"], progress)
    seconds["index"] = time.monotonic() - started

    started = time.monotonic()
    engine = build_engine(settings)
    media_root = (out / "media").resolve()
    answers = []
    (out / "queries").mkdir(exist_ok=True)
    for number, (kind, text, target) in enumerate(QUERIES):
        concept = _concept_of_text(text)
        answer = DemoAnswer(kind, text, target, _present(concept))
        begin = time.perf_counter()
        if kind == "text":
            result = engine.search_text(text, k, target, generate="auto")
        else:
            answer.query_file = f"queries/{_slug(concept)}.wav"
            world.write_sound(out / answer.query_file, concept, np.random.default_rng([seed, 99, number]))
            result = engine.search_file(out / answer.query_file, "audio", k, target, generate="auto")
        answer.millis = (time.perf_counter() - begin) * 1000
        if result.decision is not None:
            answer.match, answer.confidence = result.decision.match, result.decision.confidence
        if result.generated is not None:
            answer.generated_file = Path(result.generated_path).resolve().relative_to(out).as_posix()
            answer.generated_score = result.generated.score
        for rank, hit in enumerate(result.results, 1):
            relative = Path(hit.path).resolve().relative_to(media_root).as_posix()
            found = truth[relative]
            answer.hits.append(DemoHit(rank, hit.score, f"media/{relative}", hit.modality, found.key,
                                       found == concept))
        answers.append(answer)
    seconds["search"] = time.monotonic() - started
    run = DemoRun(out, images, sounds, answers, seconds, model)
    write_report(run)
    return run
