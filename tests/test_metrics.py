"""Metrics against hand-computed values and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec import metrics


def test_gap_matches_a_hand_computed_example():
    # Sorted by confidence: correct, wrong, correct, correct -> P = 1, 1/2, 2/3, 3/4.
    true = np.array([0, 1, 2, 3])
    predicted = np.array([0, 0, 2, 3])
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    expected = (1.0 + 2 / 3 + 3 / 4) / 4
    assert metrics.global_average_precision(true, predicted, confidence) == pytest.approx(expected)


def test_gap_counts_only_landmark_queries_in_m():
    true = np.array([0, metrics.NO_LANDMARK, 1])
    predicted = np.array([0, 1, 1])
    confidence = np.array([0.9, 0.8, 0.1])
    # Order: correct (P=1), non-landmark wrong (P=1/2), correct (P=2/3); M = 2.
    assert metrics.global_average_precision(true, predicted, confidence) == pytest.approx(
        (1 + 2 / 3) / 2
    )


def _brute_force_gap(true, predicted, confidence):
    order = sorted(range(len(true)), key=lambda i: -confidence[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if predicted[i] == true[i] and true[i] != metrics.NO_LANDMARK:
            hits += 1
            total += hits / rank
    m = sum(t != metrics.NO_LANDMARK for t in true)
    return total / m


def test_gap_equals_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = rng.integers(5, 60)
        true = rng.integers(-1, 5, n)
        predicted = rng.integers(0, 5, n)
        confidence = rng.permutation(n) / n  # distinct, so the order is unambiguous
        assert metrics.global_average_precision(true, predicted, confidence) == pytest.approx(
            _brute_force_gap(true, predicted, confidence)
        )


def test_confusion_matrix_and_per_class_scores():
    true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    counts = metrics.confusion_matrix(true, predicted, 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    scores = metrics.per_class_scores(counts)
    np.testing.assert_allclose(scores["precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(scores["recall"], [2 / 3, 0.5, 1.0])
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    np.testing.assert_allclose(scores["f1"], f1)
    assert metrics.macro_f1(counts) == pytest.approx(np.mean(f1))
    assert metrics.micro_f1(counts) == pytest.approx(4 / 6)


def test_top_k_accuracy():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = np.array([1, 2, 2])
    assert metrics.top_k_accuracy(labels, probabilities, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(labels, probabilities, 2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(labels, probabilities, 5) == pytest.approx(1.0)


def test_report_on_perfect_predictions():
    labels = np.array([0, 1, 2, 1])
    report = metrics.classification_report(labels, np.eye(3)[labels] * 0.9 + 0.1 / 3)
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0 and report["gap"] == 1.0
