"""Fitting and judging the match decision on labelled present/absent queries.

From a pairs file (the synthetic world's, or a user's own), one split is cut in two by concept: a
share of its concepts is removed outright ("absent"), and of the rest, half of each concept's items
form the collection and the other half serve as queries ("present"), so no query is ever its own
answer. Every query is asked as words (one of its captions) and as a sound, against the images and
against the sounds of the collection; each (query modality, target modality) gets its own logistic
map from the features of `retrieval.decision`.

Search here is exact brute force in numpy: calibration collections have a few thousand items.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.decision import FEATURES, LogisticMap, auroc, best_threshold, f1_at, fit_logistic, query_features

BACKGROUND_SIZE = 512  # collection items each query is standardised against
DEFAULT_THRESHOLD = 0.5
KINDS = ("text", "audio", "image")
TARGETS = ("image", "audio")


@dataclass(frozen=True)
class LabelledQueries:
    """Features of queries of one kind against one target modality, with their labels."""

    features: np.ndarray  # (n, len(FEATURES))
    labels: np.ndarray  # (n,) bool: the concept is in the collection

    @property
    def raw(self) -> np.ndarray:
        return self.features[:, 0]  # the raw top cosine


def background_sample(vectors: np.ndarray, size: int = BACKGROUND_SIZE, seed: int = 0) -> np.ndarray:
    """Up to `size` rows of `vectors`, drawn without replacement (seeded)."""
    if len(vectors) <= size:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))]


def features_against(queries: np.ndarray, gallery: np.ndarray, background: np.ndarray, top: int = 2) -> np.ndarray:
    """Decision features (m, F) of each query against a gallery, standardised by the background."""
    scores = queries @ gallery.T  # (m, n)
    best = -np.sort(-scores, axis=1)[:, :top]  # (m, top) descending
    spread = queries @ background.T  # (m, b)
    return np.stack([query_features(best[i], spread[i]) for i in range(len(queries))])


@dataclass(frozen=True)
class WorldVectors:
    """Embeddings of one split's items, one row per item."""

    concepts: np.ndarray  # (N,) concept ids
    images: np.ndarray  # (N, D)
    sounds: np.ndarray  # (N, D)
    captions: np.ndarray  # (N, D) one caption per item


