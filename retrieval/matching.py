"""The match decision at search time: "this matches" or "nothing here matches", with a calibrated
confidence, for every query the engine answers.

The calibration (fitted per model by `xmodal calibrate`, shipped as `calibration.json` in the
model directory) maps features to a probability; the features need the query's scores against a
background sample of the collection, drawn here from the stored item vectors and redrawn when a new
index generation arrives (the collection changed).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from index.collection import Collection
from retrieval.calibration import BACKGROUND_SIZE, CALIBRATION_NAME, Calibration
from retrieval.decision import Decision, query_features

MIN_BACKGROUND = 8  # fewer items than this: too few to standardise against


def load_calibration(model_dir: Path | None, fingerprint: str) -> Calibration | None:
    """The calibration shipped in a model directory, if it was fitted for exactly this model."""
    if model_dir is None or not (Path(model_dir) / CALIBRATION_NAME).is_file():
        return None
    try:
        calibration = Calibration.from_json((Path(model_dir) / CALIBRATION_NAME).read_text())
    except (ValueError, KeyError, TypeError):
        return None  # unreadable or from another xmodal: searches still work, without a decision
    return calibration if calibration.fingerprint == fingerprint else None


class MatchJudge:
    """Decides whether the best hits of a query match, against the collection's background."""

    def __init__(self, calibration: Calibration, collection: Collection, dim: int, seed: int = 0) -> None:
        self.calibration = calibration
        self.collection = collection
        self.dim = dim
        self.seed = seed
        self._lock = threading.Lock()
        self._background: dict[str, np.ndarray] = {}
        self._generation = -1

    def background(self, target: str) -> np.ndarray:
        """Up to BACKGROUND_SIZE item vectors (n, dim) of one modality, redrawn per index generation."""
        with self._lock:
            if self._generation != self.collection.generation:
                self._background, self._generation = {}, self.collection.generation
            if target not in self._background:
                self._background[target] = self.collection.store.sample_item_vectors(
                    target, self.dim, BACKGROUND_SIZE, self.seed)
            return self._background[target]

    def decide(self, vector: np.ndarray, kind: str, target_scores: dict[str, list[float]],
               threshold: float | None = None) -> Decision | None:
        """The decision for a query of `kind` given its best scores per searched modality
        (descending); over several modalities the most confident one speaks. None when nothing
        could be judged (no map for this kind of query, or too small a collection)."""
        threshold = self.calibration.threshold if threshold is None else threshold
        best: tuple[float, str] | None = None
        for target, scores in target_scores.items():
            model = self.calibration.maps.get(f"{kind}→{target}")
            background = self.background(target)
            if model is None or not scores or len(background) < MIN_BACKGROUND:
                continue
            features = query_features(np.asarray(scores[:2]), background @ vector)
            confidence = float(model.probability(features)[0])
            if best is None or confidence > best[0]:
                best = (confidence, target)
        if best is None:
            return None
        confidence, target = best
        noun = {"image": "picture", "audio": "sound"}[target]
        if confidence >= threshold:
            return Decision(True, confidence, threshold, f"the best {noun} is likely to show what was asked")
        return Decision(False, confidence, threshold, f"no {noun} in the collection is likely to show what was asked")
