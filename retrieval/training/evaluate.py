"""`xmodal eval`: concept-level Recall@1/5/10 and median rank in every direction of the space.

Queries are the items of one split; the gallery is the same split (or, with `gallery="all"`, every
item outside training: test and held-out together, so a query must also beat look-alikes of the
other split). A retrieved item is a hit when it shows the query's concept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.training.data import prepare_pairs
from retrieval.training.metrics import concept_ranks, summarise

DIRECTIONS = (("text", "image"), ("image", "text"), ("audio", "image"), ("audio", "text"), ("text", "audio"))
MIN_GALLERY = 1000  # below this, recall figures say little; reported as a warning


@dataclass
class EvalReport:
    model: str
    pairs: str
    split: str
    gallery: str
    items: int
    directions: dict[str, dict[str, float]] = field(default_factory=dict)  # "text→image" -> metrics
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(model: str, pairs_file: Path, split: str = "test", gallery: str = "split", workers: int | None = None,
             device: str | None = None, progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Embed the items of `split` (and the gallery) with `model` and rank every direction.

    Raises:
        TrainingDataError: no items in that split.
        ModelNotFoundError, ModelLoadError: a bad model spec.
    """
    from retrieval.encoders.factory import create_encoder

    started = time.monotonic()
    encoder = create_encoder(model, device=device)
    splits = (split,) if gallery == "split" else tuple(dict.fromkeys((split, "test", "heldout")))
    prepared = prepare_pairs(pairs_file, splits, encoder.inputs, need=(), decode=("image", "audio"),
                             workers=workers, progress=progress)
    pairs, media = prepared.pairs, prepared.media
    concepts = np.asarray(prepared.concepts)
    vectors: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for modality in ("image", "audio", "text"):
        rows = [i for i, p in enumerate(pairs) if (p.captions if modality == "text" else getattr(p, modality))]
        present[modality] = np.asarray(rows, dtype=np.int64)
        if not rows:
            continue
        if modality == "image":
            vectors[modality] = encoder.encode_pixels(np.stack([media.pixels[pairs[i].image] for i in rows]))
        elif modality == "audio":
            clips = [pairs[i].audio for i in rows]
            embedded = encoder.embed_log_mels([media.log_mels[c] for c in clips], [media.durations[c] for c in clips])
            vectors[modality] = np.stack([e.pooled for e in embedded])
        else:  # one caption per item, rotating through the templates so that each one is measured
            vectors[modality] = encoder.encode_text([pairs[i].captions[i % len(pairs[i].captions)] for i in rows])
    in_split = np.asarray([p.split == split for p in pairs])
    report = EvalReport(model, str(pairs_file), split, gallery, int(in_split.sum()), dropped=prepared.dropped)
    for source, target in DIRECTIONS:
        if source not in vectors or target not in vectors:
            continue
        queries = in_split[present[source]]  # query rows: items of the split
        if not queries.any():
            continue
        metrics = summarise(concept_ranks(vectors[source][queries], vectors[target],
                                          concepts[present[source]][queries], concepts[present[target]]))
        metrics["gallery"] = len(present[target])
        report.directions[f"{source}→{target}"] = metrics
    small = {name: m["gallery"] for name, m in report.directions.items() if m["gallery"] < MIN_GALLERY}
    if small:
        listed = ", ".join(f"{name} {size}" for name, size in small.items())
        report.warnings.append(f"galleries under {MIN_GALLERY} items ({listed}): the figures are optimistic")
    report.seconds = round(time.monotonic() - started, 1)
    return report
