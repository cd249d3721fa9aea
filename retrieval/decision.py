"""The match decision's arithmetic: per-query features that do not depend on the query's raw cosine
scale, a logistic calibration that turns them into a probability, and the metrics that judge it.

Why not a cosine floor: text and audio queries land at different cosine levels against the same
items (and a bigger model shifts them again), so a floor that suits one is wrong for the other.
Each query is instead compared with itself: its top score is standardised against its own scores
over a background sample of the collection (how far the best item stands out from a typical one
for *this* query), in the spirit of QB-Norm's query-bank normalisation. A logistic map, fitted per
(model, query modality, target modality) on labelled present/absent queries, turns those features
into a confidence in [0, 1] that means the same for every kind of query.

Pure numpy: no model, no index; the engine supplies the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("top", "top_z", "gap_z")  # raw top score, standardised top score, standardised margin over #2


@dataclass(frozen=True)
class Decision:
    match: bool
    confidence: float  # calibrated probability that the collection holds what was asked, 0..1
    threshold: float  # the confidence needed for "match"
    reason: str

    def to_dict(self) -> dict:
        return {"match": self.match, "confidence": round(self.confidence, 4), "threshold": self.threshold,
                "reason": self.reason}


def query_features(top_scores: np.ndarray, background_scores: np.ndarray) -> np.ndarray:
    """Features (3,) of one query from its best scores (descending, at least one) and its scores
    against a background sample of the collection (at least two)."""
    top_scores = np.asarray(top_scores, dtype=np.float64)
    background = np.asarray(background_scores, dtype=np.float64)
    mean, spread = background.mean(), max(background.std(), 1e-6)
    second = top_scores[1] if len(top_scores) > 1 else mean
    return np.array([top_scores[0], (top_scores[0] - mean) / spread, (top_scores[0] - second) / spread])


@dataclass(frozen=True)
class LogisticMap:
    """p = sigmoid(w . standardised(features) + b), with the standardisation fitted too."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def probability(self, features: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1 / (1 + np.exp(-(x @ np.asarray(self.weights) + self.bias)))

    def to_dict(self) -> dict:
        return {"weights": list(self.weights), "bias": self.bias, "mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, values: dict) -> LogisticMap:
        return cls(tuple(values["weights"]), float(values["bias"]), tuple(values["mean"]), tuple(values["scale"]))


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2, iterations: int = 50) -> LogisticMap:
    """Logistic regression by Newton's method (a handful of features: exact and fast), with a small
    L2 penalty so that perfectly separable data still gives finite, smooth confidences.

    Raises:
        ValueError: fewer than two examples of either class.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if min(y.sum(), (1 - y).sum()) < 2:
        raise ValueError("calibration needs at least two present and two absent queries")
    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])  # (n, f + 1)
    w = np.zeros(design.shape[1])
    penalty = np.diag([l2] * (design.shape[1] - 1) + [0.0])  # the bias is not shrunk
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(design @ w)))
        gradient = design.T @ (p - y) / len(y) + penalty @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(y) + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return LogisticMap(tuple(w[:-1]), float(w[-1]), tuple(mean), tuple(scale))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random present query outscores a random absent
    one (ties count half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positive, negative = scores[labels], scores[~labels]
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("AUROC needs both present and absent queries")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of "present" decided as score >= threshold."""
    predicted, labels = np.asarray(scores) >= threshold, np.asarray(labels, dtype=bool)
    true_positive = float((predicted & labels).sum())
    if true_positive == 0:
        return 0.0
    precision, recall = true_positive / predicted.sum(), true_positive / labels.sum()
    return float(2 * precision * recall / (precision + recall))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) with the best F1 over every observed score: the most any single cut can do."""
    candidates = np.unique(np.asarray(scores, dtype=np.float64))
    results = [(f1_at(scores, labels, t), t) for t in candidates]
    f1, threshold = max(results)
    return float(threshold), float(f1)
