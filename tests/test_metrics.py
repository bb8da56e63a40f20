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


def test_calibration_error_on_a_hand_computed_example():
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1])
    result = metrics.calibration(confidence, correct, bins=10)
    # Bin (0.9, 1]: accuracy 0.5 at confidence 0.95; bin (0.5, 0.6]: accuracy 1 at 0.55.
    assert result["ece"] == pytest.approx((2 * 0.45 + 2 * 0.45) / 4)
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["low"], b["count"], b["accuracy"]) for b in filled] == [
        (pytest.approx(0.5), 2, 1.0),
        (pytest.approx(0.9), 2, 0.5),
    ]
    assert sum(b["count"] for b in result["bins"]) == 4


def test_a_calibrated_model_has_near_zero_ece():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.2, 1.0, 200_000)
    correct = rng.random(confidence.size) < confidence
    assert metrics.calibration(confidence, correct)["ece"] < 0.01
    assert metrics.calibration(confidence, np.ones_like(correct))["ece"] > 0.3


def test_confusion_order_puts_confused_classes_side_by_side():
    counts = np.diag([20, 20, 20, 20, 20, 20])
    counts[0, 4] = counts[4, 0] = 8  # 0 and 4 are confused, as are 2 and 5
    counts[2, 5] = 9
    counts[5, 2] = 3
    order = metrics.confusion_order(counts).tolist()
    assert sorted(order) == list(range(6))
    position = {c: i for i, c in enumerate(order)}
    assert abs(position[0] - position[4]) == 1
    assert abs(position[2] - position[5]) == 1
    assert order[-2:] == [1, 3]  # never confused: last, in their order


def test_confusion_order_recovers_a_shuffled_chain():
    # Confusions only between neighbours of the chain 0-1-2-...-7, with classes shuffled.
    chain = np.diag(np.full(8, 30))
    for i in range(7):
        chain[i, i + 1] = chain[i + 1, i] = 5
    permutation = np.random.default_rng(3).permutation(8)
    shuffled = chain[np.ix_(permutation, permutation)]
    order = metrics.confusion_order(shuffled)
    recovered = permutation[order].tolist()
    assert recovered in (list(range(8)), list(range(7, -1, -1)))


def test_coverage_curve_by_hand():
    confidence = np.array([0.9, 0.3, 0.8, 0.5])
    correct = np.array([1, 1, 0, 1])
    curve = metrics.coverage_curve(confidence, correct)
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["precision"], [1.0, 0.5, 2 / 3, 0.75])
    np.testing.assert_allclose(curve["threshold"], [0.9, 0.8, 0.5, 0.3])


def test_rejection_keeps_a_confidence_equal_to_the_threshold():
    probabilities = np.array([[0.6, 0.4], [0.5, 0.5], [0.3, 0.7], [0.45, 0.55]])
    predictions, confidences = metrics.apply_rejection(probabilities, 0.55)
    assert predictions.tolist() == [0, metrics.NO_LANDMARK, 1, 1]
    assert confidences[1] == -np.inf and confidences[3] == pytest.approx(0.55)
    np.testing.assert_array_equal(metrics.apply_rejection(probabilities, 0.0)[0], [0, 0, 1, 1])
    # A rejected landmark photo is not correct and not ranked; a rejected distractor costs nothing.
    true = np.array([0, 0, 1, metrics.NO_LANDMARK])
    gap = metrics.global_average_precision(true, predictions, confidences)
    assert gap == pytest.approx((1 + 1) / 3)
    no_rejection = metrics.global_average_precision(
        true, *metrics.apply_rejection(probabilities, 0)
    )
    # Ranked 0.7 (right), 0.6 (right), 0.55 (distractor, wrong), 0.5 (right): (1 + 1 + 3/4) / 3.
    assert no_rejection == pytest.approx((1 + 1 + 0.75) / 3)


