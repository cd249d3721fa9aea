"""The match decision's arithmetic against naive references: features, logistic fit, AUROC, F1."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from retrieval.decision import auroc, best_threshold, f1_at, fit_logistic, query_features


def test_features_standardise_against_the_querys_own_background():
    background = np.array([0.1, 0.2, 0.3, 0.4])
    top, top_z, gap_z = query_features(np.array([0.9, 0.5]), background)
    assert top == 0.9
    assert top_z == pytest.approx((0.9 - 0.25) / background.std())
    assert gap_z == pytest.approx(0.4 / background.std())
    # The same shape on another cosine scale (an audio query, say) gives the same standardised features.
    scaled = query_features(np.array([0.9, 0.5]) * 0.5 + 0.2, background * 0.5 + 0.2)
    assert scaled[1:] == pytest.approx([top_z, gap_z])


def test_auroc_equals_the_pairwise_count():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)  # rounded: ties on purpose
    labels = rng.random(60) < 0.4
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    naive = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auroc(scores, labels) == pytest.approx(naive)
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0])) == 1.0


def test_best_threshold_is_the_best_of_all_cuts():
    rng = np.random.default_rng(1)
    scores, labels = rng.random(40), rng.random(40) < 0.5
    threshold, f1 = best_threshold(scores, labels)
    assert f1 == max(f1_at(scores, labels, t) for t in scores)
    assert f1_at(scores, labels, threshold) == f1


def test_logistic_fit_separates_and_gives_calibrated_probabilities():
    rng = np.random.default_rng(2)
    present = rng.normal([3.0, 1.0, 0.5], 1.0, size=(400, 3))
    absent = rng.normal([0.0, 1.0, 0.5], 1.0, size=(400, 3))
    features, labels = np.vstack([present, absent]), np.r_[np.ones(400), np.zeros(400)]
    fitted = fit_logistic(features, labels)
    p = fitted.probability(features)
    assert auroc(p, labels) > 0.95
    # Calibrated: among queries given about 0.8, about 80% are present.
    band = (p > 0.7) & (p < 0.9)
    assert band.sum() > 20 and abs(labels[band].mean() - 0.8) < 0.15
    assert abs(fitted.weights[0]) > 5 * max(abs(fitted.weights[1]), abs(fitted.weights[2]))  # the informative one
    assert fitted.from_dict(fitted.to_dict()) == fitted


def test_logistic_fit_stays_finite_on_separable_data_and_refuses_one_class():
    features = np.array([[0.0], [0.1], [0.9], [1.0]])
    fitted = fit_logistic(features, np.array([0, 0, 1, 1]))
    assert np.isfinite(fitted.weights).all()
    assert fitted.probability(np.array([[0.5]]))[0] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="two present and two absent"):
        fit_logistic(features, np.array([1, 1, 1, 0]))


def test_calibrating_the_starter_tells_present_from_absent(tmp_path):
    """On a small world split (2 of 8 concepts removed), words and sounds alike get confidences that
    rank present above absent, and the JSON round-trips."""
    from retrieval.calibration import Calibration, calibrate_model
    from retrieval.encoders.factory import STARTER_DIR, create_encoder
    from tests.helpers.pairs_data import write_pairs

    if not (STARTER_DIR / "xmodal_model.json").is_file():
        pytest.skip("the starter weights are not in this checkout")
    pairs = write_pairs(tmp_path / "pairs", {"test": 8}, seed=4)
    encoder = create_encoder("starter", device="cpu")
    calibration = calibrate_model(encoder, pairs, "test", removed_share=0.25, seed=0, workers=1)
    assert set(calibration.maps) == {f"{kind}→{target}" for kind in ("text", "audio", "image")
                                     for target in ("image", "audio")}
    for key, figures in calibration.figures.items():
        assert figures["queries"] == 2 * 8 + 6 * 4 and figures["present"] == 6 * 4, key
        assert figures["auroc"] >= 0.9, (key, figures)
    again = Calibration.from_json(calibration.to_json())
    assert again.maps == calibration.maps and again.fingerprint == encoder.identity.fingerprint