def labelled_queries(vectors: WorldVectors, removed_share: float = 0.25,
                     seed: int = 0) -> dict[tuple[str, str], LabelledQueries]:
    """Remove a share of concepts, split the rest's items into collection and queries, and compute
    the features of every (query kind, target) pair."""
    rng = np.random.default_rng(seed)
    concepts = np.unique(vectors.concepts)
    removed = set(rng.choice(concepts, max(1, round(len(concepts) * removed_share)), replace=False).tolist())
    in_collection = np.zeros(len(vectors.concepts), dtype=bool)
    for concept in concepts:
        if concept in removed:
            continue
        members = rng.permutation(np.flatnonzero(vectors.concepts == concept))
        in_collection[members[: (len(members) + 1) // 2]] = True
    queries = ~in_collection
    labels = np.array([c not in removed for c in vectors.concepts[queries]])
    galleries = {"image": vectors.images[in_collection], "audio": vectors.sounds[in_collection]}
    asked = {"text": vectors.captions[queries], "audio": vectors.sounds[queries], "image": vectors.images[queries]}
    result = {}
    for target, gallery in galleries.items():
        background = background_sample(gallery, seed=seed)
        for kind, query_vectors in asked.items():
            result[(kind, target)] = LabelledQueries(features_against(query_vectors, gallery, background), labels)
    return result


def fit_calibration(sets: dict[tuple[str, str], LabelledQueries]) -> dict[str, LogisticMap]:
    """One logistic map per "kind→target" key."""
    return {f"{kind}→{target}": fit_logistic(data.features, data.labels) for (kind, target), data in sets.items()}


def judge(maps: dict[str, LogisticMap], sets: dict[tuple[str, str], LabelledQueries],
          threshold: float = DEFAULT_THRESHOLD) -> dict[str, dict[str, float]]:
    """Per key: calibrated AUROC and F1 at the one default threshold, beside the raw top cosine's
    AUROC and its best possible single threshold (chosen on these very queries: an upper bound)."""
    figures = {}
    for (kind, target), data in sets.items():
        key = f"{kind}→{target}"
        confidence = maps[key].probability(data.features)
        raw_threshold, raw_f1 = best_threshold(data.raw, data.labels)
        figures[key] = {"queries": int(len(data.labels)), "present": int(data.labels.sum()),
                        "auroc": auroc(confidence, data.labels), "f1": f1_at(confidence, data.labels, threshold),
                        "raw_auroc": auroc(data.raw, data.labels), "raw_best_threshold": raw_threshold,
                        "raw_best_f1": raw_f1}
    # One raw floor for every kind of query: the best cut for text queries, applied to sound queries too.
    for target in TARGETS:
        text, audio = sets.get(("text", target)), sets.get(("audio", target))
        if text is not None and audio is not None:
            floor = figures[f"text→{target}"]["raw_best_threshold"]
            figures[f"audio→{target}"]["raw_f1_at_text_floor"] = f1_at(audio.raw, audio.labels, floor)
    return figures


def embed_world_split(pairs_file: Path, split: str, encoder, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> WorldVectors:
    """Embed the items of one split that have an image, a sound and captions, as `xmodal eval`
    embeds them (one caption per item, rotating through the templates)."""
    from retrieval.training.data import prepare_pairs
    from retrieval.training.evaluate import embed_pairs

    prepared = prepare_pairs(pairs_file, (split,), encoder.inputs, need=("image", "audio", "captions"),
                             decode=("image", "audio"), workers=workers, progress=progress)
    vectors = embed_pairs(encoder, prepared).vectors  # every item has all three: rows line up
    return WorldVectors(np.asarray(prepared.concepts), vectors["image"], vectors["audio"], vectors["text"])


CALIBRATION_NAME = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """The fitted maps of one model, and where they came from."""

    model: str
    fingerprint: str  # of the encoder they were fitted for: another model's calibration never applies
    maps: dict[str, LogisticMap]
    threshold: float = DEFAULT_THRESHOLD
    fitted_on: dict | None = None
    figures: dict | None = None  # `judge` on the fitting queries

    def to_json(self) -> str:
        body = {"model": self.model, "fingerprint": self.fingerprint, "features": list(FEATURES),
                "threshold": self.threshold, "maps": {k: m.to_dict() for k, m in self.maps.items()},
                "fitted_on": self.fitted_on, "figures": self.figures}
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        body = json.loads(text)
        if tuple(body.get("features", ())) != FEATURES:
            raise ValueError(f"calibration uses features {body.get('features')}, this xmodal computes {FEATURES}")
        return cls(body["model"], body["fingerprint"], {k: LogisticMap.from_dict(v) for k, v in body["maps"].items()},
                   float(body.get("threshold", DEFAULT_THRESHOLD)), body.get("fitted_on"), body.get("figures"))


def calibrate_model(encoder, pairs_file: Path, split: str = "test", removed_share: float = 0.25, seed: int = 0,
                    workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Fit the match decision of `encoder` on one split of a pairs file.

    Raises:
        TrainingDataError: the split has no items with an image, a sound and captions.
        ValueError: too few present or absent queries to fit.
    """
    vectors = embed_world_split(pairs_file, split, encoder, workers, progress)
    sets = labelled_queries(vectors, removed_share, seed)
    maps = fit_calibration(sets)
    fitted_on = {"pairs": str(pairs_file), "split": split, "items": int(len(vectors.concepts)),
                 "removed_share": removed_share, "seed": seed}
    return Calibration(encoder.identity.spec, encoder.identity.fingerprint, maps, DEFAULT_THRESHOLD, fitted_on,
                       judge(maps, sets))


def check_calibration(calibration: Calibration, encoder, pairs_file: Path, split: str = "test",
                      removed_share: float = 0.25, seed: int = 1, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """`judge` a fitted calibration on another corpus (other items, other removed concepts).

    Raises:
        ValueError: the calibration was fitted for another model.
    """
    if calibration.fingerprint != encoder.identity.fingerprint:
        raise ValueError(f"this calibration was fitted for {calibration.model}, not {encoder.identity.spec}")
    vectors = embed_world_split(pairs_file, split, encoder, workers, progress)
    return judge(calibration.maps, labelled_queries(vectors, removed_share, seed), calibration.threshold)