def test_map_at_k_by_hand():
    # Query 0 (label 1, 3 relevant): hits at ranks 1, 3, 4 -> (1 + 2/3 + 3/4) / 3.
    # Query 1 (label 2, 5 relevant, 2 retrieved): hit at rank 2 -> (1/2) / 5.
    retrieved = np.array([[1, 0, 1, 1], [metrics.NO_LANDMARK, 2, 0, 0]])
    result = metrics.mean_average_precision_at_k(retrieved, np.array([1, 2]), np.array([3, 5]))
    assert result == pytest.approx(((1 + 2 / 3 + 3 / 4) / 3 + 0.5 / 5) / 2)


def test_map_at_k_follows_the_gldv2_edge_cases():
    retrieved = np.array([[1, 0, 1, 1], [2, 2, 2, 2], [0, 0, 0, 0], [1, 1, 1, 1]])
    query_labels = np.array([1, 2, 3, metrics.NO_LANDMARK])
    # Only k items count, and at most k relevant ones: min(m_q, k) is the denominator.
    ranked = metrics.mean_average_precision_at_k(retrieved[:1], query_labels[:1], [3], k=2)
    assert ranked == pytest.approx(1 / 2)
    assert metrics.mean_average_precision_at_k(retrieved[1:2], [2], [500], k=4) == 1.0
    # Queries without relevant gallery items (label 3, NO_LANDMARK) are left out of the mean.
    both = metrics.mean_average_precision_at_k(retrieved, query_labels, [3, 4, 0, 9])
    assert both == pytest.approx(((1 + 2 / 3 + 3 / 4) / 3 + 1.0) / 2)
    assert np.isnan(metrics.mean_average_precision_at_k(retrieved[2:], query_labels[2:], [0, 4]))


def test_map_at_k_equals_a_brute_force_loop():
    rng = np.random.default_rng(0)
    query_labels = rng.integers(-1, 4, 30)
    retrieved = rng.integers(-1, 4, (30, 12))
    counts = rng.integers(0, 15, 30)
    expected = []
    for labels, query, count in zip(retrieved, query_labels, counts, strict=True):
        if count == 0 or query == metrics.NO_LANDMARK:
            continue
        hits, total = 0, 0.0
        for rank, label in enumerate(labels[:10], start=1):
            if label == query:
                hits += 1
                total += hits / rank
        expected.append(total / min(count, 10))
    result = metrics.mean_average_precision_at_k(retrieved, query_labels, counts, k=10)
    assert result == pytest.approx(np.mean(expected))


def test_count_relevant_skips_distractors_and_no_landmark_queries():
    gallery = np.array([0, 0, 1, metrics.NO_LANDMARK, 2, 0])
    counts = metrics.count_relevant(np.array([0, 1, 3, metrics.NO_LANDMARK, 2]), gallery)
    assert counts.tolist() == [3, 1, 0, 0, 1]


def test_recall_at_k_by_hand():
    retrieved = np.array([[0, 1, 2], [2, 2, 1], [0, 0, 0], [1, 2, 0]])
    query_labels = np.array([0, 1, 1, metrics.NO_LANDMARK])
    assert metrics.recall_at_k(retrieved, query_labels, 1) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(retrieved, query_labels, 3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(retrieved[:, :2], query_labels, 5) == pytest.approx(1 / 3)
    assert np.isnan(metrics.recall_at_k(retrieved[3:], query_labels[3:], 1))


def test_gap_ranks_ties_wrong_first():
    """Two photos at the same confidence, one right and one wrong: the wrong one counts
    first, whatever their order in the input."""
    truth = np.array([0, 1])
    predicted = np.array([0, 0])
    for order in ([0, 1], [1, 0]):
        gap = metrics.global_average_precision(truth[order], predicted[order], np.ones(2))
        assert gap == pytest.approx(0.5 * 0.5)  # the right one at rank 2: P = 1/2, M = 2
    distinct = metrics.global_average_precision(truth, predicted, np.array([0.9, 0.8]))
    assert distinct == pytest.approx(0.5)
