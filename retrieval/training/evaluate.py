"""`xmodal eval`: concept-level Recall@1/5/10 and median rank in every direction of the space.

Queries are the items of one split; the gallery is the same split (or, with `gallery="all"`, every
item outside training: test and held-out together, so a query must also beat look-alikes of the
other split). A retrieved item is a hit when it shows the query's concept.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.training.data import Prepared, prepare_pairs
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


@dataclass
class Embedded:
    """Every decoded item of some splits, embedded once: what any number of reports rank."""

    prepared: Prepared
    vectors: dict[str, np.ndarray]  # modality -> (rows, D)
    rows: dict[str, np.ndarray]  # modality -> indices into prepared.pairs of the items that have it


def gallery_splits(split: str, gallery: str) -> tuple[str, ...]:
    return (split,) if gallery == "split" else tuple(dict.fromkeys((split, "test", "heldout")))


def embed_pairs(encoder, prepared: Prepared) -> Embedded:
    """Images, pooled sounds and one caption per item, rotating through each split's items so that
    every caption template is measured."""
    pairs, media = prepared.pairs, prepared.media
    rotation, seen = [], Counter()  # each item's position within its split
    for pair in pairs:
        rotation.append(seen[pair.split])
        seen[pair.split] += 1
    vectors: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}
    for modality in ("image", "audio", "text"):
        have = [i for i, p in enumerate(pairs) if (p.captions if modality == "text" else getattr(p, modality))]
        rows[modality] = np.asarray(have, dtype=np.int64)
        if not have:
            continue
        if modality == "image":
            vectors[modality] = encoder.encode_pixels(np.stack([media.pixels[pairs[i].image] for i in have]))
        elif modality == "audio":
            clips = [pairs[i].audio for i in have]
            embedded = encoder.embed_log_mels([media.log_mels[c] for c in clips], [media.durations[c] for c in clips])
            vectors[modality] = np.stack([e.pooled for e in embedded])
        else:
            vectors[modality] = encoder.encode_text([pairs[i].captions[rotation[i] % len(pairs[i].captions)]
                                                     for i in have])
    return Embedded(prepared, vectors, rows)


def rank_split(embedded: Embedded, model: str, pairs_file: Path, split: str, gallery: str = "split") -> EvalReport:
    """Queries: the items of `split`; gallery: the items of `gallery_splits(split, gallery)`."""
    pairs = embedded.prepared.pairs
    concepts = np.asarray(embedded.prepared.concepts)
    in_split = np.asarray([p.split == split for p in pairs])
    in_gallery = np.asarray([p.split in gallery_splits(split, gallery) for p in pairs])
    vectors, rows = embedded.vectors, embedded.rows
    report = EvalReport(model, str(pairs_file), split, gallery, int(in_split.sum()),
                        dropped=embedded.prepared.dropped)
    for source, target in DIRECTIONS:
        if source not in vectors or target not in vectors:
            continue
        queries = in_split[rows[source]]  # (rows of source,) bool
        targets = in_gallery[rows[target]]
        if not queries.any() or not targets.any():
            continue
        metrics = summarise(concept_ranks(vectors[source][queries], vectors[target][targets],
                                          concepts[rows[source]][queries], concepts[rows[target]][targets]))
        metrics["gallery"] = int(targets.sum())
        report.directions[f"{source}→{target}"] = metrics
    small = {name: m["gallery"] for name, m in report.directions.items() if m["gallery"] < MIN_GALLERY}
    if small:
        listed = ", ".join(f"{name} {size}" for name, size in small.items())
        report.warnings.append(f"galleries under {MIN_GALLERY} items ({listed}): the figures are optimistic")
    return report


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
    prepared = prepare_pairs(pairs_file, gallery_splits(split, gallery), encoder.inputs, need=(),
                             decode=("image", "audio"), workers=workers, progress=progress)
    report = rank_split(embed_pairs(encoder, prepared), model, pairs_file, split, gallery)
    report.seconds = round(time.monotonic() - started, 1)
    return report
