"""`xmodal bench generate`: does the generator draw what was asked, and how fast?

For each concept of the synthetic world that the demo collection leaves out (every purple thing and
every hexagon), a text query (a random caption of it) and an audio query (a fresh sound of it) are
embedded, and a verified picture is generated for each (the best of 4 candidates). The starter's
image tower then judges the picture zero-shot: among the canonical captions of all 384 concepts,
is the right one ranked first? Reported per query kind, for the whole concept and per attribute,
separately for concepts whose shape–colour pair the models trained on and for held-out pairs they
never saw; latency is the wall time of one verified picture.

Speed on its own: the generator drawing `b` pictures in one call for b = 1, 2, 4, ... 32 (no
verification), ms per picture at batch 1 and pictures/s at each batch, medians of 5 timed calls
after a warm-up; the best batch is the one with the most pictures/s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bench.machine import cpu_name
from retrieval.data import world
from retrieval.data.world import Concept
from retrieval.generate import DEFAULT_CANDIDATES, generate_verified

ABSENT_SHAPE, ABSENT_COLOUR = "hexagon", "purple"  # what `xmodal demo` leaves out of its collection


def absent_concepts() -> list[Concept]:
    return [c for c in world.all_concepts() if c.shape == ABSENT_SHAPE or c.colour == ABSENT_COLOUR]


@dataclass
class KindFigures:
    queries: int = 0
    concept: int = 0  # all four attributes right
    attributes: dict[str, int] = field(default_factory=lambda: {name: 0 for name in world.ATTRIBUTES})
    millis: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # cosine of the kept picture to its query

    def summary(self) -> dict:
        n = max(self.queries, 1)
        return {"queries": self.queries, "concept_recognised": self.concept / n,
                "attribute_recognised": {k: v / n for k, v in self.attributes.items()},
                "median_ms": float(np.median(self.millis)) if self.millis else None,
                "p90_ms": float(np.percentile(self.millis, 90)) if self.millis else None,
                "median_score": float(np.median(self.scores)) if self.scores else None}


@dataclass
class GenerationReport:
    generator: str
    model: str
    candidates: int
    steps: int
    cpu: str
    cores: int
    python: str
    groups: dict[str, dict[str, KindFigures]] = field(default_factory=dict)  # group -> kind -> figures
    speed: list[dict] = field(default_factory=list)  # {"batch", "seconds": [...], "images_per_second"}

    def speed_summary(self) -> dict:
        if not self.speed:
            return {}
        best = max(self.speed, key=lambda row: row["images_per_second"])
        one = next(row for row in self.speed if row["batch"] == 1)
        return {"batch_1_ms": statistics.median(one["seconds"]) * 1000, "best_batch": best["batch"],
                "best_images_per_second": best["images_per_second"]}

    def table(self) -> str:
        lines = [f"generator {self.generator} for {self.model}: best of {self.candidates}, {self.steps} steps; "
                 f"{self.cpu}, {self.cores} cores",
                 f"{'concepts':<22} {'query':<6} {'n':>4} {'concept':>8} {'shape':>6} {'colour':>7} {'size':>5} "
                 f"{'backgr':>7} {'ms p50':>7} {'ms p90':>7}"]
        for group, kinds in self.groups.items():
            for kind, figures in kinds.items():
                s = figures.summary()
                a = s["attribute_recognised"]
                lines.append(f"{group:<22} {kind:<6} {s['queries']:>4} {s['concept_recognised']:>8.2f} "
                             f"{a['shape']:>6.2f} {a['colour']:>7.2f} {a['size']:>5.2f} {a['background']:>7.2f} "
                             f"{s['median_ms']:>7.0f} {s['p90_ms']:>7.0f}")
        if self.speed:
            summary = self.speed_summary()
            lines.append(f"drawing alone ({self.steps} steps, no verification): "
                         + ", ".join(f"batch {row['batch']}: {row['images_per_second']:.1f}/s" for row in self.speed))
            lines.append(f"batch 1: {summary['batch_1_ms']:.0f} ms per picture; best batch {summary['best_batch']}: "
                         f"{summary['best_images_per_second']:.1f} pictures/s")
        return "\n".join(lines)

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "groups"}
        body["groups"] = {g: {k: f.summary() for k, f in kinds.items()} for g, kinds in self.groups.items()}
        body["speed_summary"] = self.speed_summary()
        return json.dumps(body, indent=2) + "\n"


def measure_drawing(drawer, vector: np.ndarray, batches=(1, 2, 4, 8, 16, 32), repeats: int = 5) -> list[dict]:
    """Pictures/s of `drawer` at each batch size: medians of `repeats` calls after a warm-up call."""
    rows = []
    for batch in batches:
        drawer.draw(vector, None, batch, 0)  # warm-up: allocations, kernel choice
        seconds = []
        for repeat in range(repeats):
            started = time.perf_counter()
            drawer.draw(vector, None, batch, repeat + 1)
            seconds.append(time.perf_counter() - started)
        rows.append({"batch": batch, "seconds": seconds, "images_per_second": batch / statistics.median(seconds)})
    return rows


def own_generator(model: str) -> Path:
    """The generator a model directory carries (MODEL_DIR/generator), as search uses it by default.

    Raises:
        ModelNotFoundError: the model spec names no directory.
        GeneratorLoadError: the model has no generator of its own.
    """
    from generation.errors import GeneratorLoadError
    from retrieval.encoders.factory import resolve_model_dir

    folder = resolve_model_dir(model) / "generator"
    if not (folder / "generator.json").is_file():
        raise GeneratorLoadError(f"the model {model} has no generator of its own ({folder} holds no "
                                 f"generator.json): pass --generator DIR")
    return folder


def run_generation_benchmark(generator_dir: Path, model: str = "starter", candidates: int = DEFAULT_CANDIDATES,
                             seed: int = 0, limit: int | None = None) -> GenerationReport:
    """Generate for every absent concept (or the first `limit`), once from words and once from a sound."""
    import torch

    from generation.drawer import FlowDrawer
    from generation.storage import load_generator
    from retrieval.encoders.factory import create_encoder

    torch.manual_seed(seed)
    encoder = create_encoder(model)
    generator = load_generator(generator_dir, encoder.device)
    drawer = FlowDrawer(generator, str(generator_dir), "")
    everything = world.all_concepts()
    captions = encoder.encode_text([world.canonical_caption(c) for c in everything])  # (384, D)
    concepts = absent_concepts()[:limit] if limit else absent_concepts()
    report = GenerationReport(str(generator_dir), model, candidates, generator.config.steps, cpu_name(),
                              os.cpu_count() or 1, platform.python_version())
    for number, concept in enumerate(concepts):
        group = "held-out pairs" if world.is_heldout(concept) else "trained pairs"
        rng = np.random.default_rng([seed, number])
        queries = {"text": encoder.encode_text([world.caption(concept, rng)])[0],
                   "audio": encoder.encode_audio([world.render_sound(concept, rng)])[0]}
        for kind, vector in queries.items():
            made = generate_verified(drawer, encoder, vector, candidates, seed=seed + number)
            guess = everything[int(np.argmax(captions @ made.vector))]  # the verifier's own embedding
            figures = report.groups.setdefault(group, {}).setdefault(kind, KindFigures())
            figures.queries += 1
            figures.concept += guess == concept
            for name in world.ATTRIBUTES:
                figures.attributes[name] += getattr(guess, name) == getattr(concept, name)
            figures.millis.append(made.millis)
            figures.scores.append(made.score)
    report.speed = measure_drawing(drawer, captions[0])
    return report

