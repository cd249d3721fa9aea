"""Write a corpus of the synthetic world (retrieval/data/world.py) for contrastive training and evaluation.

    OUT/images/{id}.png   OUT/audio/{id}.wav (16 kHz PCM_16)   OUT/corpus.json   OUT/pairs.jsonl

Three splits: `train` and `test` draw from the 320 seen concepts (test: the same combinations, new
samples), `heldout` from the 64 held-out ones. Concepts are dealt round-robin through fresh random
permutations, so every concept of a split appears equally often (to within one) and a small corpus
still covers them all.

Every item is made from its own generators, seeded by (seed, split, item, stream), so items can be
made in any order on any number of processes and the files are byte-identical for a seed.
pairs.jsonl is written last and atomically: a folder without it is an unfinished corpus.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.atomic import write_bytes_atomic
from retrieval.data import world

FORMAT = "xmodal-synth-corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "test", "heldout")
MIN_ITEMS = 30
CAPTIONS_PER_ITEM = 3
# Streams of an item's seed (seed, split, item, stream); stream 0 of item 0 deals the split's concepts.
PLAN_STREAM, CAPTION_STREAM, IMAGE_STREAM, SOUND_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class CorpusSummary:
    out: Path
    counts: dict[str, int]  # items per split, in SPLITS order
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class _Task:
    out: str
    seed: int
    split: str
    item: int
    concept: world.Concept
    image_size: int


def split_counts(n: int) -> dict[str, int]:
    """Items per split for a corpus of `n`: a tenth each for test and heldout, the rest for train."""
    return {"train": n - 2 * (n // 10), "test": n // 10, "heldout": n // 10}


def write_corpus(out: Path, n: int = 12_000, seed: int = 0, image_size: int = 128, workers: int = 2,
                 progress: Callable[[int, int], None] | None = None) -> CorpusSummary:
    """Generate `n` items of the synthetic world under `out` (a new or empty folder).

    Args:
        workers: processes (spawned, so safe with any parent); 1 makes everything in this process.
        progress: called as progress(done, total) after each item.

    Raises:
        ValueError: n < 30, a negative seed, image_size < 32 or workers < 1.
        FileExistsError: `out` exists and is not empty.
    """
    _check_arguments(n, seed, image_size, workers)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(errno.EEXIST, "refusing to write a corpus over a file", str(out))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(errno.EEXIST, "refusing to write a corpus into a folder that is not empty", str(out))
    started = time.perf_counter()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    counts = split_counts(n)
    tasks = [_Task(str(out), seed, split, item, concept, image_size)
             for split in SPLITS for item, concept in enumerate(_deal_concepts(seed, split, counts[split]))]
    records = []
    for record in _run(tasks, workers):
        records.append(record)
        if progress is not None:
            progress(len(records), len(tasks))
    write_bytes_atomic(out / "corpus.json", (json.dumps(_describe(n, seed, image_size, counts), indent=2)
                                             + "\n").encode())
    lines = "".join(json.dumps(record) + "\n" for record in records)
    write_bytes_atomic(out / "pairs.jsonl", lines.encode())
    return CorpusSummary(out=out, counts=counts, seconds=time.perf_counter() - started)


def _check_arguments(n: int, seed: int, image_size: int, workers: int) -> None:
    if n < MIN_ITEMS:
        raise ValueError(f"a corpus needs at least {MIN_ITEMS} items (3 splits of at least 3), got n={n}")
    if seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if workers < 1:
        raise ValueError(f"workers must be 1 or more, got {workers}")


def _deal_concepts(seed: int, split: str, count: int) -> list[world.Concept]:
    """`count` concepts of the split's pool, dealt from consecutive random permutations of it."""
    pool = world.heldout_concepts() if split == "heldout" else world.seen_concepts()
    rng = np.random.default_rng([seed, SPLITS.index(split), 0, PLAN_STREAM])
    dealt: list[world.Concept] = []
    while len(dealt) < count:
        dealt.extend(pool[int(index)] for index in rng.permutation(len(pool)))
    return dealt[:count]


def _run(tasks: list[_Task], workers: int):
    """Items' records in task order, made here or on `workers` spawned processes."""
    if workers == 1 or len(tasks) < 2:
        yield from map(_make_item, tasks)
        return
    # spawn, not fork: the parent may hold threads (torch, BLAS) that a forked child would inherit locked.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), _ignore_interrupts) as pool:
        yield from pool.imap(_make_item, tasks, chunksize=max(1, min(64, len(tasks) // (workers * 8))))


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool


def _make_item(task: _Task) -> dict:
    """Render, write and describe one item: its pairs.jsonl record (paths relative to the corpus)."""
    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([task.seed, SPLITS.index(task.split), task.item, stream])

    item_id = f"{task.split}-{task.item:06d}"
    image_path, audio_path = f"images/{item_id}.png", f"audio/{item_id}.wav"
    out = Path(task.out)
    world.render_image(task.concept, rng(IMAGE_STREAM), task.image_size).save(out / image_path, "PNG")
    sound = io.BytesIO()
    world.write_sound(sound, task.concept, rng(SOUND_STREAM))
    (out / audio_path).write_bytes(sound.getvalue())
    return {
        "id": item_id, "split": task.split, "image": image_path, "audio": audio_path,
        "captions": world.captions(task.concept, rng(CAPTION_STREAM), CAPTIONS_PER_ITEM),
        "attributes": task.concept.attributes, "concept": task.concept.key,
    }


def _describe(n: int, seed: int, image_size: int, counts: dict[str, int]) -> dict:
    """corpus.json: how the corpus was made and the world it shows, enough to evaluate without code."""
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "seed": seed, "n": n, "counts": counts,
        "image_size": image_size, "sample_rate": world.SAMPLE_RATE,
        "attributes": {name: list(values) for name, values in world.ATTRIBUTES.items()},
        "heldout_pairs": sorted([shape, colour] for shape, colour in world.HELDOUT_PAIRS),
        "synonyms": {name: {value: list(words) for value, words in table.items()}
                     for name, table in world.SYNONYMS.items()},
        "templates": list(world.TEMPLATES),
        "colour_rgb": {colour: list(rgb) for colour, rgb in world.COLOUR_RGB.items()},
        "colour_pitch_hz": {colour: round(world.colour_pitch(colour), 2) for colour in world.COLOURS},
    }
