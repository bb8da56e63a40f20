"""Classification metrics on numpy arrays: accuracy, top-k, F1, confusion matrix, GAP.

Written against plain arrays (not Keras metrics) so the same numbers come out
of evaluate, the comparison table and the tests, and GAP follows the Kaggle
landmark-recognition definition exactly.
"""

from __future__ import annotations

import numpy as np

NO_LANDMARK = -1  # ground-truth label of a query that shows no landmark


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the k highest probabilities."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def per_class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    true_positive = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0).astype(np.float64)
    support = counts.sum(axis=1).astype(np.float64)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(counts: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur in the ground truth."""
    scores = per_class_scores(counts)
    present = scores["support"] > 0
    return float(np.mean(scores["f1"][present])) if present.any() else float("nan")


def micro_f1(counts: np.ndarray) -> float:
    """Pooled F1; equals accuracy for single-label predictions over known classes."""
    total = counts.sum()
    return float(np.trace(counts) / total) if total else float("nan")


def global_average_precision(
    true_labels: np.ndarray, predicted_labels: np.ndarray, confidences: np.ndarray
) -> float:
    """GAP (micro-AP) of the Kaggle Google Landmark Recognition challenges.

    Each query has one predicted label and a confidence. Sorted by confidence
    (highest first), GAP = (1/M) * sum_i P(i) * rel(i), where P(i) is the
    precision over the first i predictions, rel(i) is 1 when prediction i is
    correct, and M is the number of queries that show a landmark (true label
    != NO_LANDMARK). A query without a prediction should be passed with
    confidence -inf (it then never counts as correct, nor lowers precision of
    the predictions ranked above it).
    """
    true_labels = np.asarray(true_labels)
    predicted_labels = np.asarray(predicted_labels)
    confidences = np.asarray(confidences, dtype=np.float64)
    m = int(np.sum(true_labels != NO_LANDMARK))
    if m == 0:
        return float("nan")
    order = np.argsort(-confidences, kind="stable")
    correct = (predicted_labels[order] == true_labels[order]) & (true_labels[order] != NO_LANDMARK)
    precision_at_i = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float(np.sum(precision_at_i * correct) / m)


def classification_report(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """All summary metrics of evaluate for known-class data."""
    labels = np.asarray(labels)
    num_classes = probabilities.shape[1]
    predictions = np.argmax(probabilities, axis=1)
    confidences = probabilities[np.arange(len(predictions)), predictions]
    counts = confusion_matrix(labels, predictions, num_classes)
    return {
        "num_images": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else float("nan"),
        "top5_accuracy": top_k_accuracy(labels, probabilities, 5),
        "macro_f1": macro_f1(counts),
        "micro_f1": micro_f1(counts),
        "gap": global_average_precision(labels, predictions, confidences),
        "confusion_matrix": counts,
        "per_class": per_class_scores(counts),
    }
