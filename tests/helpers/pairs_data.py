"""Small pairs files for training tests: a handful of concepts of the synthetic world, many samples
each, so that a micro model learns them within seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retrieval.data import world
from retrieval.data.world import Concept

# Eight concepts that differ in one attribute each from some other: colour, shape, size, background.
CONCEPTS = (
    Concept("circle", "red", "big", "grey"), Concept("circle", "blue", "big", "grey"),
    Concept("square", "red", "big", "grey"), Concept("square", "blue", "big", "grey"),
    Concept("circle", "red", "small", "white"), Concept("star", "yellow", "big", "black"),
    Concept("cross", "green", "small", "grey"), Concept("triangle", "pink", "big", "white"),
)


def write_pairs(out: Path, per_concept: dict[str, int], seed: int = 0, concepts=CONCEPTS,
                image_size: int = 64) -> Path:
    """Items of every concept for each split in `per_concept` (e.g. {"train": 12, "test": 4})."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    lines = []
    for split_index, (split, count) in enumerate(per_concept.items()):
        for c_index, concept in enumerate(concepts):
            for i in range(count):
                rng = np.random.default_rng([seed, split_index, c_index, i])
                name = f"{split}-{c_index}-{i}"
                world.render_image(concept, rng, size=image_size).save(out / "images" / f"{name}.png")
                world.write_sound(out / "audio" / f"{name}.wav", concept, rng)
                lines.append({"id": name, "split": split, "image": f"images/{name}.png", "audio": f"audio/{name}.wav",
                              "captions": world.captions(concept, rng, 2), "concept": concept.key})
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
